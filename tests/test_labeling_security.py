"""The labeling app's threat model, as tests: what an attacker on the network, a labeler who cheats and a
careless operator can try, and what the app does about it.

The app sits on the internet behind a TLS reverse proxy (README, "Deploying the labeling app"). Attackers:

- **a stranger** with no token: guesses tokens and the admin secret, rebinds DNS, makes a labeler's
  browser send requests (CSRF), holds connections open, sends malformed or hostile input;
- **a labeler** with a valid token: labels what they were not handed (to choose prompts and categories,
  or to push an image past k labels), answers after their lease expired, reads or undoes others' work;
- **a former labeler** whose access was revoked, with a copy of their cookie;
- **a bad import file**: labels of images the run cannot show, labeler names that spoof the admin page.

Each test is bounded in time and count, and talks only to 127.0.0.1 (most run in-process through
TestClient). Tests named after a numbered finding of issue 15 failed before its fix.
"""

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from labeling_server import free_port
from t2ialign.cli import main
from t2ialign.label import auth
from t2ialign.label.app import COOKIE, LoginLimiter, create_app
from t2ialign.label.cli_serve import allowed_hosts
from t2ialign.label.export import export_labels, import_labels
from t2ialign.label.sidebyside import create_comparison
from t2ialign.store import LabelRow, LeaseRow, NotLeased, SessionRow, Store
from test_labeling_app import ADMIN, ADMIN_SECRET, Clock, image_ids, lease, make_run, new_labeler


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run"
    make_run(path, n_prompts=3)
    return path


@pytest.fixture
def app(run, clock):
    app = create_app(run, ADMIN_SECRET, k=2, lease_seconds=60, clock=clock)
    yield app
    app.state.store.close()


@pytest.fixture
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def n_labels(app, image_id=None) -> int:
    q = sa.select(sa.func.count()).select_from(LabelRow)
    if image_id is not None:
        q = q.where(LabelRow.image_id == image_id)
    with app.state.store.session() as s:
        return s.scalar(q)


# --- authorization: a labeler answers only what they were handed (finding 1) --------------------------------


def test_1_labels_need_a_lease_and_never_exceed_k(client, app, clock):
    labelers = [new_labeler(client, f"l{i}") for i in range(12)]
    never_leased = image_ids(app)[-1]
    codes = [
        client.post("/api/labels", json={"image_id": never_leased, "value": "bad"}, headers=h).status_code
        for h in labelers
    ]
    assert codes == [409] * 12 and n_labels(app) == 0
    # an image leased to ann is not bob's to label
    ann, bob, cat = labelers[:3]
    img = lease(client, ann)[0]
    r = client.post("/api/labels", json={"image_id": img, "value": "good"}, headers=cat)
    assert r.status_code == 409 and "not leased to you" in r.json()["detail"]
    # a late answer after the lease expired is refused; a change of one's own answer never is
    clock.now += timedelta(seconds=61)
    assert client.post("/api/labels", json={"image_id": img, "value": "good"}, headers=ann).status_code == 409
    mine = lease(client, ann)[0]
    assert (
        client.post("/api/labels", json={"image_id": mine, "value": "good"}, headers=ann).status_code == 200
    )
    clock.now += timedelta(hours=1)
    assert client.post("/api/labels", json={"image_id": mine, "value": "bad"}, headers=ann).status_code == 200
    assert n_labels(app, mine) == 1


def test_1_no_image_goes_beyond_k_even_with_stale_leases(app, clock):
    # Leases are capped at k when handed out; an expired lease whose owner answers late is the one way
    # past k, and the store refuses it under the image's lock.
    store = app.state.store
    img = image_ids(app)[0]
    ids = [store.add_labeler(n) for n in ("a", "b", "c")]
    now = clock.now
    with store.session() as s:
        for lab in ids:
            s.add(
                LeaseRow(image_id=img, labeler_id=lab, expires_at=now + timedelta(minutes=1), created_at=now)
            )
    store.set_labels([(img, ids[0], "good")], leased_at=now, k=2)
    store.set_labels([(img, ids[1], "good")], leased_at=now, k=2)
    with pytest.raises(NotLeased, match="all the 2 labels"):
        store.set_labels([(img, ids[2], "good")], leased_at=now, k=2)
    assert n_labels(app, img) == 2


