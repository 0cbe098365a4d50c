"""Checks shared by the stage tables."""

from __future__ import annotations

from t2ialign.core.config import ConfigError


def _check_precision(table: str, mixed_precision: str, auto: bool = False) -> None:
    allowed = ("auto", "no", "bf16", "fp16") if auto else ("no", "bf16", "fp16")
    if mixed_precision not in allowed:
        raise ConfigError(
            f"{table}.mixed_precision must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {mixed_precision!r}"
        )
