"""The labeling web app (``t2ialign label serve RUN``): FastAPI over the run's store.

Pages: ``/`` (sign in, then three images of one prompt with good / bad / skip) and ``/admin``. API, all
JSON, authenticated by ``Authorization: Bearer TOKEN`` or the cookie that ``/api/login`` sets:

    POST /api/login {token}            sets the session cookie      POST /api/logout
    GET  /api/me                       who am I                     GET  /api/next    lease the next screen
    GET  /api/labels                   my labels                    POST /api/labels  {image_id, value}
    DELETE /api/labels/{image_id}      remove my label              POST /api/undo    remove my last answer
    GET  /images/{sha256}.png          an image of the run
    GET  /api/admin/stats              label_summary (admin)        GET  /api/admin/export.jsonl (admin)
    POST /api/admin/labelers {name}    new account, its token once (admin)

Side-by-side evaluation (paper Fig. 3; ``sidebyside``): the page ``/compare`` shows one query (a prompt,
two anonymous sets A and B) and asks for A / B / tie on alignment and on fidelity; ``/admin/compare``
shows the tallies.

    GET  /api/compare/next             lease my next query          GET  /api/admin/compare  tallies (admin)
    POST /api/compare/votes {query_id, alignment, fidelity}    my vote on a query; final, a resend is a no-op

Every label goes through ``service.submit_label``, the code path of the simulated labelers too, and is
committed before the answer is sent. Input is validated before anything is written; errors are 4xx with a
``detail`` message.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations, and those name
dependencies local to ``create_app``.)
"""

import contextlib
import json
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..store import Store, VoteConflict
from . import assignment, auth, pages, sidebyside
from .service import submit_label

COOKIE = "t2ialign_token"
MAX_BODY_BYTES = 16 * 1024  # labels and logins are tiny; anything bigger is refused unread (413)
DEFAULT_LEASE_SECONDS = 15 * 60
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


class VoteIn(_Body):
    query_id: int = Field(ge=1, le=_INT64_MAX)
    alignment: Literal["A", "B", "tie"]
    fidelity: Literal["A", "B", "tie"]


# --- the body size limit -----------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: reads the whole request body first and answers 413 if it exceeds ``max_bytes``,
    whether the size is declared (Content-Length) or not (chunked), before the app sees any of it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
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


