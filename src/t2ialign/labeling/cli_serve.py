"""``t2ialign label serve | add-labeler``: run the labeling web app, create labeler accounts.

``add_commands(label_subparsers)`` registers both on the ``label`` subparsers of the main CLI; each sets
``func`` to a function of ``args`` that returns 0 or raises ValueError for bad input.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..store import open_existing

ADMIN_SECRET_ENV = "T2IALIGN_ADMIN_SECRET"


def read_admin_secret(secret_file: str | None, environ=os.environ) -> str:
    """The admin secret from ``--admin-secret-file`` or else $T2IALIGN_ADMIN_SECRET; ValueError if neither
    gives one (there are no default credentials) or it is too short."""
    from .auth import check_admin_secret

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

    from .app import create_app

    secret = read_admin_secret(args.admin_secret_file)  # before anything else: no secret, no server
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    open_existing(args.run, args.db_url).close()
    app = create_app(args.run, secret, k=args.k, lease_seconds=args.lease_seconds, db_url=args.db_url)
    print(
        f"labeling {args.run} at http://{args.host}:{args.port}/ (k={args.k}); admin page: /admin", flush=True
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_add_labeler(args) -> int:
    from .auth import create_labeler

    with open_existing(args.run, args.db_url) as store:
        token = create_labeler(store, args.name)
    print(f"labeler {args.name} created; their token (shown only now, stored hashed):\n{token}")
    return 0


def add_commands(label_subparsers) -> None:
    """Register serve and add-labeler on the ``t2ialign label`` subparsers."""
    from .app import DEFAULT_LEASE_SECONDS

    sp = label_subparsers.add_parser(
        "serve",
        help="run the labeling web app over a run",
        description=f"Run the labeling web app. The admin secret comes from ${ADMIN_SECRET_ENV} or "
        "--admin-secret-file; the server refuses to start without one.",
    )
    sp.add_argument("run", metavar="RUN", help="run directory")
    sp.add_argument("--db-url", help="SQLAlchemy URL of the run database (default: SQLite file in the run)")
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
    sp.set_defaults(func=cmd_serve)

    sp = label_subparsers.add_parser("add-labeler", help="create a labeler account and print its token once")
    sp.add_argument("run", metavar="RUN", help="run directory")
    sp.add_argument("name", metavar="NAME", help="labeler name: letters, digits, . _ @ -")
    sp.add_argument("--db-url", help="SQLAlchemy URL of the run database (default: SQLite file in the run)")
    sp.set_defaults(func=cmd_add_labeler)