def test_1_votes_need_a_lease(client, app, run):
    store = app.state.store
    sha = {im["prompt"]: [] for im in store.list_images()}
    for im in store.list_images():
        sha[im["prompt"]].append(im["sha256"])
    create_comparison(
        store, "c", "new", "old", {p: (s[:1], s[1:2]) for p, s in sha.items()}, raters_per_query=2
    )
    ann = new_labeler(client, "ann")
    never = store.comparison_queries(store.comparison("c")["id"])[-1]["id"]
    r = client.post(
        "/api/compare/votes", json={"query_id": never, "alignment": "A", "fidelity": "A"}, headers=ann
    )
    assert r.status_code == 409 and "not leased to you" in r.json()["detail"]
    query = client.get("/api/compare/next", headers=ann).json()["query"]
    vote = {"query_id": query["id"], "alignment": "A", "fidelity": "tie"}
    assert client.post("/api/compare/votes", json=vote, headers=ann).json()["status"] == "new"


def test_11_a_resend_changes_nothing_not_even_the_undo_order(client, app, clock):
    ann = new_labeler(client, "ann")
    first, second = lease(client, ann)[:2]
    client.post("/api/labels", json={"image_id": first, "value": "good"}, headers=ann)
    client.post("/api/labels", json={"image_id": second, "value": "bad"}, headers=ann)
    before = client.get("/api/labels", headers=ann).json()
    client.post("/api/labels", json={"image_id": first, "value": "good"}, headers=ann)  # a resend
    assert client.get("/api/labels", headers=ann).json() == before
    assert client.post("/api/undo", headers=ann).json()["undone"] == {"image_id": second, "value": "bad"}


# --- authentication: guessing, weak secrets, sessions, revocation (findings 2, 3) ----------------------------


def test_2_sign_in_is_rate_limited_per_client_address(run, clock):
    app = create_app(run, ADMIN_SECRET, clock=clock, login_attempts=5, login_window_seconds=60)
    try:
        with TestClient(app, client=("10.0.0.1", 1)) as c, TestClient(app, client=("10.0.0.2", 1)) as other:
            codes = [c.post("/api/login", json={"token": f"guess-{i}"}).status_code for i in range(8)]
            assert codes == [401] * 5 + [429] * 3
            r = c.post("/api/login", json={"token": ADMIN_SECRET})  # even the right one, while limited
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
            # guessing through the Authorization header counts and is limited the same way
            assert c.get("/api/me", headers={"Authorization": "Bearer guess"}).status_code == 429
            assert other.post("/api/login", json={"token": ADMIN_SECRET}).status_code == 200
            clock.now += timedelta(seconds=61)
            assert c.post("/api/login", json={"token": ADMIN_SECRET}).status_code == 200
    finally:
        app.state.store.close()


def test_the_limiter_forgets_the_stalest_clients_beyond_its_bound():
    limiter = LoginLimiter(attempts=2, window_seconds=60, max_clients=100)
    for i in range(1000):  # an attacker with many addresses cannot grow the server's memory without bound
        limiter.failed(f"10.0.{i // 256}.{i % 256}", now=float(i))
    assert len(limiter.failures) <= 100


@pytest.mark.parametrize(
    "secret",
    [
        "aaaaaaaaaaaaaaaa",
        "password12345678",
        "abcdefghijklmnopqrstuvwxyz",
        "Aa1Aa1Aa1Aa1Aa1Aa1",
        "passwordPASSWORDpasswordPASSWORD",  # long, two kinds, but only 14 distinct characters
    ],
)
def test_2_weak_admin_secrets_are_refused(run, secret):
    with pytest.raises(ValueError, match="too weak"):
        auth.check_admin_secret(secret)
    with pytest.raises(ValueError, match="too weak"):
        create_app(run, secret)


def test_2_a_generated_admin_secret_passes():
    import secrets

    for _ in range(200):
        s = secrets.token_urlsafe(32)
        assert auth.check_admin_secret(s) == s
    # token_urlsafe(32) draws no digit and no symbol about once in 7,700 tries: such a draw passes too
    unlucky = "qXbTzRkWmPaLcVnHsJdFgYeUwQiOoKrBtMhNjZlCxEv"
    assert len(unlucky) == 43 and auth.check_admin_secret(unlucky) == unlucky


