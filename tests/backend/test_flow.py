"""End to end through a real worker process: analysis -> networks -> preview -> prune -> model zip."""

from __future__ import annotations

import gzip
import io
import json
import time
import zipfile

import numpy as np
import pytest
from backend_helpers import WorkerProcess, wait_for
from fastapi.testclient import TestClient

from backend.app.main import create_app
from backend.app.services import encoding
from backend.app.services.jobs import WORKER_STOPPED

ANALYSIS = {"model": "tiny-llama", "corpus": "pydoc", "n_texts": 12, "max_tokens": 64, "n_components": 6,
            "mode": "per-layer", "n_runs": 1, "seed": 0}


def sse_events(client: TestClient, url: str) -> list[dict]:
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


@pytest.mark.slow
def test_analysis_to_pruned_model(client, settings, worker, tmp_path):
    assert client.get("/api/health").json()["workers"] >= 1
    created = client.post("/api/analyses", json=ANALYSIS)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    events = sse_events(client, f"/api/analyses/{job_id}/events")
    assert events[-1]["status"] == "succeeded", events[-1]
    assert any(e["status"] == "running" for e in events)
    assert len({(e["stage"], e["progress"]) for e in events}) >= 3  # progress was reported along the way
    job = client.get(f"/api/analyses/{job_id}").json()
    assert job["result"]["n_layers"] == 4 and job["result"]["width"] == 64
    assert job["started_at"] and job["finished_at"] and job["error"] is None

    # -- networks, one map, overview --------------------------------------------------------------
    table = client.get(f"/api/analyses/{job_id}/networks").json()
    assert table["n_layers"] == 4 and table["width"] == 64 and table["components"]
    first = table["components"][0]
    assert {"id", "layer", "n_key", "peak_z", "stability", "label"} <= set(first)
    k = first["id"]
    all_ids = [c["id"] for c in table["components"]]
    detail = client.get(f"/api/analyses/{job_id}/networks/{k}", params={"threshold": 2.5}).json()
    assert detail["threshold"] == 2.5 and detail["label"] == "unknown"
    zmap = encoding.decode(detail["map"])
    assert zmap.shape == (len(detail["map"]["layers"]), len(detail["map"]["signals"]), 64)
    assert np.abs(zmap).max() > 0
    assert detail["map"]["grid"] == [8, 8]
    tc = detail["time_course"]
    assert len(tc["values"]) == len(tc["tokens"]) == len(tc["docs"]) > 0
    assert sum(detail["histogram"]["counts"]) == zmap.size
    assert client.get(f"/api/analyses/{job_id}/networks/999").status_code == 404
    overview = client.get(f"/api/analyses/{job_id}/overview").json()
    assert encoding.decode(overview["density"]).shape == (4, 64)
    assert encoding.decode(overview["max_z"]).shape == (4, 64)

    sparse = client.get(f"/api/analyses/{job_id}/maps", params={"threshold": 2.0}).json()
    offsets, index = encoding.decode(sparse["offsets"]), encoding.decode(sparse["index"])
    values = encoding.decode(sparse["values"])
    assert sparse["n_components"] == len(table["components"]) and len(offsets) == sparse["n_components"] + 1
    mine = slice(int(offsets[k]), int(offsets[k + 1]))
    strongest = np.abs(zmap).max(axis=1).reshape(-1)  # (n_map_layers * width,)
    assert set(index[mine].tolist()) == set(np.flatnonzero(strongest > 2.0 + 0.05).tolist()) | \
        (set(index[mine].tolist()) & set(np.flatnonzero(np.abs(strongest - 2.0) <= 0.05).tolist()))
    assert np.allclose(np.abs(values[mine]), strongest[index[mine]], atol=2 * detail["map"]["scale"] + 0.02)
    assert client.get(f"/api/analyses/{job_id}/maps", params={"threshold": 0.5}).status_code == 422

    # -- preview and bad previews on a finished analysis --------------------------------------------
    preview = client.post(f"/api/analyses/{job_id}/preview", json={"target_ratio": 0.05}).json()
    assert len(preview["widths"]) == 4 and preview["removed_params"] > 0
    assert 0 < preview["ratio_total"] < 1
    by_threshold = client.post(f"/api/analyses/{job_id}/preview", json={"threshold": 2.0, "networks": all_ids})
    assert by_threshold.status_code == 200, by_threshold.text
    for bad, field in [({"networks": [999]}, "networks"), ({"protected_layers": [17]}, "protected_layers"),
                       ({"target_ratio": 0.99}, None)]:
        response = client.post(f"/api/analyses/{job_id}/preview", json=bad)
        assert 400 <= response.status_code < 500 and response.json()["detail"], (bad, response.text)
        if field:
            assert response.json()["field"] == field

    # -- labels and downloads ---------------------------------------------------------------------------
    labels = client.put(f"/api/analyses/{job_id}/labels", json={"labels": {str(k): "signal"}})
    assert labels.status_code == 200 and labels.json()["labels"] == {str(k): "signal"}
    assert client.put(f"/api/analyses/{job_id}/labels", json={"labels": {"999": "noise"}}).status_code == 422
    assert client.get(f"/api/analyses/{job_id}/networks").json()["components"][0]["label"] == "signal"
    masks = client.get(f"/api/analyses/{job_id}/download/masks", params={"target_ratio": 0.05})
    assert masks.status_code == 200 and masks.json()["format"] == "fnprune-mask-1"
    nifti = client.get(f"/api/analyses/{job_id}/download/maps")
    assert nifti.status_code == 200 and gzip.decompress(nifti.content)[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")
    fix = client.get(f"/api/analyses/{job_id}/download/labels")
    assert fix.status_code == 200 and "signal" in fix.text.lower()
    report = client.get(f"/api/analyses/{job_id}/download/report")
    assert report.status_code == 200 and "<table>" in report.text
    assert client.get(f"/api/analyses/{job_id}/download/..%2Fjobs.db").status_code == 404

    # -- prune -----------------------------------------------------------------------------------------
    for bad, status, field in [({"target_ratio": 0.99}, 422, None), ({"heads": 1.5}, 422, "heads"),
                               ({"networks": [999]}, 422, "networks"), ({"protected_layers": [-1]}, 422, None)]:
        response = client.post("/api/prunings", json={"analysis_id": job_id, **bad})
        assert response.status_code == status and response.json()["detail"], (bad, response.text)
        if field:
            assert response.json()["field"] == field
    assert client.get("/api/prunings").json() == []  # nothing was queued by the bad requests
    # the tiny random model's maps are dense (few |z| > 3): choose the two most peaked networks of layers 1-2
    table = client.get(f"/api/analyses/{job_id}/networks").json()["components"]
    chosen = sorted(c["id"] for c in sorted((c for c in table if c["layer"] in (1, 2)), key=lambda c: -c["peak_z"])[:2])
    pruning = client.post("/api/prunings", json={"analysis_id": job_id, "target_ratio": 0.05, "networks": chosen,
                                                 "heads": 0.5, "baselines": ["magnitude"], "n_heldout": 2,
                                                 "calibration_texts": 12, "calibration_tokens": 64})
    assert pruning.status_code == 202, pruning.text
    p_id = pruning.json()["id"]
    p_events = sse_events(client, f"/api/prunings/{p_id}/events")
    done = p_events[-1]
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["dense"]["ppl"] > 0 and result["pruned"]["ppl"] > 0
    assert result["pruned"]["params"] < result["dense"]["params"]
    assert result["kv_heads"] == [2, 1, 1, 2]  # tiny-llama: 2 KV groups, layers 0 and 3 protected
    assert [b["method"] for b in result["baselines"]] == ["magnitude", "magnitude"]
    assert [c["id"] for c in result["chosen_networks"]] == chosen
    assert all(c["n_kept"] == c["n_key"] for c in result["chosen_networks"])
    assert [f["id"] for f in result["fidelity"]] == chosen and result["fidelity_scope"] == "chosen"
    assert result["calibration"] == {"texts": 12, "requested_texts": 12, "tokens_per_text": 64, "protected_texts": 0}
    assert [b["mlp_neurons_removed"] for b in result["baselines"]] == [
        sum(result["original_widths"]) - sum(result["widths"])] * 2  # the method's MLP budget, no heads
    assert result["repair"] == "lstsq" and result["repair_errors"]["error_repaired"] < result["repair_errors"]["error_pruned"]
    assert result["repair_comparison"]["unrepaired_repair"] == "none"  # obs without repair: it only selects
    assert result["dense_cached"] is False
    assert [g["genre"] for g in result["ppl_by_genre"]] == ["pydoc"] and result["ppl_by_genre"][0]["pruned"] > 0
    _cli_and_compare_keep_the_same_neurons(settings, job_id, chosen, result["keep_digest"], tmp_path)
    # a second pruning of the same model and held-out documents reuses the dense evaluation
    again = client.post("/api/prunings", json={"analysis_id": job_id, "target_ratio": 0.1, "repair": "none",
                                               "n_heldout": 2})
    second = sse_events(client, f"/api/prunings/{again.json()['id']}/events")[-1]
    assert second["status"] == "succeeded", second
    assert second["result"]["dense_cached"] is True and second["result"]["dense"] == result["dense"]
    assert "repair_comparison" not in second["result"]  # nothing to compare without the repair
    assert client.delete(f"/api/prunings/{again.json()['id']}").status_code == 409
    assert result["generations"] and "from_pretrained" in result["load_snippet"]
    assert client.delete(f"/api/prunings/{p_id}").status_code == 409  # finished

    archive = client.get(f"/api/prunings/{p_id}/download/model")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert "model/config.json" in zf.namelist()
        zf.extractall(tmp_path / "unzipped")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "unzipped" / "model",
                                                 trust_remote_code=result["architecture"] == "per-layer")
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert logits.shape[:2] == (1, 3) and torch.isfinite(logits).all()
    assert client.get(f"/api/prunings/{p_id}/download/report").status_code == 200
    assert client.get(f"/api/prunings/{p_id}/download/masks").status_code == 200
    assert client.get(f"/api/prunings/{p_id}/download/weights").status_code == 404

    # -- a new API instance on the same data dir sees the history ------------------------------------------
    with TestClient(create_app(settings)) as restarted:
        assert job_id in [j["id"] for j in restarted.get("/api/analyses").json()]
        assert p_id in [j["id"] for j in restarted.get("/api/prunings").json()]
        assert restarted.get(f"/api/analyses/{job_id}/networks/{k}").status_code == 200
        assert restarted.get(f"/api/prunings/{p_id}").json()["status"] == "succeeded"


