"""The task queue (huey) and the worker that runs jobs.

The queue message carries only the job id; everything else (params, status, progress) lives in
the job store. ``python -m backend.worker`` runs :func:`main`: it fails the jobs a dead worker left
``running``, then consumes the queue with one thread while a heartbeat thread marks it alive.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey

from fnprune.errors import FnpruneError
from fnprune.progress import Cancelled

from .core.config import JOB_FOLDERS, Settings, get_settings
from .services.jobs import JobStore

log = logging.getLogger("fnprune.worker")

HEARTBEAT_EVERY_S = 2.0
CANCEL_POLL_S = 0.5
# job id -> ident of the thread running it; the watchdog interrupts that thread once the job is cancelled
_running_jobs: dict[str, int] = {}
_interrupt_lock = threading.Lock()


@lru_cache(maxsize=16)
def _queue_for(data_dir: str, redis_url: str | None, immediate: bool) -> tuple[Huey, Any]:
    if redis_url:
        huey: Huey = RedisHuey("fnprune", url=redis_url, immediate=immediate, results=False)
    else:
        os.makedirs(data_dir, exist_ok=True)
        huey = SqliteHuey("fnprune", filename=os.path.join(data_dir, "queue.db"), immediate=immediate,
                          results=False)

    def run_job(job_id: str) -> None:
        settings = get_settings() if not immediate else _immediate_settings[data_dir]
        execute(settings, job_id)

    task = huey.task(name="fnprune.run_job")(run_job)
    return huey, task


_immediate_settings: dict[str, Settings] = {}


def get_queue(settings: Settings, immediate: bool = False) -> tuple[Huey, Any]:
    """The huey instance and its ``run_job`` task for these settings (same queue in API and worker).

    ``immediate=True`` runs jobs inline at enqueue time (tests without a worker process).
    """
    if immediate:
        _immediate_settings[str(settings.data_dir)] = settings
    return _queue_for(str(settings.data_dir), settings.REDIS_URL, immediate)


def job_store(settings: Settings) -> JobStore:
    return JobStore(settings.jobs_path, settings.HEARTBEAT_TIMEOUT_S)


def make_progress(store: JobStore, job_id: str, min_interval_s: float = 0.25) -> Callable[[str, float, str], None]:
    """fnprune progress callback writing to the job store; raises Cancelled once the job is cancelled."""
    last = {"t": 0.0, "stage": None}

    def progress(stage: str, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if stage == last["stage"] and fraction < 1.0 and now - last["t"] < min_interval_s:
            return
        last["t"], last["stage"] = now, stage
        status = store.update_progress(job_id, stage, float(fraction), message or stage)
        if status != "running":
            raise Cancelled(f"job {job_id} was {status}")

    return progress


def _runner(kind: str) -> Callable[[Settings, str, dict[str, Any], Callable], dict[str, Any]]:
    if kind == "analysis":
        from .services.analyses import run_analysis

        return run_analysis
    if kind == "ablation":
        from .services.ablations import run_ablation

        return run_ablation
    if kind == "proposal":
        from .services.protect import run_proposal

        return run_proposal
    from .services.prunings import run_pruning

    return run_pruning


def execute(settings: Settings, job_id: str) -> None:
    """Run one job to a terminal status. Never raises (huey must not retry a failed job)."""
    store = job_store(settings)
    row = store.raw(job_id)
    if row is None or not store.start(job_id):
        log.info("job %s skipped (missing or no longer queued)", job_id)
        return
    import json

    params = json.loads(row["params"])
    with _interrupt_lock:
        _running_jobs[job_id] = threading.get_ident()
    log.info("job %s (%s) started", job_id, row["kind"])
    try:
        try:
            result = _runner(row["kind"])(settings, job_id, params, make_progress(store, job_id))
        finally:
            with _interrupt_lock:  # from here on the watchdog leaves this thread alone
                _running_jobs.pop(job_id, None)
        store.succeed(job_id, result)
        log.info("job %s succeeded", job_id)
    except Cancelled:
        store.cancel(job_id)
        log.info("job %s cancelled", job_id)
    except FnpruneError as exc:
        store.fail(job_id, str(exc) or type(exc).__name__)
        log.info("job %s failed: %s", job_id, exc)
    except MemoryError:
        store.fail(job_id, "out of memory: try fewer texts, fewer tokens or fewer components")
    except Exception as exc:  # a bug: keep the reason readable, the traceback in the log
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        store.fail(job_id, f"internal error ({type(exc).__name__}); the worker log has the details")
    finally:
        with _interrupt_lock:
            _running_jobs.pop(job_id, None)
        final = store.raw(job_id)
        if final is not None and final["status"] != "succeeded":
            # a failed or cancelled job leaves no files behind (not even complete ones)
            shutil.rmtree(settings.job_dir(final["kind"], job_id), ignore_errors=True)


def remove_leftovers(settings: Settings, store: JobStore) -> None:
    """Delete scratch dirs (activation stores, temporary outputs) of jobs that are no longer running."""
    for kind_dir in (settings.data_dir / folder for folder in JOB_FOLDERS.values()):
        for job_dir in kind_dir.glob("*") if kind_dir.is_dir() else []:
            row = store.raw(job_dir.name)
            if row is not None and row["status"] in ("queued", "running"):
                continue
            for leftover in [job_dir / "work", *job_dir.glob(".tmp-*"), *job_dir.glob("*.partial"),
                             *job_dir.glob(".model.tmp-*")]:
                log.info("removing leftover %s", leftover)
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


def _interrupt_thread(ident: int) -> bool:
    """Raise :class:`Cancelled` in thread ``ident`` at its next Python instruction."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(Cancelled))
    return done == 1