def test_3_the_cookie_holds_a_session_and_sign_out_ends_it_on_the_server(client, app):
    token = new_labeler(client, "ann")["Authorization"].removeprefix("Bearer ")
    assert client.post("/api/login", json={"token": token}).status_code == 200
    cookie = client.cookies[COOKIE]
    assert cookie != token and token not in cookie
    with app.state.store.session() as s:  # only a hash of the session id is stored
        assert s.scalar(sa.select(SessionRow.id_hash)) == auth.hash_token(cookie)
    assert client.get("/api/me").status_code == 200
    assert client.post("/api/logout").status_code == 200
    client.cookies.set(COOKIE, cookie)  # the same cookie, replayed
    r = client.get("/api/me")
    assert r.status_code == 401 and "session ended" in r.json()["detail"]


def test_a_chosen_session_id_is_never_adopted_and_each_sign_in_gets_a_fresh_one(client):
    planted = {"Cookie": f"{COOKIE}=attacker-chosen"}  # session fixation: plant an id, wait for a sign-in
    assert client.get("/api/me", headers=planted).status_code == 401
    r = client.post("/api/login", json={"token": ADMIN_SECRET}, headers=planted)
    first = r.cookies[COOKIE]
    assert r.status_code == 200 and first != "attacker-chosen"
    assert client.post("/api/login", json={"token": ADMIN_SECRET}).cookies[COOKIE] != first


def test_the_cookie_is_secure_behind_tls_and_never_readable_by_scripts(run):
    app = create_app(run, ADMIN_SECRET)
    try:
        with TestClient(app, base_url="https://testserver") as c:
            cookie = c.post("/api/login", json={"token": ADMIN_SECRET}).headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    finally:
        app.state.store.close()


