"""Accounts of the labeling app: labelers and one admin, each with a secret token.

Tokens are ``secrets.token_urlsafe(32)`` (256 random bits), so a plain sha256 is enough to store them: no
salt or slow hash is needed against guessing, and the hash can be looked up directly. The admin's token is
the admin secret given to ``t2ialign label serve``; it must be long, since a person may choose it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from ..store import Store

ADMIN_NAME = "admin"
TOKEN_BYTES = 32
MIN_ADMIN_SECRET_CHARS = 16
MAX_TOKEN_CHARS = 256  # anything longer is not one of ours; refuse it before hashing
# Names appear in exports and on the admin page: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


@dataclass(frozen=True)
class Account:
    """The labeler behind a request."""

    id: int
    name: str
    is_admin: bool


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_labeler_name(name: str) -> str:
    """``name`` if it is a valid labeler name, else ValueError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid labeler name {name!r}: 1 to 64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    if name == ADMIN_NAME:
        raise ValueError(f"the name {ADMIN_NAME!r} is reserved for the admin")
    return name


def check_admin_secret(secret: str | None) -> str:
    """The admin secret, stripped of surrounding whitespace; ValueError if missing or too short."""
    secret = (secret or "").strip()
    if not secret:
        raise ValueError(
            "no admin secret: set T2IALIGN_ADMIN_SECRET or pass --admin-secret-file FILE; the server has no "
            'default credentials (make one with: python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    if len(secret) < MIN_ADMIN_SECRET_CHARS:
        raise ValueError(f"the admin secret must have at least {MIN_ADMIN_SECRET_CHARS} characters")
    return secret


def create_labeler(store: Store, name: str) -> str:
    """Create a labeler account and return its token; only its hash is stored, so show it once."""
    token = new_token()
    store.add_labeler(check_labeler_name(name), token_hash=hash_token(token))
    return token


def ensure_admin(store: Store, admin_secret: str) -> int:
    """Create or update the admin account so that ``admin_secret`` is its token; its labeler id."""
    return store.set_admin(ADMIN_NAME, hash_token(check_admin_secret(admin_secret)))


def authenticate(store: Store, token: str | None) -> Account | None:
    """The account whose token this is, or None."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = hash_token(token)
    row = store.labeler_by_token_hash(digest)
    # The database compared the hashes already; compare_digest makes the final check constant-time anyway.
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return Account(id=row["id"], name=row["name"], is_admin=row["is_admin"])