def _cli_and_compare_keep_the_same_neurons(settings, analysis_id, chosen, worker_digest, tmp_path) -> None:
    """One recipe: `fnprune prune` and `fnprune compare` on the worker's inputs keep the very same neurons."""
    import argparse

    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.cli import pruning as cli_pruning
    from fnprune.corpus import load_corpus
    from fnprune.evaluation.compare import compare
    from fnprune.models.loading import load_model
    from fnprune.models.pruned_io import read_pruning_info
    from fnprune.options import DEFAULT_METHOD

    run_dir = settings.job_dir("analysis", analysis_id) / "run"
    parser = argparse.ArgumentParser()
    cli_pruning.add_subcommands(parser.add_subparsers())
    args = parser.parse_args(["prune", str(run_dir), "--target-ratio", "0.05", "--networks",
                              ",".join(map(str, chosen)), "--heads", "0.5", "--corpus", "pydoc", "--calib-docs", "12",
                              "--max-tokens", "64", "--fidelity", "0", "--quiet", "--out", str(tmp_path / "cli")])
    assert args.func(args) == 0
    assert read_pruning_info(tmp_path / "cli")["keep_digest"] == worker_digest
    model, tok = load_model("tiny-llama", device="cpu")
    rows = compare("tiny-llama", "pydoc", [0.05], [DEFAULT_METHOD], None, model=model, tokenizer=tok,
                   docs=load_corpus("pydoc", limit=20), fn=FunctionalNetworks.load(run_dir), networks=chosen,
                   n_calib=12, n_heldout=2, max_tokens=64, windows=(32,), repairs="lstsq", fidelity=None)["rows"]
    assert rows[1]["keep_digest"] == worker_digest


