"""Config dataclasses from plain dicts (TOML / JSON) and back: the machinery, not the settings.

Every layer's settings are dataclasses; ``from_dict`` builds one from a table, refusing unknown keys and
values of the wrong type, and ``to_dict`` writes one as JSON-able data (what artifacts carry)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing


class ConfigError(ValueError):
    """A config file or value that does not fit its dataclass."""


def to_dict(cfg) -> dict:
    """Plain JSON-able dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls, data: dict, where: str = ""):
    """Build ``cls`` from a dict; unknown keys and values of the wrong type are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {where or cls.__name__}: {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def _coerce(tp, value, path: str):
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a table, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(item, v, path) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{path} must be {tp.__name__}, got {value!r}")
    return value


def at_least_one(cfg, table: str, *names: str) -> None:
    """ConfigError for the first of the fields ``names`` of ``cfg`` that is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{table}.{name} must be >= 1, got {getattr(cfg, name)}")
