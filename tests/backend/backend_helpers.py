"""Helpers for the backend tests: a real worker process and polling a job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def worker_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FNPRUNE_")}
    env.update({"FNPRUNE_HOME": str(settings.HOME), "FNPRUNE_DATA_DIR": str(settings.data_dir),
                "FNPRUNE_DEVICE": "cpu", "FNPRUNE_HEARTBEAT_TIMEOUT_S": str(settings.HEARTBEAT_TIMEOUT_S),
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    if settings.MODEL_DIRS:
        env["FNPRUNE_MODEL_DIRS"] = os.pathsep.join(map(str, settings.MODEL_DIRS))
    return env


class WorkerProcess:
    def __init__(self, settings, log_path: Path):
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        from backend.app.services.jobs import JobStore

        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.worker"], cwd=REPO, env=worker_env(self.settings),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        store = JobStore(self.settings.jobs_path)
        deadline = time.time() + 60
        while store.live_workers() < 1:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-2000:]}")
            if time.time() > deadline:
                raise RuntimeError("worker did not start")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def wait_for(client, url: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(url).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"{url} did not reach {statuses}: {job}")
