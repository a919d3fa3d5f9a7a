"""``python -m backend.serve [--host 127.0.0.1] [--port 8000] [--api-only]``.

Starts the API (uvicorn) and, unless ``--api-only``, one worker process consuming the job queue.
``fnprune serve`` runs this. Binding to a non-loopback address without FNPRUNE_TOKEN prints a warning.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


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

    worker = None
    if not args.api_only:
        # The worker watches this pid and stops when the server is gone (uvicorn re-raises SIGTERM after
        # its shutdown, so the finally below does not always run).
        env = os.environ | {"FNPRUNE_WORKER_PARENT_PID": str(os.getpid())}
        worker = subprocess.Popen([sys.executable, "-m", "backend.worker"], env=env)
    host = f"[{args.host}]" if ":" in args.host else args.host
    workers = f"worker pid {worker.pid}" if worker else "no worker"
    print(f"fnprune: serving on http://{host}:{args.port}/  (data in {settings.data_dir}, "
          f"{settings.queue_kind} queue, {workers})", flush=True)
    try:
        uvicorn.run("backend.app.main:create_app", factory=True, host=args.host, port=args.port,
                    log_level=args.log_level)
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
