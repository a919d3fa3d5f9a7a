"""``python -m backend.serve [--host 127.0.0.1] [--port 8000] [--api-only]``.

Starts the API (uvicorn) and, unless ``--api-only``, one worker process consuming the job queue.
``fnprune serve`` runs this. Binding to a non-loopback address without FNPRUNE_TOKEN prints a warning.

SIGTERM, SIGINT and SIGHUP stop the API (open event streams get a few seconds) and the worker (its running
job is marked failed); a worker started here also stops when this process dies (Linux parent-death signal,
and the worker watches this pid).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

SHUTDOWN_GRACE_S = 3  # open connections (event streams) get this long after a stop signal


def die_with_parent() -> None:
    """In a child (``preexec_fn``): get SIGTERM when the parent process dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(signum, frame) -> None:
    # uvicorn restores this handler after its own shutdown and re-raises the signal: exiting through
    # SystemExit (instead of the default "die now") lets the finally below stop the worker.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fnprune serve", description="Run the fnprune web app.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-only", action="store_true", help="do not start a worker (run python -m backend.worker)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    import uvicorn
    from pydantic import ValidationError

    from backend.app.core.config import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        for err in exc.errors():
            print(f"fnprune serve: FNPRUNE_{'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    warning = settings.check_bind(args.host)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    try:
        settings.ensure_dirs()
    except OSError as exc:
        print(f"fnprune serve: cannot use the data dir {settings.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    worker = None
    if not args.api_only:
        # The finally below stops the worker; should this process be killed outright, the worker still
        # stops (parent-death signal, and it watches this pid).
        env = os.environ | {"FNPRUNE_WORKER_PARENT_PID": str(os.getpid())}
        worker = subprocess.Popen([sys.executable, "-m", "backend.worker"], env=env, preexec_fn=die_with_parent)
    host = f"[{args.host}]" if ":" in args.host else args.host
    workers = f"worker pid {worker.pid}" if worker else "no worker"
    print(f"fnprune: serving on http://{host}:{args.port}/  (data in {settings.data_dir}, "
          f"{settings.queue_kind} queue, {workers})", flush=True)
    try:
        uvicorn.run("backend.app.main:create_app", factory=True, host=args.host, port=args.port,
                    log_level=args.log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    except KeyboardInterrupt:
        return 130
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # stop now; a running job is marked failed
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
