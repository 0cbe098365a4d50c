"""The labeling web app (``t2ialign label serve RUN``): FastAPI over the run's store.

Pages: ``/`` (sign in, then three images of one prompt with good / bad / skip) and ``/admin``. API, all
JSON, authenticated by ``Authorization: Bearer TOKEN`` or the cookie that ``/api/login`` sets:

    POST /api/login {token}            sets the session cookie      POST /api/logout
    GET  /api/me                       who am I                     GET  /api/next    lease the next screen
    GET  /api/labels                   my labels                    POST /api/labels  {image_id, value}
    DELETE /api/labels/{image_id}      remove my label              POST /api/undo    remove my last answer
    GET  /images/{sha256}.png          an image of the run
    GET  /api/admin/stats              label_summary, raters (admin)        GET  /api/admin/export.jsonl (admin)
    POST /api/admin/labelers {name}    new account, its token once (admin)

Side-by-side evaluation (paper Fig. 3; ``sidebyside``): the page ``/compare`` shows one query (a prompt,
two anonymous sets A and B) and asks for A / B / tie on alignment and on fidelity; ``/admin/compare``
shows the tallies.

    GET  /api/compare/next             lease my next query          GET  /api/admin/compare  tallies (admin)
    POST /api/compare/votes {query_id, alignment, fidelity}    my vote on a query; final, a resend is a no-op

Pairwise feedback (issue 17; ``pairs``): the page ``/pairs`` shows two images of one prompt, A and B, and
asks A / B / tie (keys a / b / t), with the labels' leases and k.

    GET  /api/pairs/next               lease my next pair           POST /api/pairs/answers {pair_id, answer}

Every label goes through ``service`` (``submit_leased_label``: only work leased to the labeler, or a change
of their own answer, and never beyond k; the simulated labelers use the same store upsert), and is
committed before the answer is sent. Security (the threat model is ``tests/test_labeling_security.py``):
server-side sessions, a sign-in rate limit, a Host allow-list, cross-site checks and headers (``Guard``). Input is validated before anything is written; errors are 4xx with a
``detail`` message.

``create_app`` checks its settings, builds a :class:`_Server` (the store, the settings, who is asking)
and adds the route groups, one function each: pages, sign-in, labeling, admin, side-by-side.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations, and those name
dependencies built per app, ``Me`` and ``Admin`` of each route group.)
"""

import asyncio
import contextlib
import json
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from t2ialign.label import assignment, auth, pages, pages_pairs, pairs, sidebyside
from t2ialign.label.service import submit_leased_label
from t2ialign.store import NotLeased, Store, VoteConflict

COOKIE = "t2ialign_session"  # a server-side session id (see auth.new_session), never the token itself
MAX_BODY_BYTES = 16 * 1024  # labels and logins are tiny; anything bigger is refused unread (413)
DEFAULT_LEASE_SECONDS = 15 * 60
DEFAULT_SESSION_SECONDS = 12 * 3600  # a working day; then sign in again
# Failed sign-ins (wrong token at /api/login or in a Bearer header) allowed per client address and window;
# beyond, 429 with Retry-After. Tokens are 256 random bits, but the admin secret is chosen by a person.
DEFAULT_LOGIN_ATTEMPTS = 10
DEFAULT_LOGIN_WINDOW_SECONDS = 60.0
# How long a request's body may take to arrive once its head has (a half-sent body holds a worker).
DEFAULT_BODY_TIMEOUT_SECONDS = 10.0
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_INT64_MAX = 2**63 - 1


# --- request bodies: unknown fields and wrong types are errors (422), never coerced -----------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LabelIn(_Body):
    image_id: int = Field(ge=1, le=_INT64_MAX)
    value: Literal["good", "bad", "skip"]


class LoginIn(_Body):
    token: str = Field(min_length=1, max_length=auth.MAX_TOKEN_CHARS)


class LabelerIn(_Body):
    name: str = Field(min_length=1, max_length=64)


class PairAnswerIn(_Body):
    pair_id: int = Field(ge=1, le=_INT64_MAX)
    answer: Literal["A", "B", "tie"]  # as shown: A is the image on the left


