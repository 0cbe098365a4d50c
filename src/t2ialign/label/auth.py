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
from datetime import datetime, timedelta

from t2ialign.store import Store

ADMIN_NAME = "admin"
TOKEN_BYTES = 32
MIN_ADMIN_SECRET_CHARS = 16
MIN_ADMIN_SECRET_KINDS = 3  # of lower case, upper case, digits, symbols
MIN_ADMIN_SECRET_DISTINCT = 10
# A long secret may use fewer kinds: token_urlsafe(32) (43 characters) has no digit and no symbol about once
# in 7,700 draws, and must still pass. At this length two kinds with 20 distinct characters carry > 110 bits.
LONG_ADMIN_SECRET_CHARS = 32
LONG_ADMIN_SECRET_KINDS = 2
LONG_ADMIN_SECRET_DISTINCT = 20
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


def _is_text(s: str) -> bool:
    """False for a string that UTF-8 cannot encode (a lone surrogate, which JSON's \\ud800 can make)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    # Length alone lets "aaaaaaaaaaaaaaaa" and "password12345678" through: a person's choice must also
    # mix kinds of characters and not repeat a few; a long one may mix fewer kinds of more distinct characters.
    kinds = sum(
        any(test(c) for c in secret)
        for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    )
    distinct = len(set(secret))
    strong = kinds >= MIN_ADMIN_SECRET_KINDS and distinct >= MIN_ADMIN_SECRET_DISTINCT
    strong_long = (
        len(secret) >= LONG_ADMIN_SECRET_CHARS
        and kinds >= LONG_ADMIN_SECRET_KINDS
        and distinct >= LONG_ADMIN_SECRET_DISTINCT
    )
    if not (strong or strong_long):
        raise ValueError(
            f"the admin secret is too weak: use at least {MIN_ADMIN_SECRET_KINDS} of lower case, upper case, "
            f"digits and symbols, and at least {MIN_ADMIN_SECRET_DISTINCT} distinct characters "
            '(make one with: python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    if not _is_text(secret):
        raise ValueError("the admin secret must be plain text (it holds an unpaired surrogate)")
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
    if not token or len(token) > MAX_TOKEN_CHARS or not _is_text(token):
        return None
    digest = hash_token(token)
    row = store.labeler_by_token_hash(digest)
    # The database compared the hashes already; compare_digest makes the final check constant-time anyway.
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return Account(id=row["id"], name=row["name"], is_admin=row["is_admin"])


# --- sessions: what the cookie holds, instead of the token ---------------------------------------------------


def new_session(store: Store, account: Account, lifetime_seconds: float, now: datetime) -> str:
    """Start a server-side session for ``account``; returns its random id (for the cookie), stores a hash."""
    session_id = new_token()
    store.add_session(account.id, hash_token(session_id), now + timedelta(seconds=lifetime_seconds))
    return session_id


def session_account(store: Store, session_id: str | None, now: datetime) -> Account | None:
    """The account of an active session, or None (unknown, expired, signed out or revoked)."""
    if not session_id or len(session_id) > MAX_TOKEN_CHARS or not _is_text(session_id):
        return None
    row = store.labeler_by_session(hash_token(session_id), now)
    return None if row is None else Account(id=row["id"], name=row["name"], is_admin=row["is_admin"])


def end_session(store: Store, session_id: str | None) -> None:
    if session_id and len(session_id) <= MAX_TOKEN_CHARS and _is_text(session_id):
        store.delete_session(hash_token(session_id))


def revoke_labeler(store: Store, name: str) -> None:
    """Revoke a labeler's access at once: no token signs in as them, their open sessions end, their leases
    are dropped (the images go back to the pool). Their labels stay; ``rotate_token`` gives access back."""
    store.set_labeler_token(name, None)


def rotate_token(store: Store, name: str) -> str:
    """A new token for labeler ``name`` (the old one and every session end); returned once, stored hashed."""
    token = new_token()
    store.set_labeler_token(name, hash_token(token))
    return token
