"""Issue 21 item 5 at real size: a 1B-shaped local model directory through the web app.

``fnprune serve`` runs as users start it (the API and its worker, a real HTTP server on a loopback
port), with ``FNPRUNE_MODEL_DIRS`` holding the model's parent directory. This client makes the calls
the browser makes for the same clicks:

1. ``POST /api/analyses`` (the model directory, Brown, ``--docs`` x ``--max-tokens``), followed until it
   succeeds; every (stage, message) the job reports is recorded with its time;
2. ``POST /api/analyses/{id}/preview`` at 20% of all parameters (the widths, before any model loads);
3. ``POST /api/prunings`` (default method, 20%), cancelled once the select stage reports its first
   layer (that layer's greedy is done, the next one's is running): how long until the worker starts
   the job queued behind it, and whether the cancelled job's folder is gone;
4. ``POST /api/prunings`` again, followed to the end (held-out evaluation on ``--heldout`` documents).

The worker's RSS (``VmRSS`` of the processes below the API's, polled every 0.5 s) is recorded per
job, with the stage it peaked in. Writes ``app_scale.json``::

    python bench/bench_scale.py --layer-only ...   # or a full run: it saves the model directory
    python bench/bench_app_scale.py --model-dir bench/results/scale/llama-1b-shaped --out bench/results/app_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (by parent pid), nearest first."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [], [pid]
    while frontier:
        children = [c for c, pp in parent.items() if pp in frontier]
        out += children
        frontier = children
    return out


class WorkerMemory:
    """The peak VmRSS of the worker processes (below the API process ``api_pid``), per job ``label``,
    with the job's (stage, message) at that moment (``label`` and ``stage`` are set by :func:`follow`)."""

    def __init__(self, api_pid: int):
        self.api_pid, self.label, self.stage = api_pid, "", ""
        self.peaks: dict[str, dict] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            kib = max((_rss_kib(p) for p in _descendants(self.api_pid)), default=0)
            peak = self.peaks.setdefault(self.label, {"gb": 0.0, "at": ""})
            if kib / 1024 ** 2 > peak["gb"]:
                peak.update(gb=round(kib / 1024 ** 2, 2), at=self.stage)

    def stop(self) -> None:
        self._stop.set()


def follow(client: Client, path: str, memory: WorkerMemory, label: str, until=None, timeout: float = 7200) -> dict:
    """Poll ``path`` until the job ends (or ``until(job)``); returns the job and its (stage, message, t) trail."""
    start, seen, job = time.time(), [], {}
    while time.time() - start < timeout:
        _, job = client.call("GET", path)
        key = (job.get("stage", ""), job.get("message", ""))
        memory.label = label
        if job.get("status") == "running" and (not seen or seen[-1][:2] != key):
            seen.append((*key, round(time.time() - start, 1)))
            memory.stage = f"{key[0]}: {key[1]}"
        if job.get("status") in ("succeeded", "failed", "cancelled") or (until is not None and until(job)):
            break
        time.sleep(0.5)
    return {"job": job, "trail": seen, "wall_s": round(time.time() - start, 1)}


def stage_seconds(trail: list) -> list:
    """``[stage, seconds]`` per run of one stage in a job's polled trail (from its first poll in the stage to
    the first poll in the next; the last one to the last poll). A stage shorter than a poll may not show."""
    out: list = []
    for stage, _message, t in trail:
        if not out or out[-1][0] != stage:
            if out:
                out[-1][1] = round(t - out[-1][1], 1)
            out.append([stage, t])
    if out:
        out[-1][1] = round(trail[-1][2] - out[-1][1], 1)
    return out


