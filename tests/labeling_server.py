"""Starting ``t2ialign label serve`` in a subprocess for the server and browser tests."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(run_dir, log_path, admin_secret: str, db_url: str | None = None, k: int = 3):
    """``t2ialign label serve`` in a subprocess; yields (base URL, process). Stopped at exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "t2ialign", "label", "serve", str(run_dir), "--port", str(port)]
    cmd += ["--k", str(k), "--log-level", "warning"] + (["--db-url", db_url] if db_url else [])
    env = {**os.environ, "T2IALIGN_ADMIN_SECRET": admin_secret, "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded: the deadline, or the process ending
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start in 60 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