# --- the app ----------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _error_message(errors: list[dict[str, Any]]) -> str:
    """One readable line from pydantic's errors, e.g. "value: Input should be 'good', 'bad' or 'skip'"."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def create_app(
    run_dir: str | Path,
    admin_secret: str,
    k: int = 3,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    db_url: str | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> FastAPI:
    """The labeling app over the run in ``run_dir`` (database at ``db_url`` if given).

    ``k``: labels wanted per image, from distinct labelers. ``lease_seconds``: how long a screen's images
    stay reserved for the labeler who got them. ``clock``: the current UTC time (tests move it). Creates
    or updates the admin account so that ``admin_secret`` is its token; refuses an empty or short secret.
    """
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise ValueError(f"k must be an integer in [1, 1000], got {k!r}")
    if not isinstance(lease_seconds, int | float) or not 1 <= lease_seconds <= 7 * 24 * 3600:
        raise ValueError(f"lease_seconds must be in [1, 604800], got {lease_seconds!r}")
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
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return JSONResponse(
            {"detail": _error_message(errors), "errors": json.loads(json.dumps(errors, default=str))},
            status_code=422,
        )

    # --- who is asking ---------------------------------------------------------------------------------

    def _token(request: Request) -> str | None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        return request.cookies.get(COOKIE)

    def account_or_none(request: Request) -> auth.Account | None:
        return auth.authenticate(store, _token(request))

    def account(request: Request) -> auth.Account:
        acc = account_or_none(request)
        if acc is None:
            detail = "sign in first: send Authorization: Bearer TOKEN (or sign in on the page)"
            if _token(request):
                detail = "invalid token"
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
        return acc

    def admin(acc: Annotated[auth.Account, Depends(account)]) -> auth.Account:
        if not acc.is_admin:
            raise HTTPException(403, "only the admin may do this")
        return acc

    Me = Annotated[auth.Account, Depends(account)]
    Admin = Annotated[auth.Account, Depends(admin)]

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

    # --- pages -----------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        acc = account_or_none(request)
        if acc is None:
            return _html(pages.login_page)
        screen = assignment.next_screen(store, acc.id, k, lease_seconds, now=clock())
        progress = store.labeling_progress(acc.id, k)
        return _html(lambda nonce: pages.labeling_page(acc, screen, progress, k, nonce))

    @app.get("/admin", response_class=HTMLResponse)
    def admin_view(request: Request):
        acc = account_or_none(request)
        if acc is None:
            return _html(pages.login_page, status_code=401)
        if not acc.is_admin:
            raise HTTPException(403, "only the admin may see this page")
        summary = _summary()
        return _html(lambda nonce: pages.admin_page(acc, summary, k, nonce))

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)  # no icon; but no 404 in the browser's console either

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    # --- sign in ---------------------------------------------------------------------------------------

    @app.post("/api/login")
    def login(body: LoginIn, response: Response):
        acc = auth.authenticate(store, body.token)
        if acc is None:
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        # HttpOnly: page scripts cannot read it; SameSite=Strict: other sites cannot send requests with it.
        response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", path="/")
        return {"name": acc.name, "is_admin": acc.is_admin}

    @app.post("/api/logout")
    def logout(response: Response):
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return {"ok": True}

    @app.get("/api/me")
    def me(acc: Me):
        return {"name": acc.name, "is_admin": acc.is_admin}

    # --- labeling --------------------------------------------------------------------------------------

    @app.get("/api/next")
    def next_(acc: Me):
        screen = assignment.next_screen(store, acc.id, k, lease_seconds, now=clock())
        return {**screen, "progress": store.labeling_progress(acc.id, k)}

    @app.get("/api/labels")
    def my_labels(acc: Me):
        return [
            {**r, "created_at": r["created_at"].isoformat(), "updated_at": r["updated_at"].isoformat()}
            for r in store.labels_of(acc.id)
        ]

    @app.post("/api/labels")
    def post_label(body: LabelIn, acc: Me):
        found = store.images_by_id([body.image_id])
        if not found or found[0]["role"] != "human":
            raise HTTPException(404, f"unknown image id {body.image_id} (no image to label has this id)")
        submit_label(store, acc.id, body.image_id, body.value)  # committed when it returns
        return {"image_id": body.image_id, "value": body.value}

    @app.delete("/api/labels/{image_id}")
    def delete_label(image_id: int, acc: Me):
        if not 1 <= image_id <= _INT64_MAX or not store.delete_label(image_id, acc.id):
            raise HTTPException(404, f"you have no label on image {image_id}")
        return {"deleted": image_id}

    @app.post("/api/undo")
    def undo(acc: Me):
        last = store.last_label(acc.id)
        if last is None or not store.delete_label(last["image_id"], acc.id):
            raise HTTPException(404, "nothing to undo: you have no labels")
        return {"undone": last}

    @app.get("/images/{filename}")
    def image(filename: str, acc: Me):
        sha = filename.removesuffix(".png")
        try:
            path = store.image_path(sha)  # only 64 lowercase hex digits: nothing outside images/
        except ValueError:
            raise HTTPException(404, "no such image: image URLs are /images/<sha256>.png") from None
        if not filename.endswith(".png") or not path.is_file():
            raise HTTPException(404, "no such image: image URLs are /images/<sha256>.png")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    # --- admin -----------------------------------------------------------------------------------------

    def _summary() -> dict[str, Any]:
        from .stats import label_summary  # imported when first asked for, not at every server start

        return label_summary(store)

    @app.get("/api/admin/stats")
    def stats(acc: Admin):
        return _summary()

    @app.post("/api/admin/labelers", status_code=201)
    def add_labeler(body: LabelerIn, acc: Admin):
        try:
            token = auth.create_labeler(store, body.name)
        except ValueError as e:
            code = 409 if "already exists" in str(e) else 422
            raise HTTPException(code, str(e)) from None
        return {"name": body.name, "token": token}

    @app.get("/api/admin/export.jsonl")
    def export(acc: Admin):
        def lines() -> Iterator[bytes]:
            after = 0
            while page := store.label_records(after_id=after, limit=1000):
                for r in page:
                    r = {
                        **r,
                        "created_at": r["created_at"].isoformat(),
                        "updated_at": r["updated_at"].isoformat(),
                    }
                    yield (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")
                after = page[-1]["id"]

        headers = {"Content-Disposition": 'attachment; filename="labels.jsonl"'}
        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)

    # --- side-by-side evaluation (paper Fig. 3) --------------------------------------------------------

    @app.get("/compare", response_class=HTMLResponse)
    def compare_view(request: Request):
        acc = account_or_none(request)
        if acc is None:
            return _html(pages.login_page)
        query = sidebyside.next_query(store, acc.id, lease_seconds, now=clock())
        progress = store.comparison_progress(acc.id)
        return _html(lambda nonce: pages.compare_page(acc, query, progress, nonce))

    @app.get("/admin/compare", response_class=HTMLResponse)
    def compare_admin_view(request: Request):
        acc = account_or_none(request)
        if acc is None:
            return _html(pages.login_page, status_code=401)
        if not acc.is_admin:
            raise HTTPException(403, "only the admin may see this page")
        tallies = _tallies()
        return _html(lambda nonce: pages.compare_admin_page(acc, tallies, nonce))

    @app.get("/api/compare/next")
    def compare_next(acc: Me):
        query = sidebyside.next_query(store, acc.id, lease_seconds, now=clock())
        return {"query": query, "progress": store.comparison_progress(acc.id)}

    @app.post("/api/compare/votes")
    def post_vote(body: VoteIn, acc: Me):
        if not store.comparison_queries(query_ids=[body.query_id]):
            raise HTTPException(404, f"unknown query id {body.query_id}")
        try:  # committed when it returns
            status = sidebyside.submit_vote(store, acc.id, body.query_id, body.alignment, body.fidelity)
        except VoteConflict as e:
            raise HTTPException(409, str(e)) from None
        return {
            "query_id": body.query_id,
            "alignment": body.alignment,
            "fidelity": body.fidelity,
            "status": status,
        }

    def _tallies() -> list[dict[str, Any]]:
        return [sidebyside.tally(store, c["name"]) for c in store.list_comparisons()]

    @app.get("/api/admin/compare")
    def compare_tallies(acc: Admin):
        return {"comparisons": _tallies()}

    return app
