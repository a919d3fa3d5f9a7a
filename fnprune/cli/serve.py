"""The ``serve`` subcommand: the web app (API + worker), run in its own interpreter.

fnprune never imports the backend; this only starts ``python -m backend.serve`` and passes stop
signals on to it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path


def cmd_serve(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "backend.serve", "--host", args.host, "--port", str(args.port)]
    if args.api_only:
        command.append("--api-only")
    root = Path(__file__).resolve().parents[2]  # the repository: backend/ sits next to fnprune/
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    # The server runs in its own process group (with the worker it starts): a stop signal to this process
    # (Ctrl-C, a supervisor's SIGTERM) is passed on to the whole group, which gets a few seconds to finish.
    server = subprocess.Popen(command, env=env, start_new_session=True)
    stopping: list[int] = []

    def forward(signum, frame) -> None:
        stopping.append(signum)
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            rc = server.wait(timeout=None if not stopping else 15)
            break
        except subprocess.TimeoutExpired:
            server.kill()
    try:  # nothing of the group may outlive this command
        os.killpg(server.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return 130 if stopping and stopping[0] == signal.SIGINT else (0 if stopping else rc)


def add_subcommands(subparsers) -> None:
    """Register ``serve``."""
    p = subparsers.add_parser("serve", help="start the web app (API + worker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-only", action="store_true", help="start the API without a worker")
    p.set_defaults(func=cmd_serve)
