"""Seeds derived from names, stable across processes and machines (unlike ``hash``)."""

from __future__ import annotations

import hashlib


def stable_seed(*parts, bits: int = 63) -> int:
    """A seed of ``bits`` bits (63: fits numpy and torch generators; 64 for Python's ``random``) from the
    sha256 of the parts joined by ":"."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - bits)
