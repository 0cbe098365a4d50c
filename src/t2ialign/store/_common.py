"""What every part of the store shares: file names, errors, input checks, times and batches."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from t2ialign.world.prompts import CATEGORIES, SPLITS

DB_FILENAME = "t2ialign.db"
IMAGES_DIRNAME = "images"
METRICS_FILENAME = "metrics.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_INT64 = (-(2**63), 2**63 - 1)


class StoreError(RuntimeError):
    """The run directory or its database cannot be opened or read."""


class VoteConflict(ValueError):
    """A side-by-side vote that the run's state refuses, not its form: the rater already voted otherwise
    on the query, or the query has all the votes it wants (the web app answers 409)."""


class NotLeased(VoteConflict):
    """An answer to work that was not handed to this labeler (no active lease, and no earlier answer of
    theirs to change), or to an item that has all the answers it wants; the web app answers 409."""


# --- files ------------------------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError for anything that is not a PNG."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file: the store keeps PNG images only")
    return struct.unpack(">II", data[16:24])


def _check_str(name: str, value, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_int(name: str, value, lo: int, hi: int, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_one_of(name: str, value, allowed: tuple[str, ...], nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(allowed)}")


def _prompt_fields(p) -> dict[str, Any]:
    """The row of one prompt (a ``t2ialign.world.prompts.Prompt`` or alike), validated."""
    spec = p.spec
    row = {
        "text": p.text,
        "category": p.category,
        "split": p.split,
        "shape": spec.shape,
        "count": spec.count,
        "color": spec.color,
        "background": spec.background,
    }
    _check_str("prompt text", row["text"])
    _check_one_of(f"category of prompt {p.text!r}:", row["category"], CATEGORIES, nullable=True)
    _check_one_of(f"split of prompt {p.text!r}:", row["split"], SPLITS)
    _check_str(f"shape of prompt {p.text!r}", row["shape"])
    _check_int(f"count of prompt {p.text!r}", row["count"], 0, _INT64[1], nullable=True)
    _check_str(f"color of prompt {p.text!r}", row["color"], nullable=True)
    _check_str(f"background of prompt {p.text!r}", row["background"], nullable=True)
    return row


def _as_utc(t: datetime) -> datetime:
    """A datetime read from the database as an aware UTC datetime (SQLite hands back naive UTC ones)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _check_utc(name: str, t) -> datetime:
    # SQLite compares stored times as text, without their zone: every time written must be in UTC.
    if not isinstance(t, datetime) or t.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {t!r}")
    return t.astimezone(UTC)


def _insert(s: Session):
    """The dialect's INSERT of this session's database, the one with ON CONFLICT DO UPDATE (an upsert)."""
    return {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[s.get_bind().dialect.name]


def _check_known(s: Session, row: type, ids, what: str) -> None:
    """ValueError naming the smallest of these ids that no ``row`` has (a labeler, an image, ...)."""
    for chunk in _chunks(sorted(ids), 500):
        found = set(s.scalars(select(row.id).where(row.id.in_(chunk))))
        unknown = sorted(set(chunk) - found)
        if unknown:
            raise ValueError(f"unknown {what} id {unknown[0]}")


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
