"""`python -m backend.serve` / `fnprune serve` on a free port: real HTTP, a worker process, SSE arriving while
the job runs, and a stop signal that stops every process it started."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from backend_helpers import REPO, worker_env

from backend.app.services.jobs import WORKER_STOPPED, JobStore, pid_alive

pytestmark = pytest.mark.slow


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
        with httpx.stream("GET", f"{base}/api/analyses/{job['id']}/events", headers=headers,
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


def wait_healthy(base: str, proc: subprocess.Popen, log_path, workers: int = 1, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).json()["workers"] >= workers:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        assert proc.poll() is None, log_path.read_text()
        assert time.time() < deadline, "server or worker did not come up: " + log_path.read_text()[-2000:]
        time.sleep(0.3)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_fnprune_serve_stops_everything_on_a_signal(settings, tmp_path, signum):
    """A supervisor's SIGTERM (or Ctrl-C) to `fnprune serve` stops the API and the worker within seconds, and
    the job that was running ends failed instead of staying `running` or running on in an orphan."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fnprune", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, log_path)
        job = httpx.post(f"{base}/api/analyses", json={"model": "tiny-llama", "corpus": "pydoc", "n_texts": 200,
                                                        "max_tokens": 512, "n_components": 8}).json()
        deadline = time.time() + 60
        while httpx.get(f"{base}/api/analyses/{job['id']}").json()["status"] != "running":
            assert time.time() < deadline, "the job never started"
            time.sleep(0.2)
        # an open event stream must not hold the shutdown up
        stream = subprocess.Popen([sys.executable, "-c", f"import httpx; list(httpx.stream('GET', "
                                   f"'{base}/api/analyses/{job['id']}/events', timeout=None).__enter__().iter_lines())"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 2, family  # backend.serve and backend.worker
        started = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=20)
        stopped_after = time.monotonic() - started
        _, alive = psutil.wait_procs(family, timeout=5)
        assert not alive, f"still running after {stopped_after:.1f} s: {alive}\n" + log_path.read_text()[-3000:]
        assert stopped_after < 10, f"took {stopped_after:.1f} s"
        assert port_is_free(port)
        final = JobStore(settings.jobs_path).get(job["id"])
        assert final["status"] == "failed" and final["error"] == WORKER_STOPPED, final
        stream.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in psutil.Process(os.getpid()).children(recursive=True):
            child.kill()
        log.close()
