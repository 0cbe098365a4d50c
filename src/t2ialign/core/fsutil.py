"""Durable file writes shared by the store and the checkpoints: a reader sees the old file or the whole
new one, never a part, and a rename survives a power cut once it returns."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def publish_dir(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``final`` by renames: the old folder goes only once the
    new one is whole, so a crash leaves the old one, the new one, or both (``final.old``)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def loads_json_object(text: str, where: str, error: type[Exception] = ValueError) -> dict:
    """``json.loads`` of a text that must hold one JSON object; ``error`` names ``where`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise error(f"{where} must hold a JSON object, got {type(value).__name__}")
    return value