class VoteIn(_Body):
    query_id: int = Field(ge=1, le=_INT64_MAX)
    alignment: Literal["A", "B", "tie"]
    fidelity: Literal["A", "B", "tie"]


# --- the body size limit -----------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: reads the whole request body first and answers 413 if it exceeds ``max_bytes``,
    whether the size is declared (Content-Length) or not (chunked), before the app sees any of it."""

    def __init__(self, app, max_bytes: int, timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS):
        self.app, self.max_bytes, self.timeout_seconds = app, max_bytes, timeout_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            try:  # a client that sends its body slowly, or never finishes it, is answered 408
                message = await asyncio.wait_for(receive(), self.timeout_seconds)
            except TimeoutError:
                detail = f"the request body did not arrive within {self.timeout_seconds:g} s"
                headers = {"Connection": "close"}
                return await JSONResponse({"detail": detail}, 408, headers=headers)(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as a server would

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        detail = f"request body larger than {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


# --- headers, Host and cross-site checks ------------------------------------------------------------------


class Guard:
    """ASGI middleware, outermost: the checks every request passes and the headers every answer carries.

    - ``allowed_hosts`` (if given): a request whose Host is not listed is refused (400). Without it a page
      on an attacker's domain that resolves to this server (DNS rebinding) would be same-origin with it.
    - A state-changing request (POST, PUT, PATCH, DELETE) sent by a browser from another site is refused
      (403): ``Sec-Fetch-Site`` must be same-origin or none, and ``Origin``, when sent, must be this
      server's. SameSite=Strict cookies already keep other sites' requests anonymous; this also covers
      body-less POSTs such as /api/undo from a same-site but other-origin page. Clients that send neither
      header (curl, scripts with a Bearer token) are not browsers and pass.
    - Every answer gets ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
      ``X-Frame-Options: DENY`` and, unless it set its own (images), ``Cache-Control: no-store``: labels
      and tokens must not stay in a shared cache or a browser's history.
    """

    def __init__(self, app, allowed_hosts: tuple[str, ...] | None = None):
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        host = headers.get(b"host", b"").decode("latin-1").lower()
        refusal = None
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            refusal = (400, "unknown Host: this server answers only to the names it is configured with")
        elif scope["method"] in _STATE_CHANGING:
            site = headers.get(b"sec-fetch-site")
            origin = headers.get(b"origin")
            if site is not None and site not in (b"same-origin", b"none"):
                refusal = (403, "cross-site request refused")
            elif origin is not None and origin.decode("latin-1").lower().partition("://")[2] != host:
                refusal = (403, "cross-origin request refused: Origin is not this server")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ]
                message = {
                    **message,
                    "headers": list(message.get("headers", []))
                    + [(k, v) for k, v in extra if k not in names],
                }
            await send(message)

        if refusal is not None:
            response = JSONResponse({"detail": refusal[1]}, status_code=refusal[0])
            return await response(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: "example.org:8000" -> "example.org", "[::1]:80" -> "[::1]"."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class LoginLimiter:
    """Failed sign-ins per client address in a sliding window; ``retry_after`` says when one may try again.

    Memory is bounded: at most ``max_clients`` addresses are tracked; beyond, the stalest are forgotten
    (an attacker with that many addresses is not slowed by a per-address limit anyway).
    """

    def __init__(self, attempts: int, window_seconds: float, max_clients: int = 10_000):
        self.attempts, self.window, self.max_clients = attempts, window_seconds, max_clients
        self.failures: dict[str, list[float]] = {}

    def _recent(self, client: str, now: float) -> list[float]:
        times = [t for t in self.failures.get(client, ()) if t > now - self.window]
        if times:
            self.failures[client] = times
        else:
            self.failures.pop(client, None)
        return times

    def retry_after(self, client: str, now: float) -> int | None:
        """Seconds to wait if ``client`` used up its failed attempts, else None."""
        times = self._recent(client, now)
        if len(times) < self.attempts:
            return None
        return max(1, math.ceil(times[-self.attempts] + self.window - now))

    def failed(self, client: str, now: float) -> None:
        if client not in self.failures and len(self.failures) >= self.max_clients:
            stalest = sorted(self.failures, key=lambda c: self.failures[c][-1])[: self.max_clients // 10 + 1]
            for c in stalest:
                del self.failures[c]
        self.failures.setdefault(client, []).append(now)


# --- the app ----------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _printable(x: Any) -> str | int:
    """A part of an error location that any JSON encoder takes: a field name may hold a lone surrogate."""
    return x if isinstance(x, int) else str(x).encode("utf-8", "backslashreplace").decode("utf-8")


def _error_message(errors: list[dict[str, Any]]) -> str:
    """One readable line from pydantic's errors, e.g. "value: Input should be 'good', 'bad' or 'skip'"."""
    parts = []
    for err in errors:
        loc = ".".join(str(_printable(p)) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Location, message and type only: echoing the input back would reflect what the client sent, and
    # NaN, infinity or a lone surrogate in it made the encoder fail (500).
    errors = [
        {
            "loc": [_printable(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg")),
            "type": str(e.get("type")),
        }
        for e in exc.errors()
    ]
    return JSONResponse({"detail": _error_message(errors), "errors": errors}, status_code=422)


def _html(render: Callable[[str], str], status_code: int = 200) -> HTMLResponse:
    # A fresh nonce per page: only the page's own inline script may run (defence in depth for escaping).
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    headers = {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(render(nonce), status_code=status_code, headers=headers)


def _isoformat(row: dict[str, Any]) -> dict[str, Any]:
    """A label row for JSON: its times in ISO 8601."""
    return {**row, "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat()}


# The settings of create_app that must lie in a range: (lowest, highest).
_RANGES = {
    "session_seconds": (60, 30 * 24 * 3600),
    "login_attempts": (1, 10_000),
    "login_window_seconds": (1, 24 * 3600),
    "body_timeout_seconds": (0.01, 3600),
    "gold_rate": (0, 1),
}


def _check_settings(k: Any, lease_seconds: Any, allowed_hosts: Any, **ranged: Any) -> None:
    """Refuse settings out of range (ValueError), before anything is opened."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise ValueError(f"k must be an integer in [1, 1000], got {k!r}")
    if not isinstance(lease_seconds, int | float) or not 1 <= lease_seconds <= 7 * 24 * 3600:
        raise ValueError(f"lease_seconds must be in [1, 604800], got {lease_seconds!r}")
    for name, value in ranged.items():
        lo, hi = _RANGES[name]
        if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    if allowed_hosts is not None and (
        isinstance(allowed_hosts, str)
        or not allowed_hosts
        or not all(isinstance(h, str) and h for h in allowed_hosts)
    ):
        raise ValueError(f"allowed_hosts must be a non-empty list of host names, got {allowed_hosts!r}")


@dataclass
class _Server:
    """What every route of one app shares: the store, the settings and who is asking."""

    store: Store
    k: int
    lease_seconds: float
    clock: Callable[[], datetime]
    session_seconds: float
    gold_rate: float
    limiter: LoginLimiter

    def client(self, request: Request) -> str:
        # The peer's address; behind a proxy named in --forwarded-allow-ips, uvicorn puts the client's here.
        return request.client.host if request.client else "unknown"

    def check_not_limited(self, request: Request) -> None:
        wait = self.limiter.retry_after(self.client(request), self.clock().timestamp())
        if wait is not None:
            raise HTTPException(
                429, f"too many failed sign-ins: try again in {wait} s", headers={"Retry-After": str(wait)}
            )

    def failed_sign_in(self, request: Request) -> None:
        self.limiter.failed(self.client(request), self.clock().timestamp())

    @staticmethod
    def bearer(request: Request) -> str | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def account_or_none(self, request: Request) -> auth.Account | None:
        token = self.bearer(request)
        if token is None:  # a browser: the session cookie
            return auth.session_account(self.store, request.cookies.get(COOKIE), self.clock())
        self.check_not_limited(request)
        acc = auth.authenticate(self.store, token)
        if acc is None:
            self.failed_sign_in(request)
        return acc

    def account(self, request: Request) -> auth.Account:
        acc = self.account_or_none(request)
        if acc is None:
            detail = "sign in first: send Authorization: Bearer TOKEN (or sign in on the page)"
            if self.bearer(request) is not None:
                detail = "invalid token"
            elif request.cookies.get(COOKIE):
                detail = "your session ended (signed out, expired or revoked): sign in again"
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
        return acc

    def admin(self, request: Request) -> auth.Account:
        acc = self.account(request)
        if not acc.is_admin:
            raise HTTPException(403, "only the admin may do this")
        return acc

    def page(self, request: Request, render: Callable[[auth.Account, str], str], admin: bool = False):
        """A page for the signed-in (``admin``: the admin; others 403), the sign-in page for anyone else
        (401 on an admin page)."""
        acc = self.account_or_none(request)
        if acc is None:
            return _html(pages.login_page, status_code=401 if admin else 200)
        if admin and not acc.is_admin:
            raise HTTPException(403, "only the admin may see this page")
        return _html(lambda nonce: render(acc, nonce))

    def summary(self) -> dict[str, Any]:
        from t2ialign.label.stats import (  # imported when first asked, not at server start
            label_summary,
            rater_quality,
        )

        return {**label_summary(self.store), "raters": rater_quality(self.store)}

    def tallies(self) -> list[dict[str, Any]]:
        return [sidebyside.tally(self.store, c["name"]) for c in self.store.list_comparisons()]


def create_app(
    run_dir: str | Path,
    admin_secret: str,
    k: int = 3,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    db_url: str | None = None,
    clock: Callable[[], datetime] = _utcnow,
    allowed_hosts: tuple[str, ...] | None = None,
    session_seconds: float = DEFAULT_SESSION_SECONDS,
    login_attempts: int = DEFAULT_LOGIN_ATTEMPTS,
    login_window_seconds: float = DEFAULT_LOGIN_WINDOW_SECONDS,
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
    gold_rate: float = 0.0,
) -> FastAPI:
    """The labeling app over the run in ``run_dir`` (database at ``db_url`` if given).

    ``k``: labels wanted per image, from distinct labelers. ``lease_seconds``: how long a screen's images
    stay reserved for the labeler who got them. ``clock``: the current UTC time (tests move it). Creates
    or updates the admin account so that ``admin_secret`` is its token; refuses an empty or weak secret.

    ``allowed_hosts``: the Host names the server answers to (None: any; ``t2ialign label serve`` always
    gives a list). ``session_seconds``: how long a sign-in lasts. ``login_attempts`` failed sign-ins per
    client address in ``login_window_seconds``, then 429. ``body_timeout_seconds``: a request body that has
    not arrived in this time is answered 408. ``gold_rate``: the share of screens that are gold images
    (known answers; ``t2ialign label gold``), which measure each rater's accuracy and are never feedback.
    """
    _check_settings(
        k,
        lease_seconds,
        allowed_hosts,
        session_seconds=session_seconds,
        login_attempts=login_attempts,
        login_window_seconds=login_window_seconds,
        body_timeout_seconds=body_timeout_seconds,
        gold_rate=gold_rate,
    )
    admin_secret = auth.check_admin_secret(admin_secret)
    store = Store.open(run_dir, db_url=db_url)
    auth.ensure_admin(store, admin_secret)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close()

    app = FastAPI(
        title="t2ialign labeling", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.store = store
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, timeout_seconds=body_timeout_seconds)
    app.add_middleware(Guard, allowed_hosts=None if allowed_hosts is None else tuple(allowed_hosts))
    app.add_exception_handler(RequestValidationError, _invalid)
    limiter = LoginLimiter(login_attempts, login_window_seconds)
    server = _Server(store, k, lease_seconds, clock, session_seconds, gold_rate, limiter)
    for routes in (
        _page_routes,
        _session_routes,
        _label_routes,
        _admin_routes,
        _compare_routes,
        _pair_routes,
    ):
        routes(app, server)
    return app


# --- the route groups ------------------------------------------------------------------------------------


def _page_routes(app: FastAPI, s: _Server) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        def render(acc: auth.Account, nonce: str) -> str:
            screen = assignment.next_screen(
                s.store, acc.id, s.k, s.lease_seconds, now=s.clock(), gold_rate=s.gold_rate
            )
            progress = s.store.labeling_progress(acc.id, s.k)
            return pages.labeling_page(acc, screen, progress, s.k, nonce)

        return s.page(request, render)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_view(request: Request):
        return s.page(request, lambda acc, nonce: pages.admin_page(acc, s.summary(), s.k, nonce), admin=True)

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)  # no icon; but no 404 in the browser's console either

    @app.get("/healthz")
    def healthz():
        return {"ok": True}


def _session_routes(app: FastAPI, s: _Server) -> None:
    Me = Annotated[auth.Account, Depends(s.account)]

    @app.post("/api/login")
    def login(body: LoginIn, request: Request, response: Response):
        s.check_not_limited(request)
        acc = auth.authenticate(s.store, body.token)
        if acc is None:
            s.failed_sign_in(request)
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        session_id = auth.new_session(s.store, acc, s.session_seconds, s.clock())
        # HttpOnly: page scripts cannot read it; SameSite=Strict: other sites cannot send requests with it.
        # Secure when the request came over TLS (behind a proxy: when it forwards X-Forwarded-Proto).
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(s.session_seconds),
            httponly=True,
            samesite="strict",
            path="/",
            secure=request.url.scheme == "https",
        )
        return {"name": acc.name, "is_admin": acc.is_admin}

    @app.post("/api/logout")
    def logout(request: Request, response: Response):
        auth.end_session(s.store, request.cookies.get(COOKIE))  # on the server: a copied cookie is dead too
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return {"ok": True}

    @app.get("/api/me")
    def me(acc: Me):
        return {"name": acc.name, "is_admin": acc.is_admin}


def _label_routes(app: FastAPI, s: _Server) -> None:
    Me = Annotated[auth.Account, Depends(s.account)]

    @app.get("/api/next")
    def next_(acc: Me):
        screen = assignment.next_screen(
            s.store, acc.id, s.k, s.lease_seconds, now=s.clock(), gold_rate=s.gold_rate
        )
        return {**screen, "progress": s.store.labeling_progress(acc.id, s.k)}

    @app.get("/api/labels")
    def my_labels(acc: Me):
        return [_isoformat(r) for r in s.store.labels_of(acc.id)]

    @app.post("/api/labels")
    def post_label(body: LabelIn, acc: Me):
        found = s.store.images_by_id([body.image_id])
        if not found or (found[0]["role"] != "human" and not s.store.gold_answers([body.image_id])):
            raise HTTPException(404, f"unknown image id {body.image_id} (no image to label has this id)")
        try:  # committed when it returns
            submit_leased_label(s.store, acc.id, body.image_id, body.value, k=s.k, now=s.clock())
        except NotLeased as e:
            raise HTTPException(409, str(e)) from None
        return {"image_id": body.image_id, "value": body.value}

    @app.delete("/api/labels/{image_id}")
    def delete_label(image_id: int, acc: Me):
        if not 1 <= image_id <= _INT64_MAX or not s.store.delete_label(image_id, acc.id):
            raise HTTPException(404, f"you have no label on image {image_id}")
        return {"deleted": image_id}

    @app.post("/api/undo")
    def undo(acc: Me):
        last = s.store.last_label(acc.id)
        if last is None or not s.store.delete_label(last["image_id"], acc.id):
            raise HTTPException(404, "nothing to undo: you have no labels")
        return {"undone": last}

    @app.get("/images/{filename}")
    def image(filename: str, acc: Me):
        sha = filename.removesuffix(".png")
        try:
            path = s.store.image_path(sha)  # only 64 lowercase hex digits: nothing outside images/
        except ValueError:
            raise HTTPException(404, "no such image: image URLs are /images/<sha256>.png") from None
        if not filename.endswith(".png") or not path.is_file():
            raise HTTPException(404, "no such image: image URLs are /images/<sha256>.png")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


def _admin_routes(app: FastAPI, s: _Server) -> None:
    Admin = Annotated[auth.Account, Depends(s.admin)]

    @app.get("/api/admin/stats")
    def stats(acc: Admin):
        return s.summary()

    @app.post("/api/admin/labelers", status_code=201)
    def add_labeler(body: LabelerIn, acc: Admin):
        try:
            token = auth.create_labeler(s.store, body.name)
        except ValueError as e:
            code = 409 if "already exists" in str(e) else 422
            raise HTTPException(code, str(e)) from None
        return {"name": body.name, "token": token}

    @app.get("/api/admin/export.jsonl")
    def export(acc: Admin):
        def lines() -> Iterator[bytes]:
            after = 0
            while page := s.store.label_records(after_id=after, limit=1000):
                for r in page:
                    yield (json.dumps(_isoformat(r), ensure_ascii=False) + "\n").encode("utf-8")
                after = page[-1]["id"]

        headers = {"Content-Disposition": 'attachment; filename="labels.jsonl"'}
        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)


def _compare_routes(app: FastAPI, s: _Server) -> None:
    """Side-by-side evaluation (paper Fig. 3)."""
    Me = Annotated[auth.Account, Depends(s.account)]
    Admin = Annotated[auth.Account, Depends(s.admin)]

    @app.get("/compare", response_class=HTMLResponse)
    def compare_view(request: Request):
        def render(acc: auth.Account, nonce: str) -> str:
            query = sidebyside.next_query(s.store, acc.id, s.lease_seconds, now=s.clock())
            return pages.compare_page(acc, query, s.store.comparison_progress(acc.id), nonce)

        return s.page(request, render)

    @app.get("/admin/compare", response_class=HTMLResponse)
    def compare_admin_view(request: Request):
        return s.page(
            request, lambda acc, nonce: pages.compare_admin_page(acc, s.tallies(), nonce), admin=True
        )

    @app.get("/api/compare/next")
    def compare_next(acc: Me):
        query = sidebyside.next_query(s.store, acc.id, s.lease_seconds, now=s.clock())
        return {"query": query, "progress": s.store.comparison_progress(acc.id)}

    @app.post("/api/compare/votes")
    def post_vote(body: VoteIn, acc: Me):
        if not s.store.comparison_queries(query_ids=[body.query_id]):
            raise HTTPException(404, f"unknown query id {body.query_id}")
        try:  # committed when it returns
            status = sidebyside.submit_vote(
                s.store, acc.id, body.query_id, body.alignment, body.fidelity, leased_at=s.clock()
            )
        except VoteConflict as e:
            raise HTTPException(409, str(e)) from None
        return {
            "query_id": body.query_id,
            "alignment": body.alignment,
            "fidelity": body.fidelity,
            "status": status,
        }

    @app.get("/api/admin/compare")
    def compare_tallies(acc: Admin):
        return {"comparisons": s.tallies()}


def _pair_routes(app: FastAPI, s: _Server) -> None:
    """Pairwise feedback (issue 17): two images of one prompt, A / B / tie, k answers per pair."""
    Me = Annotated[auth.Account, Depends(s.account)]

    @app.get("/pairs", response_class=HTMLResponse)
    def pairs_view(request: Request):
        def render(acc: auth.Account, nonce: str) -> str:
            pair = pairs.next_pair(s.store, acc.id, s.k, s.lease_seconds, now=s.clock())
            return pages_pairs.pairs_page(acc, pair, s.store.pairs_progress(acc.id, s.k), s.k, nonce)

        return s.page(request, render)

    @app.get("/api/pairs/next")
    def pairs_next(acc: Me):
        pair = pairs.next_pair(s.store, acc.id, s.k, s.lease_seconds, now=s.clock())
        return {"pair": pair, "progress": s.store.pairs_progress(acc.id, s.k)}

    @app.post("/api/pairs/answers")
    def post_pair_answer(body: PairAnswerIn, acc: Me):
        if not s.store.preference_pairs(pair_ids=[body.pair_id]):
            raise HTTPException(404, f"unknown pair id {body.pair_id}")
        try:  # committed when it returns
            status = pairs.submit_pair_answer(s.store, acc.id, body.pair_id, body.answer, s.k, s.clock())
        except NotLeased as e:
            raise HTTPException(409, str(e)) from None
        return {"pair_id": body.pair_id, "answer": body.answer, "status": status}