# Jobs long enough to cancel in a given stage: many tokens keep capture busy; many small decompositions
# (per layer and run) keep CanICA busy; one whole-model decomposition of 400 components is a single CanICA
# fit of over 10 s that reports no progress inside (only the worker's watchdog can stop it early).
LONG_IN = {"capture": {**ANALYSIS, "n_texts": 400, "max_tokens": 1024},
           "ica": {**ANALYSIS, "n_texts": 60, "max_tokens": 512, "n_components": 24, "n_runs": 20},
           "ica-fit": {**ANALYSIS, "mode": "whole-model", "n_texts": 60, "max_tokens": 256, "n_components": 400}}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["capture", "ica", "ica-fit"])
def test_cancel_running_job_frees_the_worker(client, settings, worker, stage):
    """Cancelling a running analysis stops its work within seconds: the next queued job starts right away."""
    job = client.post("/api/analyses", json=LONG_IN[stage]).json()
    follow = client.post("/api/analyses", json=ANALYSIS).json()  # queued behind it
    current = wait_for(client, f"/api/analyses/{job['id']}", statuses=("running", "succeeded", "failed"))
    # "ica-fit": capture reported done (or CanICA started, not finished), so the one fit is running
    reached = (lambda j: (j["stage"] == "capture" and j["progress"] >= 1) or (j["stage"] == "ica" and j["progress"] < 1)
               ) if stage == "ica-fit" else (lambda j: j["stage"] == stage)
    deadline = time.time() + 120
    while current["status"] == "running" and not reached(current) and time.time() < deadline:
        time.sleep(0.05)
        current = client.get(f"/api/analyses/{job['id']}").json()
    assert current["status"] == "running" and reached(current), current  # the job must be long enough
    if stage == "ica-fit":
        time.sleep(2.0)  # well inside the fit
    cancelled_at = time.monotonic()
    cancelled = client.delete(f"/api/analyses/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    started = wait_for(client, f"/api/analyses/{follow['id']}", statuses=("running", "succeeded", "failed"),
                       timeout=30)
    freed_after = time.monotonic() - cancelled_at
    assert started["status"] != "failed", started
    assert freed_after < 5, f"the worker was busy {freed_after:.1f} s after the cancel"
    assert client.get(f"/api/analyses/{job['id']}").json()["status"] == "cancelled"
    # the worker is still alive and finishes the next job; the cancelled job left nothing behind
    assert wait_for(client, f"/api/analyses/{follow['id']}")["status"] == "succeeded"
    assert not settings.job_dir("analysis", job["id"]).exists()


