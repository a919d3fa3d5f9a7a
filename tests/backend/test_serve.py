"""`python -m backend.serve` on a free port: real HTTP, a worker process, SSE arriving while the job runs."""

import json
import re
import socket
import subprocess
import sys
import time

import httpx
from backend_helpers import REPO, worker_env

from backend.app.services.jobs import pid_alive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_api_and_worker(settings, tmp_path):
    port = free_port()
    env = worker_env(settings) | {"FNPRUNE_TOKEN": "test-token-123"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "backend.serve", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer test-token-123"}
    try:
        deadline = time.time() + 60
        while True:
            try:
                health = httpx.get(f"{base}/api/health", headers=headers, timeout=2)
                if health.json()["workers"] >= 1:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.time() < deadline, "server or worker did not come up"
            time.sleep(0.3)
        assert httpx.get(f"{base}/api/health").status_code == 401
        assert httpx.get(f"{base}/").status_code == 200
        job = httpx.post(f"{base}/api/analyses", headers=headers, json={
            "model": "tiny-llama", "corpus": "pydoc", "n_texts": 12, "max_tokens": 64, "n_components": 6}).json()
        arrivals = []
        with httpx.stream("GET", f"{base}/api/analyses/{job['id']}/events?token=test-token-123",
                          timeout=120) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.monotonic(), json.loads(line[6:])))
        assert arrivals[-1][1]["status"] == "succeeded"
        assert arrivals[-1][0] - arrivals[0][0] > 0.2  # events were streamed, not sent in one piece at the end
        assert "fnprune: serving on http://127.0.0.1" in (tmp_path / "serve.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    # the worker does not outlive the server
    text = (tmp_path / "serve.log").read_text()
    worker_pid = int(re.search(r"worker pid (\d+)", text).group(1))
    deadline = time.time() + 15
    while pid_alive(worker_pid):
        assert time.time() < deadline, "the worker outlived the server"
        time.sleep(0.2)
