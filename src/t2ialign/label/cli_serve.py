"""``t2ialign label serve | add-labeler | revoke | rotate | exclude``: the labeling web app, its accounts.

``add_commands(label_subparsers)`` registers them on the ``label`` subparsers of the main CLI; each sets
``func`` to a function of ``args`` that returns 0 or raises ValueError for bad input.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from t2ialign.core.cliutil import subcommand
from t2ialign.store import open_existing

ADMIN_SECRET_ENV = "T2IALIGN_ADMIN_SECRET"
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,252}[a-z0-9])?|\[[0-9a-f:.]+\]")


def read_admin_secret(secret_file: str | None, environ=os.environ) -> str:
    """The admin secret from ``--admin-secret-file`` or else $T2IALIGN_ADMIN_SECRET; ValueError if neither
    gives one (there are no default credentials) or it is too short."""
    from t2ialign.label.auth import check_admin_secret

    if secret_file is not None:
        try:
            secret = Path(secret_file).read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read --admin-secret-file {secret_file}: {e.strerror}") from e
    else:
        secret = environ.get(ADMIN_SECRET_ENV, "")
    return check_admin_secret(secret)


def cmd_serve(args) -> int:
    import uvicorn

    from t2ialign.label.app import create_app
    from t2ialign.label.http import protocol

    secret = read_admin_secret(args.admin_secret_file)  # before anything else: no secret, no server
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    for name in ("head_timeout", "body_timeout", "keep_alive_timeout"):
        value = getattr(args, name)
        if not 0 < value <= 3600:
            raise ValueError(f"--{name.replace('_', '-')} must be in (0, 3600] seconds, got {value}")
    hosts = allowed_hosts(args.host, args.allowed_host)
    open_existing(args.run, args.db_url).close()
    app = create_app(
        args.run,
        secret,
        k=args.k,
        lease_seconds=args.lease_seconds,
        db_url=args.db_url,
        allowed_hosts=hosts,
        body_timeout_seconds=args.body_timeout,
        gold_rate=args.gold_rate,
    )
    print(
        f"labeling {args.run} at http://{args.host}:{args.port}/ (k={args.k}); admin page: /admin; "
        f"answers to Host {', '.join(hosts)}",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=protocol(args.head_timeout),
        timeout_keep_alive=args.keep_alive_timeout,
        # X-Forwarded-For / -Proto are believed only from the proxies named; by default from nobody, so a
        # client cannot choose the address that the access log and the sign-in rate limit see.
        proxy_headers=args.forwarded_allow_ips is not None,
        forwarded_allow_ips=args.forwarded_allow_ips or "",
        server_header=False,
    )
    return 0


def allowed_hosts(bind_host: str, extra: list[str] | None) -> tuple[str, ...]:
    """The Host names the server answers to: those given with --allowed-host, else the address it listens
    on and, for a loopback or wildcard address, localhost's names. ValueError for a malformed name."""
    hosts = list(extra or [])
    if not hosts:
        hosts = [bind_host]
        if bind_host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):
            hosts += ["127.0.0.1", "localhost", "[::1]"]
    out = []
    for h in hosts:
        h = h.strip().lower()
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"  # an IPv6 address, as it appears in a Host header
        if not _HOST.fullmatch(h):
            raise ValueError(f"--allowed-host {h!r} is not a host name or IP address (no port, no scheme)")
        if h not in out and h not in ("0.0.0.0", "[::]"):
            out.append(h)
    return tuple(out)


def _change_token(args, revoke: bool) -> int:
    from t2ialign.label.auth import revoke_labeler, rotate_token

    with open_existing(args.run, args.db_url) as store:
        if revoke:
            revoke_labeler(store, args.name)
            print(f"labeler {args.name} revoked: their token and open sessions no longer work (labels kept)")
        else:
            token = rotate_token(store, args.name)
            print(
                f"labeler {args.name} has a new token (shown only now; the old one and their sessions ended):"
            )
            print(token)
    return 0