@pytest.mark.slow
def test_killed_worker_fails_the_job(client, settings, tmp_path):
    settings.ensure_dirs()
    proc = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        job = client.post("/api/analyses", json={**ANALYSIS, "n_texts": 40, "max_tokens": 256}).json()
        running = wait_for(client, f"/api/analyses/{job['id']}", statuses=("running", "succeeded", "failed"))
        assert running["status"] == "running"
        proc.kill()
        failed = client.get(f"/api/analyses/{job['id']}").json()
        assert failed["status"] == "failed" and failed["error"] == WORKER_STOPPED
        assert client.get("/api/health").status_code == 200
        assert not (settings.job_dir("analysis", job["id"]) / "run").exists()  # no half-written run dir
        # a new worker takes queued work again
        queued = client.post("/api/analyses", json=ANALYSIS).json()
        proc = WorkerProcess(settings, tmp_path / "worker2.log").start()
        assert wait_for(client, f"/api/analyses/{queued['id']}")["status"] == "succeeded"
        assert client.get(f"/api/analyses/{job['id']}").json()["status"] == "failed"
        leftovers = list(settings.job_dir("analysis", job["id"]).glob("*"))
        assert leftovers == [], leftovers  # the new worker removed the dead job's scratch files
    finally:
        proc.stop()