def _cancel_watchdog(store: JobStore, stop: threading.Event) -> None:
    """Stop the work of a cancelled job within about a second, even inside a long library call that reports
    no progress (a CanICA fit, a model load): the job's thread gets :class:`Cancelled` raised in it."""
    interrupted: set[str] = set()
    while not stop.wait(CANCEL_POLL_S):
        for job_id in list(_running_jobs):
            if job_id in interrupted:
                continue
            try:
                row = store.raw(job_id)
            except Exception:  # the store may be locked for a moment; try again next poll
                continue
            if row is None or row["status"] in ("cancelled", "failed"):
                with _interrupt_lock:
                    ident = _running_jobs.get(job_id)
                    if ident is not None and _interrupt_thread(ident):
                        interrupted.add(job_id)
                        log.info("job %s was %s: interrupting its work", job_id,
                                 "deleted" if row is None else row["status"])


def _heartbeat_loop(store: JobStore, stop: threading.Event) -> None:
    started = time.time()
    parent = int(os.environ.get("FNPRUNE_WORKER_PARENT_PID", "0") or 0)
    while not stop.is_set():
        if parent and os.getppid() != parent:
            log.warning("the server (pid %d) is gone: stopping", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        try:
            store.worker_beat(started)
            for job_id in list(_running_jobs):
                store.heartbeat(job_id)
        except Exception:  # the store may be locked for a moment; try again next beat
            log.warning("heartbeat failed", exc_info=True)
        stop.wait(HEARTBEAT_EVERY_S)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    from pydantic import ValidationError

    try:
        settings = get_settings()
        settings.ensure_dirs()
    except ValidationError as exc:
        for err in exc.errors():
            log.error("FNPRUNE_%s: %s", ".".join(map(str, err["loc"])), err["msg"])
        raise SystemExit(2) from None
    except OSError as exc:
        log.error("cannot use the data dir: %s", exc)
        raise SystemExit(2) from None
    store = job_store(settings)
    for job_id in store.reap_own_pid() + store.reap_dead():
        log.warning("job %s was left running by a stopped worker: marked failed", job_id)
    remove_leftovers(settings, store)
    huey, _ = get_queue(settings)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(store, stop), daemon=True)
    beat.start()
    threading.Thread(target=_cancel_watchdog, args=(store, stop), daemon=True, name="cancel-watchdog").start()
    consumer = huey.create_consumer(workers=1, worker_type="thread", periodic=False,
                                    initial_delay=0.1, backoff=1.15, max_delay=1.0)
    # SIGTERM: stop now (huey's default for SIGTERM is an immediate shutdown of the consumer).
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    log.info("worker pid %d consuming %s queue under %s", os.getpid(), settings.queue_kind, settings.data_dir)
    try:
        consumer.run()
    finally:
        stop.set()
        for job_id in list(_running_jobs):
            store.fail(job_id, "worker stopped during the job")
        store.worker_gone()