def cmd_exclude(args) -> int:
    with open_existing(args.run, args.db_url) as store:
        store.set_excluded(args.name, not args.include)
    what = "included in" if args.include else "excluded from"
    print(f"labeler {args.name} {what} the training labels (their labels stay in the run)")
    return 0


def cmd_revoke(args) -> int:
    return _change_token(args, revoke=True)


def cmd_rotate(args) -> int:
    return _change_token(args, revoke=False)


def cmd_add_labeler(args) -> int:
    from t2ialign.label.auth import create_labeler

    with open_existing(args.run, args.db_url) as store:
        token = create_labeler(store, args.name)
    print(f"labeler {args.name} created; their token (shown only now, stored hashed):")
    print(token)
    return 0


def add_commands(label_subparsers) -> None:
    """Register serve, revoke, rotate, exclude and add-labeler on the ``t2ialign label`` subparsers."""
    _add_serve(label_subparsers)
    _add_account_commands(label_subparsers)


def _add_serve(label_subparsers) -> None:
    from t2ialign.label.app import DEFAULT_LEASE_SECONDS

    sp = subcommand(
        label_subparsers,
        "serve",
        cmd_serve,
        "run the labeling web app over a run",
        description=f"Run the labeling web app. The admin secret comes from ${ADMIN_SECRET_ENV} or "
        "--admin-secret-file; the server refuses to start without one.",
    )
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--k", type=int, default=3, help="labels wanted per image, from distinct labelers")
    sp.add_argument(
        "--lease-seconds",
        type=float,
        default=DEFAULT_LEASE_SECONDS,
        help="how long a screen's images stay reserved for the labeler who got them",
    )
    sp.add_argument("--admin-secret-file", help=f"file holding the admin secret (else ${ADMIN_SECRET_ENV})")
    sp.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sp.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name the server answers to (repeat for several; default: the --host address, and "
        "localhost's names for a loopback one). Behind a proxy: the public name, e.g. labels.example.org",
    )
    sp.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are "
        "believed (default: none)",
    )
    sp.add_argument(
        "--gold-rate",
        type=float,
        default=0.0,
        help="share of screens that are gold images (t2ialign label gold), 0-1; they measure raters' "
        "accuracy and are never feedback",
    )
    _add_timeouts(sp)


def _add_timeouts(sp) -> None:
    """How long the server waits for a slow or idle client (cmd_serve checks each is in (0, 3600])."""
    from t2ialign.label.app import DEFAULT_BODY_TIMEOUT_SECONDS
    from t2ialign.label.http import DEFAULT_HEAD_TIMEOUT_SECONDS

    sp.add_argument(
        "--head-timeout",
        type=float,
        default=DEFAULT_HEAD_TIMEOUT_SECONDS,
        help="seconds a connection has to send a complete request head, else it is closed",
    )
    sp.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT_SECONDS,
        help="seconds a request body has to arrive, else 408",
    )
    sp.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        help="seconds an idle keep-alive connection stays open",
    )


def _add_account_commands(sub) -> None:
    """Labeler accounts: revoke, rotate, exclude, add-labeler."""
    for name, func, text in (
        ("revoke", cmd_revoke, "revoke a labeler's access at once (token and sessions); labels are kept"),
        ("rotate", cmd_rotate, "give a labeler a new token (printed once); the old one and sessions end"),
    ):
        sp = subcommand(sub, name, func, text)
        sp.add_argument("name", metavar="NAME", help="labeler name")

    help = "exclude a labeler's labels from training (a careless rater); rows are kept"
    sp = subcommand(sub, "exclude", cmd_exclude, help)
    sp.add_argument("name", metavar="NAME", help="labeler name")
    sp.add_argument("--include", action="store_true", help="include them again")

    sp = subcommand(sub, "add-labeler", cmd_add_labeler, "create a labeler account and print its token once")
    sp.add_argument("name", metavar="NAME", help="labeler name: letters, digits, . _ @ -")
