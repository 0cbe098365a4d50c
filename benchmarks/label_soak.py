"""Soak test of the labeling app (issue 15): labelers at a steady rate, the server killed with -9 and
restarted, leases short enough to expire during the run. Not a test (it takes minutes); its figures go
in the closing note.

Run: ``python -m benchmarks.label_soak [--minutes 10] [--labelers 8] [--kills 3] [--db-url URL]``

At the end, with the server stopped, it checks that every label the server acknowledged (200) is in the
database with the value last acknowledged, that no image has more than k labels, that every refused
answer (409) wrote nothing, and ``PRAGMA integrity_check`` (SQLite) or amcheck on every index (PostgreSQL). Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import func, select

from t2ialign.label.auth import create_labeler
from t2ialign.store import LabelerRow, LabelRow, Store
from t2ialign.world.prompts import build_prompt_set

SECRET = "soak-Admin-secret-0123456789"


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, i // 256 % 256, 99)).save(buf, format="PNG")
    return buf.getvalue()


def make_run(
    run: Path, n_prompts: int, per_prompt: int, n_labelers: int, db_url: str | None
) -> dict[str, str]:
    """A run of n_prompts x per_prompt small images (role human) and labelers; their tokens by name."""
    prompts = build_prompt_set()[:n_prompts]
    with Store.open(run, db_url=db_url) as store:
        store.add_prompts(prompts)
        records = []
        for i, p in enumerate(prompts):
            for j in range(per_prompt):
                sha = store.put_image_bytes(_png(i * per_prompt + j))
                records.append(
                    dict(sha256=sha, prompt_text=p.text, model_id="soak", seed=j, sampler={}, role="human")
                    | dict(width=8, height=8)
                )
        store.add_images(records)
        return {f"soak-{i}": create_labeler(store, f"soak-{i}") for i in range(n_labelers)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``t2ialign label serve`` in a subprocess, on one port across restarts."""

    def __init__(self, run: Path, k: int, lease_seconds: float, db_url: str | None, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "t2ialign", "label", "serve", str(run), "--port", str(self.port)]
        self.cmd += ["--k", str(k), "--lease-seconds", str(lease_seconds), "--log-level", "warning"]
        self.cmd += ["--db-url", db_url] if db_url else []
        self.env = {**os.environ, "T2IALIGN_ADMIN_SECRET": SECRET, "OMP_NUM_THREADS": "1"}
        self.log = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start and wait until /healthz answers; the seconds that took."""
        t = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        while time.monotonic() - t < 120:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - t
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the server did not start in 120 s")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()


class Labeler(threading.Thread):
    """Asks for a screen, answers its images at ``rate`` answers per second; now and then walks away
    past the lease (a late answer, which must be refused or re-leased), now and then resends."""

    def __init__(
        self, name: str, token: str, url: str, rate: float, lease_seconds: float, stop_at: float, seed
    ):
        super().__init__(daemon=True)
        self.name_, self.url, self.rate, self.lease, self.stop_at = name, url, rate, lease_seconds, stop_at
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rng = random.Random(seed)
        self.acked: dict[int, str] = {}  # image id -> last acknowledged value
        self.refused: list[tuple[int, str]] = []  # (image id, value) answered 409
        self.counts = {"acked": 0, "refused": 0, "resends": 0, "transport_errors": 0, "other": 0}

    def _call(self, client: httpx.Client, method: str, path: str, **kw):
        try:
            return client.request(method, self.url + path, headers=self.headers, timeout=10, **kw)
        except httpx.TransportError:
            self.counts["transport_errors"] += 1  # the server is down (killed): try again shortly
            time.sleep(0.2)
            return None

    def run(self) -> None:
        with httpx.Client() as client:
            while time.monotonic() < self.stop_at:
                r = self._call(client, "GET", "/api/next")
                if r is None or r.status_code != 200:
                    continue
                images = r.json()["images"]
                if not images:
                    time.sleep(1)
                    continue
                if self.rng.random() < 0.05:  # walks away: the lease expires before the answer
                    time.sleep(self.lease + 0.5)
                for im in images:
                    time.sleep(1.0 / self.rate)
                    value = self.rng.choice(["good", "bad", "skip"])
                    r = self._call(client, "POST", "/api/labels", json={"image_id": im["id"], "value": value})
                    if r is None:
                        continue  # not acknowledged: it may or may not have been written
                    if r.status_code == 200:
                        self.acked[im["id"]] = value
                        self.counts["acked"] += 1
                        if self.rng.random() < 0.05:
                            again = self._call(
                                client, "POST", "/api/labels", json={"image_id": im["id"], "value": value}
                            )
                            self.counts["resends"] += 1
                            if again is not None and again.status_code != 200:
                                self.counts["other"] += 1
                    elif r.status_code == 409:
                        self.refused.append((im["id"], value))
                        self.counts["refused"] += 1
                    else:
                        self.counts["other"] += 1


def check(run: Path, db_url: str | None, labelers: list[Labeler], k: int) -> dict:
    """The end-of-soak checks, on the database with the server stopped."""
    with Store.open(run, db_url=db_url) as store:
        with store.session() as s:
            ids = dict(s.execute(select(LabelerRow.name, LabelerRow.id)).all())
            stored = {
                (lab, img): v
                for img, lab, v in s.execute(select(LabelRow.image_id, LabelRow.labeler_id, LabelRow.value))
            }
            per_image = s.execute(select(LabelRow.image_id, func.count()).group_by(LabelRow.image_id)).all()
        with store.engine.connect() as c:
            if store.engine.dialect.name == "sqlite":
                integrity = c.exec_driver_sql("PRAGMA integrity_check").scalar()
            else:  # PostgreSQL: amcheck verifies every B-tree index of the run's tables against its heap
                c.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS amcheck")
                c.exec_driver_sql(
                    "SELECT bt_index_check(i.indexrelid, true) FROM pg_index i "
                    "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                    "WHERE n.nspname = current_schema()"
                ).all()  # raises on corruption
                c.commit()
                integrity = "ok (amcheck bt_index_check, heapallindexed)"
    missing = [
        (lab.name_, img, v)
        for lab in labelers
        for img, v in lab.acked.items()
        if stored.get((ids[lab.name_], img)) != v
    ]
    # A refused answer wrote nothing: unless it was acknowledged at another time, there is no such label.
    refused_written = [
        (lab.name_, img)
        for lab in labelers
        for img, _ in lab.refused
        if img not in lab.acked and (ids[lab.name_], img) in stored
    ]
    most = max((n for _, n in per_image), default=0)
    return {
        "acknowledged_labels": sum(len(lab.acked) for lab in labelers),
        "stored_labels": len(stored),
        "acknowledged_missing": len(missing),
        "refused_but_written": len(refused_written),
        "max_labels_per_image": most,
        "images_above_k": sum(n > k for _, n in per_image),
        "integrity_check": integrity,
        "ok": not missing and not refused_written and most <= k and integrity.startswith("ok"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--labelers", type=int, default=8)
    ap.add_argument("--rate", type=float, default=2.0, help="answers per second per labeler")
    ap.add_argument("--kills", type=int, default=3, help="kill -9 and restart the server this many times")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--lease-seconds", type=float, default=4.0, help="short, so that leases expire")
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--per-prompt", type=int, default=3)
    ap.add_argument("--db-url", help="e.g. postgresql+psycopg://... (an empty database); default SQLite")
    ap.add_argument("--run", help="run directory (default: a new temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if (
        not 0 < args.minutes <= 120
        or not 1 <= args.labelers <= 64
        or not 0 < args.rate <= 50
        or args.kills < 0
    ):
        raise SystemExit("--minutes in (0, 120], --labelers in [1, 64], --rate in (0, 50], --kills >= 0")
    run = Path(args.run or tempfile.mkdtemp(prefix="label-soak-")) / "run"
    tokens = make_run(run, args.prompts, args.per_prompt, args.labelers, args.db_url)
    server = Server(run, args.k, args.lease_seconds, args.db_url, run.parent / "server.log")
    try:
        restarts = [server.start()]
        duration = args.minutes * 60
        start = time.monotonic()
        stop_at = start + duration
        labelers = [
            Labeler(name, tok, server.url, args.rate, args.lease_seconds, stop_at, f"{args.seed}:{name}")
            for name, tok in tokens.items()
        ]
        for lab in labelers:
            lab.start()
        for i in range(args.kills):
            time.sleep(max(0.0, start + duration * (i + 1) / (args.kills + 1) - time.monotonic()))
            server.kill9()
            restarts.append(server.start())
        for lab in labelers:
            lab.join(timeout=max(1.0, stop_at - time.monotonic() + 60))
    finally:
        server.stop()
    elapsed = time.monotonic() - start
    result = {
        "database": "postgresql" if args.db_url else "sqlite",
        "minutes": round(elapsed / 60, 2),
        "labelers": args.labelers,
        "k": args.k,
        "lease_seconds": args.lease_seconds,
        "kills": args.kills,
        "restart_seconds": [round(t, 2) for t in restarts[1:]],
        "answers_per_second": round(sum(lab.counts["acked"] for lab in labelers) / elapsed, 2),
        **{key: sum(lab.counts[key] for lab in labelers) for key in labelers[0].counts},
        **check(run, args.db_url, labelers, args.k),
        "run": str(run),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