@pytest.mark.slow
def test_local_model_directory_reports_layers_and_cancels_mid_layer(tmp_path):
    """Issue 21 item 5 at test size: a model directory inside FNPRUNE_MODEL_DIRS goes through analysis
    and pruning in a real worker; the pruning's long stages report which layer they are on, and a
    cancel while a layer's exact-OBS greedy runs frees the worker within seconds."""
    from fastapi.testclient import TestClient

    from backend.app.core.config import Settings
    from fnprune.models.loading import tiny_llama

    model_dir = tmp_path / "models" / "wide-llama"  # 3 layers x 3072 MLP neurons: ~10 s of greedy per layer
    model, tokenizer = tiny_llama(seed=1, n_layers=3, width=3072)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    settings = Settings(HOME=tmp_path / "home", DATA_DIR=tmp_path / "data", DEVICE="cpu", HEARTBEAT_TIMEOUT_S=30,
                        SSE_POLL_S=0.05, MODEL_DIRS=[tmp_path / "models"])
    settings.ensure_dirs()
    proc = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with TestClient(create_app(settings)) as client:
            analysis = client.post("/api/analyses", json={**ANALYSIS, "model": str(model_dir), "n_texts": 8})
            assert analysis.status_code == 202, analysis.text
            a_id = analysis.json()["id"]
            assert wait_for(client, f"/api/analyses/{a_id}", timeout=300)["status"] == "succeeded"
            request = {"analysis_id": a_id, "target_ratio": 0.3, "protected_layers": [], "evaluate": False,
                       "calibration_texts": 8, "calibration_tokens": 64}
            job = client.post("/api/prunings", json=request).json()
            follow = client.post("/api/analyses", json=ANALYSIS).json()  # queued behind it
            seen: list[tuple[str, str]] = []
            deadline = time.time() + 300
            while time.time() < deadline:
                current = client.get(f"/api/prunings/{job['id']}").json()
                if current["status"] != "running" and current["status"] != "queued":
                    break
                if current["status"] == "running" and (current["stage"], current["message"]) not in seen:
                    seen.append((current["stage"], current["message"]))
                if any(m == "layer 0" for s, m in seen if s == "select"):
                    break  # layer 0's greedy is done, layer 1's is running
                time.sleep(0.02)
            assert current["status"] == "running", (current, seen)
            assert ("select", "layer 0") in seen, seen
            cancelled_at = time.monotonic()
            assert client.delete(f"/api/prunings/{job['id']}").json()["status"] == "cancelled"
            started = wait_for(client, f"/api/analyses/{follow['id']}", statuses=("running", "succeeded", "failed"),
                               timeout=30)
            freed_after = time.monotonic() - cancelled_at
            assert started["status"] != "failed", started
            assert freed_after < 5, f"the worker was busy {freed_after:.1f} s after the cancel"
            assert wait_for(client, f"/api/analyses/{follow['id']}")["status"] == "succeeded"
            assert client.get(f"/api/prunings/{job['id']}").json()["status"] == "cancelled"
            assert not settings.job_dir("pruning", job["id"]).exists()
    finally:
        proc.stop()
