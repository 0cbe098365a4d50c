"""Fingerprints: which exact file or model made something, so that caches and artifacts of two models
never mix. One place for the hashing every stage relies on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def module_fingerprint(module, sample_bytes: int | None = 4096, with_config: bool = True) -> str:
    """16 hex digits identifying a torch module: its config (a transformers / diffusers ``config``, when it
    has one and ``with_config``) and its weights, every tensor by name and its first ``sample_bytes``
    bytes as float32 (None: all of them, for a small model whose every weight must count)."""
    h = hashlib.sha256()
    if with_config:
        config = getattr(module, "config", {})
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        data = t.detach().float().contiguous().numpy().tobytes()
        h.update(data if sample_bytes is None else data[:sample_bytes])
    return h.hexdigest()[:16]


def folder_fingerprint(folder: Path, suffixes: tuple[str, ...] = (".json", ".safetensors", ".bin")) -> str:
    """16 hex digits of the names and bytes of a folder's files with these suffixes, in name order."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*")):
        if f.suffix in suffixes:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]
