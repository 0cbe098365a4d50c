"""The labeling app as a real server: uvicorn in a subprocess on 127.0.0.1, clients over HTTP.

Concurrent labelers lose nothing and get no 5xx on SQLite and on PostgreSQL (``T2IALIGN_TEST_POSTGRES_URL``,
which ``.ci/run`` sets; on CI its absence is a failure, not a skip), a resend makes no second label, and a
label answered with 200 survives killing the server right after.
"""

import io
import os
import signal
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image

from labeling_server import server
from t2ialign.store import LabelerRow, LabelRow, Store
from t2ialign.world.prompts import build_prompt_set

ADMIN_SECRET = "admin-secret-for-server-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}
N_CLIENTS, N_SUBMISSIONS, K = 8, 200, 3
VALUES = ("good", "bad", "skip")


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, i // 256 % 256, 11)).save(buf, format="PNG")
    return buf.getvalue()


def make_run(run_dir, n_prompts: int, per_prompt: int, db_url: str | None = None) -> None:
    prompts = build_prompt_set()[:n_prompts]
    with Store.open(run_dir, db_url=db_url) as store:
        store.add_prompts(prompts)
        records = [
            dict(sha256=store.put_image_bytes(png_bytes(i * per_prompt + j)), prompt_text=p.text, seed=j)
            | dict(model_id="test", sampler={}, role="human", width=8, height=8)
            for i, p in enumerate(prompts)
            for j in range(per_prompt)
        ]
        store.add_images(records)


def add_labelers(url: str, n: int) -> list[dict]:
    headers = []
    for i in range(n):
        r = httpx.post(f"{url}/api/admin/labelers", json={"name": f"labeler{i}"}, headers=ADMIN, timeout=30)
        assert r.status_code == 201, r.text
        headers.append({"Authorization": f"Bearer {r.json()['token']}"})
    return headers


def label_concurrently(url: str, headers: list[dict], n_submissions: int, time_limit: float) -> dict:
    """Each client asks for screens and answers every image, each answer sent twice (a resend), until it
    has made ``n_submissions``. Returns what was sent and every response that was not a 200."""
    sent: dict[int, dict[int, str]] = {i: {} for i in range(len(headers))}
    problems: list[str] = []
    deadline = time.monotonic() + time_limit

    def work(i: int) -> None:
        try:
            with httpx.Client(base_url=url, headers=headers[i], timeout=60) as client:
                while len(sent[i]) < n_submissions and time.monotonic() < deadline:
                    r = client.get("/api/next")
                    if r.status_code != 200:
                        problems.append(f"next: {r.status_code} {r.text[:200]}")
                        return
                    images = r.json()["images"]
                    if not images:
                        problems.append(f"client {i}: no images left after {len(sent[i])}")
                        return
                    for im in images:
                        if len(sent[i]) == n_submissions:
                            break
                        value = VALUES[(im["id"] + i) % 3]
                        for _ in range(2):  # the second is a resend of the same answer
                            r = client.post("/api/labels", json={"image_id": im["id"], "value": value})
                            if r.status_code != 200:
                                problems.append(f"label: {r.status_code} {r.text[:200]}")
                                return
                        sent[i][im["id"]] = value
        except Exception as e:  # reported below, with the others
            problems.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(headers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=time_limit + 60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return {"sent": sent, "problems": problems}


def check_nothing_lost(run_dir, db_url, result, log_path) -> None:
    assert result["problems"] == []
    log = log_path.read_text(errors="replace")
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    with Store.open(run_dir, db_url=db_url) as store, store.session() as s:
        rows = s.execute(
            sa.select(LabelerRow.name, LabelRow.image_id, LabelRow.value).join(
                LabelerRow, LabelRow.labeler_id == LabelerRow.id
            )
        ).all()
    stored = {(name, image): value for name, image, value in rows}
    expected = {
        (f"labeler{i}", image): v for i, answers in result["sent"].items() for image, v in answers.items()
    }
    assert len(rows) == len(stored) == N_CLIENTS * N_SUBMISSIONS  # one label per (image, labeler)
    assert stored == expected
    per_image = Counter(image for _, image, _ in rows)
    assert max(per_image.values()) <= K  # the assignment never sent more than k labelers to an image


@pytest.mark.slow
def test_concurrent_labelers_on_sqlite_lose_nothing(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "server.log"
    make_run(run_dir, n_prompts=120, per_prompt=6)  # 720 images x k=3 places > 8 x 200 submissions
    with server(run_dir, log, ADMIN_SECRET, k=K) as (url, _):
        headers = add_labelers(url, N_CLIENTS)
        result = label_concurrently(url, headers, N_SUBMISSIONS, time_limit=400)
    check_nothing_lost(run_dir, None, result, log)


def test_an_acknowledged_label_survives_killing_the_server(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "server.log"
    make_run(run_dir, n_prompts=2, per_prompt=3)
    with server(run_dir, log, ADMIN_SECRET, k=K) as (url, proc):
        (ann,) = add_labelers(url, 1)
        with httpx.Client(base_url=url, headers=ann, timeout=30) as client:
            images = client.get("/api/next").json()["images"]
            for im, value in zip(images, VALUES, strict=True):
                assert (
                    client.post("/api/labels", json={"image_id": im["id"], "value": value}).status_code == 200
                )
        os.kill(proc.pid, signal.SIGKILL)  # right after the last 200: no shutdown, no flush
        assert proc.wait(timeout=20) == -signal.SIGKILL
    with Store.open(run_dir) as store, store.session() as s:
        got = s.execute(sa.select(LabelRow.image_id, LabelRow.value).order_by(LabelRow.image_id)).all()
    assert [tuple(r) for r in got] == [(im["id"], v) for im, v in zip(images, VALUES, strict=True)]


# --- PostgreSQL ----------------------------------------------------------------------------------------------


@pytest.fixture
def postgres_url():
    """A fresh database on the server of $T2IALIGN_TEST_POSTGRES_URL, dropped afterwards."""
    base = os.environ.get("T2IALIGN_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "CI=true but T2IALIGN_TEST_POSTGRES_URL is not set: .ci/run starts PostgreSQL and sets it"
            )
        pytest.skip("set T2IALIGN_TEST_POSTGRES_URL (postgresql+psycopg://...) to run the PostgreSQL tests")
    url = sa.make_url(base)
    name = f"t2ialign_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.mark.slow
def test_concurrent_labelers_on_postgresql_lose_nothing(tmp_path, postgres_url):
    run_dir, log = tmp_path / "run", tmp_path / "server.log"
    make_run(run_dir, n_prompts=120, per_prompt=6, db_url=postgres_url)
    with server(run_dir, log, ADMIN_SECRET, db_url=postgres_url, k=K) as (url, _):
        headers = add_labelers(url, N_CLIENTS)
        result = label_concurrently(url, headers, N_SUBMISSIONS, time_limit=400)
    check_nothing_lost(run_dir, postgres_url, result, log)