def test_a_cross_site_sign_in_is_refused(client):
    # login CSRF: signing the victim into the attacker's account would collect their labels under it
    r = client.post("/api/login", json={"token": ADMIN_SECRET}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")


def test_tokens_in_the_query_string_do_not_authenticate(client):
    assert client.get(f"/api/me?token={ADMIN_SECRET}").status_code == 401


def test_a_revoked_labeler_frees_their_leases(client, app, run):
    ann, bob = new_labeler(client, "ann"), new_labeler(client, "bob")
    client.get("/api/next", headers=new_labeler(client, "cat"))
    held = lease(client, ann)
    assert main(["label", "revoke", str(run), "ann"]) == 0
    assert lease(client, bob) == held  # the images ann held are handed out again at once


def test_a_session_expires(run, clock):
    app = create_app(run, ADMIN_SECRET, clock=clock, session_seconds=3600)
    try:
        with TestClient(app) as c:
            assert c.post("/api/login", json={"token": ADMIN_SECRET}).status_code == 200
            assert c.get("/api/me").status_code == 200
            clock.now += timedelta(seconds=3601)
            assert c.get("/api/me").status_code == 401
    finally:
        app.state.store.close()


def test_3_revoke_and_rotate_take_effect_at_once_even_in_open_sessions(client, app, run, capsys):
    headers = new_labeler(client, "ann")
    token = headers["Authorization"].removeprefix("Bearer ")
    assert client.post("/api/login", json={"token": token}).status_code == 200
    lease(client, headers)
    assert main(["label", "revoke", str(run), "ann"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert client.get("/api/me").status_code == 401  # the open session
    assert client.get("/api/me", headers=headers).status_code == 401  # the token
    with app.state.store.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(SessionRow)) == 0
    assert main(["label", "rotate", str(run), "ann"]) == 0
    new_token = capsys.readouterr().out.strip().splitlines()[-1]
    assert new_token != token
    assert client.get("/api/me", headers={"Authorization": f"Bearer {new_token}"}).json()["name"] == "ann"
    assert client.get("/api/me", headers=headers).status_code == 401
    assert main(["label", "revoke", str(run), "admin"]) == 2
    assert "admin secret" in capsys.readouterr().err
    assert main(["label", "rotate", str(run), "nobody"]) == 2
    assert "no labeler named 'nobody'" in capsys.readouterr().err


# --- input: nothing from outside makes a 500 (finding 5), files and names checked (4, 7, 8) ----------------


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/labels", b'{"image_id": 1e400, "value": "good"}'),
        ("/api/labels", b'{"image_id": NaN, "value": "good"}'),
        ("/api/labels", b'{"image_id": -Infinity, "value": "good"}'),
        ("/api/login", b'{"token": "\\ud800"}'),
        ("/api/login", b'{"token": "ok", "\\udfff": 1}'),
        ("/api/admin/labelers", b'{"name": "\\ud800"}'),
        ("/api/compare/votes", b'{"query_id": 1e400, "alignment": "A", "fidelity": "A"}'),
    ],
)
def test_5_hostile_json_gets_a_4xx_never_a_500(client, path, body):
    r = client.post(path, content=body, headers={**ADMIN, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert "detail" in r.json()
    assert "input" not in r.text  # the input is not echoed back


def test_4_import_refuses_images_whose_file_is_not_in_the_run(client, app, tmp_path):
    ann = new_labeler(client, "ann")
    img = lease(client, ann)[0]
    client.post("/api/labels", json={"image_id": img, "value": "good"}, headers=ann)
    export_labels(app.state.store, tmp_path / "l.jsonl")
    row = json.loads((tmp_path / "l.jsonl").read_text())
    fake = "ab" * 32
    (tmp_path / "fake.jsonl").write_text(json.dumps({**row, "image_sha256": fake}) + "\n")
    with Store.open(tmp_path / "other") as other:
        with pytest.raises(ValueError, match=f"image {fake} has no file in the run"):
            import_labels(other, tmp_path / "fake.jsonl")
        with pytest.raises(ValueError, match=f"image {fake} has no file"):
            import_labels(other, tmp_path / "fake.jsonl", images_from=app.state.store.run_dir)
        assert other.list_images() == []
    n_before = len(app.state.store.list_images())
    with pytest.raises(ValueError, match=f"image {fake} has no file"):
        import_labels(app.state.store, tmp_path / "fake.jsonl")  # into the served run itself
    assert len(app.state.store.list_images()) == n_before


@pytest.mark.parametrize("name", ["ann\x00", "ann\x1b[31m", "\u202eadmin", "a b", "", "x" * 65])
def test_7_import_refuses_labeler_names_the_app_would_refuse(client, app, tmp_path, name):
    ann = new_labeler(client, "ann")
    img = lease(client, ann)[0]
    client.post("/api/labels", json={"image_id": img, "value": "good"}, headers=ann)
    export_labels(app.state.store, tmp_path / "l.jsonl")
    row = json.loads((tmp_path / "l.jsonl").read_text())
    (tmp_path / "bad.jsonl").write_text(json.dumps({**row, "labeler": name}) + "\n")
    with pytest.raises(ValueError, match="line 1: labeler must be a labeler name"):
        import_labels(app.state.store, tmp_path / "bad.jsonl")


def test_8_export_to_an_unwritable_path_is_a_clear_error(run, tmp_path, capsys):
    assert main(["label", "export", str(run), "/sys/x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "cannot write /sys/x.jsonl" in err and "Traceback" not in err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere: then /sys above is the case
            assert main(["label", "export", str(run), str(locked / "x.jsonl")]) == 2
            assert "cannot write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


# --- CSRF (finding 6) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://sub.testserver"},
    ],
)
def test_6_cross_site_posts_are_refused(client, app, headers):
    ann = new_labeler(client, "ann")
    token = ann["Authorization"].removeprefix("Bearer ")
    img = lease(client, ann)[0]
    client.post("/api/labels", json={"image_id": img, "value": "good"}, headers=ann)
    client.post("/api/login", json={"token": token})
    for path in ("/api/undo", "/api/logout"):
        r = client.post(path, headers=headers)
        assert r.status_code == 403 and "refused" in r.json()["detail"], path
    r = client.request("DELETE", f"/api/labels/{img}", headers=headers)
    assert r.status_code == 403
    assert n_labels(app) == 1 and client.get("/api/me").status_code == 200
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/undo", headers=same).status_code == 200  # the page itself may


# --- headers and Host (finding 10) ---------------------------------------------------------------------------


def test_10_every_answer_carries_the_security_headers(client, app):
    ann = new_labeler(client, "ann")
    for r in (client.get("/api/me", headers=ann), client.get("/api/next", headers=ann), client.get("/")):
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    sha = app.state.store.list_images()[0]["sha256"]
    r = client.get(f"/images/{sha}.png", headers=ann)
    assert (
        r.headers["cache-control"].startswith("private") and r.headers["x-content-type-options"] == "nosniff"
    )
    assert client.get("/api/me", headers={"Authorization": "Bearer x"}).headers["cache-control"] == "no-store"


def test_10_the_host_allow_list_stops_dns_rebinding(run):
    app = create_app(run, ADMIN_SECRET, allowed_hosts=("labels.example.org",))
    try:
        with TestClient(app, base_url="http://labels.example.org") as c:
            assert c.get("/healthz").status_code == 200
            r = c.get("/api/me", headers={**ADMIN, "Host": "attacker.example"})
            assert r.status_code == 400 and "unknown Host" in r.json()["detail"]
            assert c.get("/healthz", headers={"Host": "labels.example.org:443"}).status_code == 200
    finally:
        app.state.store.close()
    assert allowed_hosts("127.0.0.1", None) == ("127.0.0.1", "localhost", "[::1]")
    assert allowed_hosts("0.0.0.0", ["Labels.Example.org"]) == ("labels.example.org",)
    with pytest.raises(ValueError, match="not a host name"):
        allowed_hosts("127.0.0.1", ["http://x/"])


# --- against a real server: proxies, timeouts (findings 9, 10) ------------------------------------------------


def _serve(run, log, *extra):
    port = free_port()
    cmd = [sys.executable, "-m", "t2ialign", "label", "serve", str(run), "--port", str(port), "--log-level"]
    cmd += ["warning", *extra]
    env = {**os.environ, "T2IALIGN_ADMIN_SECRET": ADMIN_SECRET, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {log.name}")


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def test_9_idle_and_half_sent_connections_are_closed(run, tmp_path):
    with open(tmp_path / "server.log", "wb") as log:
        proc, port = _serve(
            run, log, "--head-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1"
        )
    try:
        socks = []
        for i in range(30):  # 10 silent, 10 with half a head, 10 with half a body
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 3 == 1:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            elif i % 3 == 2:
                s.sendall(
                    b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 100\r\n\r\n{"tok'
                )
            socks.append(s)
        start = time.monotonic()
        answers = []
        for s in socks:
            data = b""
            while chunk := s.recv(4096):  # the server closes it: recv returns b"" (timeout 10 s)
                data += chunk
            answers.append(data)
            s.close()
        assert time.monotonic() - start < 8
        assert all(a == b"" for a in answers[0::3]) and all(a == b"" for a in answers[1::3])
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers[2::3])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        _stop(proc)


def test_10_x_forwarded_for_is_believed_only_from_configured_proxies(run, tmp_path):
    def guesses(port) -> list[int]:
        return [
            httpx.post(
                f"http://127.0.0.1:{port}/api/login",
                json={"token": "guess"},
                headers={"X-Forwarded-For": f"198.51.100.{i}"},
                timeout=5,
            ).status_code
            for i in range(12)
        ]

    with open(tmp_path / "a.log", "wb") as log:
        proc, port = _serve(run, log)
    try:  # a client naming a new address in each request is still limited by its own
        assert guesses(port)[-2:] == [429, 429]
    finally:
        _stop(proc)
    with open(tmp_path / "b.log", "wb") as log:
        proc, port = _serve(run, log, "--forwarded-allow-ips", "127.0.0.1")
    try:  # behind a trusted proxy, the forwarded address is the client's
        assert guesses(port) == [401] * 12
    finally:
        _stop(proc)


def test_cli_options_are_validated(run, capsys, monkeypatch):
    monkeypatch.setenv("T2IALIGN_ADMIN_SECRET", ADMIN_SECRET)
    assert main(["label", "serve", str(run), "--head-timeout", "0"]) == 2
    assert "--head-timeout must be in" in capsys.readouterr().err
    assert main(["label", "serve", str(run), "--allowed-host", "a b"]) == 2
    assert "not a host name" in capsys.readouterr().err
