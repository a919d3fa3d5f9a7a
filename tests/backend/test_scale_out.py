"""The documented deployment shape with a real Redis: one API process (``--api-only``) and two worker
processes, each in its own process group, sharing FNPRUNE_DATA_DIR and FNPRUNE_REDIS_URL.

Both workers take jobs (analyses and prunings), every job ends with its artifacts, a worker killed mid-job fails only that job
(the rest finish on the other worker), and a restarted API still has the whole history. ``make test``
installs Debian's redis-server; without it this test fails rather than skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from backend_helpers import REPO, worker_env
from test_serve import free_port, wait_healthy

from backend.app.services.jobs import WORKER_STOPPED, JobStore

pytestmark = pytest.mark.slow

SMALL = {"model": "tiny-llama", "corpus": "pydoc", "n_texts": 12, "max_tokens": 64, "n_components": 6}
LONG = {**SMALL, "n_texts": 400, "max_tokens": 1024}


class Group:
    """A process started in its own process group (like a container or a systemd unit)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (make test installs Debian's redis-server package)"
    port = free_port()
    group = Group("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                            "--dir", str(tmp_path)], dict(os.environ), tmp_path)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.time() + 20
    while True:
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            pass
        assert group.proc.poll() is None and time.time() < deadline, group.log_path.read_text()
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    group.stop(signal.SIGKILL)


def wait_all(base: str, ids: list[str], timeout: float = 120) -> dict[str, dict]:
    deadline = time.time() + timeout
    while True:
        jobs = {j["id"]: j for j in httpx.get(f"{base}/api/analyses", timeout=10).json()}
        if all(jobs[i]["status"] in ("succeeded", "failed", "cancelled") for i in ids):
            return jobs
        assert time.time() < deadline, {i: jobs[i]["status"] for i in ids}
        time.sleep(0.3)


def test_redis_api_and_two_workers(settings, tmp_path, redis_url):
    env = worker_env(settings) | {"FNPRUNE_REDIS_URL": redis_url}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api_command = [sys.executable, "-m", "backend.serve", "--api-only", "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning"]
    groups = [Group("api", api_command, env, tmp_path)]
    store = JobStore(settings.jobs_path)
    try:
        workers = [Group(f"worker{i}", [sys.executable, "-m", "backend.worker"], env, tmp_path) for i in (1, 2)]
        groups += workers
        wait_healthy(base, groups[0].proc, groups[0].log_path, workers=2)
        assert httpx.get(f"{base}/api/health").json()["queue"] == "redis"

        # -- several jobs at once: both workers take some, every one ends with its artifacts --------------
        first = [httpx.post(f"{base}/api/analyses", json={**SMALL, "seed": s}).json()["id"] for s in range(4)]
        jobs = wait_all(base, first)
        assert [jobs[i]["status"] for i in first] == ["succeeded"] * 4, [jobs[i]["error"] for i in first]
        for job_id in first:
            assert (settings.job_dir("analysis", job_id) / "run").is_dir()
            assert httpx.get(f"{base}/api/analyses/{job_id}/networks").status_code == 200
        prunings = [httpx.post(f"{base}/api/prunings", json={"analysis_id": first[0], "target_ratio": r,
                                                               "evaluate": False}).json()["id"] for r in (0.05, 0.1)]
        deadline = time.time() + 120
        while any(store.raw(p)["status"] in ("queued", "running") for p in prunings):
            assert time.time() < deadline, [store.raw(p)["status"] for p in prunings]
            time.sleep(0.3)
        for p_id in prunings:
            pruning = httpx.get(f"{base}/api/prunings/{p_id}").json()
            assert pruning["status"] == "succeeded", pruning["error"]
            archive = httpx.get(f"{base}/api/prunings/{p_id}/download/model", timeout=60)
            assert archive.status_code == 200 and archive.content[:2] == b"PK"
        took = {store.raw(i)["worker_pid"] for i in first + prunings}
        assert took == {w.pid for w in workers}, f"jobs went to {took}, workers are {[w.pid for w in workers]}"

        # -- a worker killed mid-job: that job fails, the rest finish on the other worker -----------------
        long_id = httpx.post(f"{base}/api/analyses", json=LONG).json()["id"]
        deadline = time.time() + 60
        while store.raw(long_id)["status"] != "running":
            assert time.time() < deadline, store.raw(long_id)["status"]
            time.sleep(0.1)
        victim = next(w for w in workers if w.pid == store.raw(long_id)["worker_pid"])
        survivor = next(w for w in workers if w is not victim)
        rest = [httpx.post(f"{base}/api/analyses", json={**SMALL, "seed": 10 + s}).json()["id"] for s in range(2)]
        assert httpx.get(f"{base}/api/analyses/{long_id}").json()["status"] == "running"
        victim.stop(signal.SIGKILL)
        jobs = wait_all(base, [long_id, *rest])
        assert jobs[long_id]["status"] == "failed" and jobs[long_id]["error"] == WORKER_STOPPED, jobs[long_id]
        assert [jobs[i]["status"] for i in rest] == ["succeeded"] * 2, [jobs[i]["error"] for i in rest]
        assert {store.raw(i)["worker_pid"] for i in rest} == {survivor.pid}
        assert httpx.get(f"{base}/api/health").json()["workers"] == 1

        # -- the API restarts with the history intact --------------------------------------------------------
        before = {j["id"]: j["status"] for kind in ("analyses", "prunings")
                  for j in httpx.get(f"{base}/api/{kind}").json()}
        groups[0].stop()
        groups[0] = Group("api2", api_command, env, tmp_path)
        wait_healthy(base, groups[0].proc, groups[0].log_path, workers=1)
        after = {j["id"]: j["status"] for kind in ("analyses", "prunings")
                 for j in httpx.get(f"{base}/api/{kind}").json()}
        assert after == before and len(after) == 9
        assert httpx.get(f"{base}/api/analyses/{first[0]}/overview").status_code == 200
        # and the queue still works through the restarted API
        again = httpx.post(f"{base}/api/analyses", json=SMALL).json()["id"]
        assert wait_all(base, [again])[again]["status"] == "succeeded"
    finally:
        for group in reversed(groups):
            group.stop()