def summarize(result: dict) -> dict:
    """Adds ``pruning.stage_seconds`` (:func:`stage_seconds` of its trail)."""
    if result.get("pruning", {}).get("trail"):
        result["pruning"]["stage_seconds"] = stage_seconds(result["pruning"]["trail"])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "app_scale.json")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--heldout", type=int, default=4)
    parser.add_argument("--summarize", type=Path, nargs="*", default=None,
                        help="only add the summary (per-stage seconds) to these result files, recorded before")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        for path in args.summarize:
            path.write_text(json.dumps(summarize(json.loads(path.read_text())), indent=1, default=str))
        return 0
    if args.model_dir is None:
        parser.error("--model-dir is required")
    model_dir = args.model_dir.resolve()
    home = Path(tempfile.mkdtemp(prefix="fnprune-app-scale-"))
    cache = Path(os.environ.get("FNPRUNE_HOME", Path.home() / ".cache" / "fnprune")).expanduser()
    if (cache / "corpora").is_dir():  # the corpora fetched before (Brown), not the jobs
        (home / "corpora").symlink_to(cache / "corpora")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FNPRUNE_")}
    env.update({"FNPRUNE_HOME": str(home), "FNPRUNE_MODEL_DIRS": str(model_dir.parent), "FNPRUNE_DEVICE": "cpu",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))})
    log = open(home / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "fnprune.cli", "serve", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    result: dict = {"model_dir": str(model_dir), "docs": args.docs, "max_tokens": args.max_tokens,
                    "machine": f"{os.cpu_count()} cores", "loadavg_start": os.getloadavg()}
    client = Client(port)
    try:
        deadline = time.time() + 120
        while True:
            try:
                status, health = client.call("GET", "/api/health")
                if status == 200 and health["workers"] >= 1:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not start:\n{(home / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        api = _descendants(server.pid)  # fnprune serve -> backend.serve (the API) -> its worker(s)
        memory = WorkerMemory(api[0])
        request = {"model": str(model_dir), "corpus": "brown", "n_texts": args.docs, "max_tokens": args.max_tokens}
        status, job = client.call("POST", "/api/analyses", request)
        assert status == 202, job
        analysis = follow(client, f"/api/analyses/{job['id']}", memory, "analysis")
        result["analysis"] = {k: v for k, v in analysis.items() if k != "job"} | {
            "status": analysis["job"]["status"], "error": analysis["job"].get("error")}
        if analysis["job"]["status"] != "succeeded":
            raise SystemExit(f"analysis {analysis['job']['status']}: {analysis['job'].get('error')}")
        a_id = job["id"]
        t = time.time()
        status, preview = client.call("POST", f"/api/analyses/{a_id}/preview", {"target_ratio": 0.2})
        result["preview"] = {"status": status, "s": round(time.time() - t, 2), "widths": preview.get("widths"),
                             "ratio_total": preview.get("ratio_total")}
        pruning = {"analysis_id": a_id, "target_ratio": 0.2, "calibration_texts": args.docs,
                   "calibration_tokens": args.max_tokens, "n_heldout": args.heldout}
        # a cancel while layer 1's greedy runs, with a small analysis queued behind it
        status, first = client.call("POST", "/api/prunings", pruning)
        assert status == 202, first
        queued = client.call("POST", "/api/analyses", {"model": "tiny-llama", "corpus": "pydoc", "n_texts": 4,
                                                       "max_tokens": 32, "n_components": 4})[1]
        run = follow(client, f"/api/prunings/{first['id']}", memory, "cancelled pruning",
                     until=lambda j: j.get("stage") == "select" and str(j.get("message")).startswith("layer "))
        cancelled_at = time.monotonic()
        status, cancelled = client.call("DELETE", f"/api/prunings/{first['id']}")
        started = follow(client, f"/api/analyses/{queued['id']}", memory, "queued analysis",
                         until=lambda j: j.get("status") in ("running", "succeeded"), timeout=600)
        freed_s = time.monotonic() - cancelled_at
        follow(client, f"/api/analyses/{queued['id']}", memory, "queued analysis", timeout=600)
        result["cancel"] = {"trail_before": run["trail"], "delete_status": status,
                            "status_after": client.call("GET", f"/api/prunings/{first['id']}")[1]["status"],
                            "queued_job_started_after_s": round(freed_s, 2),
                            "queued_job_status": started["job"]["status"],
                            "job_folder_left": (home / "data").exists() and any(
                                first["id"] in str(p) for p in (home / "data").rglob("*"))}
        status, second = client.call("POST", "/api/prunings", pruning)
        assert status == 202, second
        full = follow(client, f"/api/prunings/{second['id']}", memory, "pruning")
        res = full["job"].get("result") or {}
        result["pruning"] = {"status": full["job"]["status"], "error": full["job"].get("error"),
                             "wall_s": full["wall_s"], "trail": full["trail"],
                             "result_keys": sorted(res), "evaluation": res.get("evaluation")}
        result["worker_peak_rss"] = memory.peaks
        result["loadavg_end"] = os.getloadavg()
        memory.stop()
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(summarize(result), indent=1, default=str))
        tmp.replace(args.out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("analysis",)}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
