"""The job store: one SQLite table (WAL) that the API reads and the worker writes.

A job row survives API and worker restarts. The worker records its pid, host and a heartbeat;
a ``running`` job whose worker is gone (pid dead on this host, or heartbeat older than the timeout)
is turned into ``failed`` with the reason :data:`WORKER_STOPPED`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fnprune.io import pid_alive

TERMINAL = ("succeeded", "failed", "cancelled")
WORKER_STOPPED = "worker stopped during the job"
HOST = socket.gethostname()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    eta_s REAL,
    error TEXT,
    params TEXT NOT NULL,
    result TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    stage_started_at REAL,
    worker_pid INTEGER,
    worker_host TEXT,
    heartbeat REAL
);
CREATE INDEX IF NOT EXISTS jobs_kind_created ON jobs (kind, created_at);
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat REAL NOT NULL,
    PRIMARY KEY (pid, host)
);
"""


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


class JobStore:
    """Thin data access over ``jobs.db``; every method opens its own short connection."""

    def __init__(self, path: Path, heartbeat_timeout_s: float = 60.0):
        self.path = Path(path)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # -- creation and reads --------------------------------------------------------------------
    def create(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:12]
        with self._connect() as db:
            db.execute("INSERT INTO jobs (id, kind, status, params, created_at, message) VALUES (?,?,?,?,?,?)",
                       (job_id, kind, "queued", json.dumps(params), time.time(), "waiting for a worker"))
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str, kind: str | None = None) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (kind is not None and row["kind"] != kind):
            return None
        if row["status"] == "running" and self._worker_dead(row):
            self.fail_orphan(row["id"])
            return self.get(job_id, kind)
        return self._to_dict(row)

    def reuse_or_create(self, kind: str, params: dict[str, Any], enqueue) -> tuple[dict[str, Any], bool]:
        """``(job, reused)``: a queued, running or succeeded job of ``kind`` with exactly these params
        (a failed or cancelled one is not reused), else a new one handed to ``enqueue``."""
        for job in self.list_jobs(kind):
            if job["params"] == params and job["status"] in ("queued", "running", "succeeded"):
                return job, True
        job = self.create(kind, params)
        enqueue(job["id"])
        return self.get(job["id"]) or job, False

    def list_jobs(self, kind: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE kind = ? ORDER BY created_at DESC", (kind,)).fetchall()
        if any(r["status"] == "running" and self._worker_dead(r) for r in rows):
            self.reap_dead()
            return self.list_jobs(kind)
        return [self._to_dict(r) for r in rows]

    def raw(self, job_id: str) -> sqlite3.Row | None:
        with self._connect() as db:
            return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    @staticmethod
    def _to_dict(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"], "kind": row["kind"], "status": row["status"],
            "progress": round(float(row["progress"]), 4), "stage": row["stage"], "message": row["message"],
            "eta_s": None if row["eta_s"] is None else round(float(row["eta_s"]), 1),
            "error": row["error"], "params": json.loads(row["params"]),
            "created_at": _iso(row["created_at"]), "started_at": _iso(row["started_at"]),
            "finished_at": _iso(row["finished_at"]),
            "result": None if row["result"] is None else json.loads(row["result"]),
        }

    # -- transitions (each guarded by the current status, so a terminal job never changes) -----
    def start(self, job_id: str) -> bool:
        """queued -> running by this process; False when the job is gone or was cancelled."""
        now = time.time()
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET status='running', started_at=?, stage_started_at=?, heartbeat=?, worker_pid=?,"
                " worker_host=?, message='starting', progress=0 WHERE id=? AND status='queued'",
                (now, now, now, os.getpid(), HOST, job_id))
        return cur.rowcount == 1

    def update_progress(self, job_id: str, stage: str, fraction: float, message: str) -> str:
        """Write progress, stage, message, ETA and heartbeat; return the job's status afterwards."""
        now = time.time()
        with self._connect() as db:
            row = db.execute("SELECT status, stage, stage_started_at FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return "cancelled"
            if row["status"] != "running":
                return row["status"]
            stage_started = row["stage_started_at"] or now
            if stage != row["stage"]:
                stage_started = now
            elapsed = now - stage_started
            eta = elapsed * (1 - fraction) / fraction if 0.02 < fraction < 1 and elapsed > 0.5 else None
            db.execute("UPDATE jobs SET progress=?, stage=?, message=?, eta_s=?, stage_started_at=?, heartbeat=?"
                       " WHERE id=? AND status='running'",
                       (fraction, stage, message, eta, stage_started, now, job_id))
        return "running"

    def heartbeat(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET heartbeat=? WHERE id=? AND status='running'", (time.time(), job_id))

    def succeed(self, job_id: str, result: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET status='succeeded', progress=1, eta_s=NULL, message='done', result=?,"
                       " finished_at=? WHERE id=? AND status='running'", (json.dumps(result), time.time(), job_id))

    def fail(self, job_id: str, error: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET status='failed', eta_s=NULL, error=?, message='failed', finished_at=?"
                       " WHERE id=? AND status IN ('queued', 'running')", (error, time.time(), job_id))

    def cancel(self, job_id: str) -> bool:
        """Mark a queued or running job cancelled (the worker notices at its next progress report)."""
        with self._connect() as db:
            cur = db.execute("UPDATE jobs SET status='cancelled', eta_s=NULL, message='cancelled', finished_at=?"
                             " WHERE id=? AND status IN ('queued', 'running')", (time.time(), job_id))
        return cur.rowcount == 1

    # -- dead workers ----------------------------------------------------------------------------
    def _worker_dead(self, row: sqlite3.Row) -> bool:
        if row["worker_host"] == HOST and row["worker_pid"] and not pid_alive(int(row["worker_pid"])):
            return True
        return row["heartbeat"] is not None and time.time() - row["heartbeat"] > self.heartbeat_timeout_s

    def fail_orphan(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET status='failed', eta_s=NULL, error=?, message='failed', finished_at=?"
                       " WHERE id=? AND status='running'", (WORKER_STOPPED, time.time(), job_id))

    def reap_own_pid(self) -> list[str]:
        """At worker start: jobs recorded under this very pid and host belong to a previous process
        (a restarted container reuses pids), so they are orphans."""
        with self._connect() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status='running' AND worker_pid=? AND worker_host=?",
                              (os.getpid(), HOST)).fetchall()
        for row in rows:
            self.fail_orphan(row["id"])
        return [row["id"] for row in rows]

    def reap_dead(self) -> list[str]:
        """Fail every running job whose worker is gone; return their ids."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status='running'").fetchall()
        dead = [r["id"] for r in rows if self._worker_dead(r)]
        for job_id in dead:
            self.fail_orphan(job_id)
        return dead

    # -- workers table (for /api/health) ---------------------------------------------------------
    def worker_beat(self, started_at: float) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO workers (pid, host, started_at, heartbeat) VALUES (?,?,?,?)"
                       " ON CONFLICT(pid, host) DO UPDATE SET heartbeat=excluded.heartbeat",
                       (os.getpid(), HOST, started_at, time.time()))

    def worker_gone(self) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM workers WHERE pid=? AND host=?", (os.getpid(), HOST))

    def live_workers(self) -> int:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM workers").fetchall()
        now = time.time()
        alive = 0
        for r in rows:
            if r["host"] == HOST and not pid_alive(int(r["pid"])):
                continue
            if now - r["heartbeat"] <= self.heartbeat_timeout_s:
                alive += 1
        return alive
