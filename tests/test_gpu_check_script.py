"""bench/gpu_check.py is the one script that runs fnprune's CUDA paths; CI has no GPU, so run its
steps on the CPU at a small size to keep the script itself working."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_as_a_smoke_test(tmp_path):
    # the pydoc corpus ships with Python: the smoke test runs on every machine, never skips
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--allow-cpu", "--corpus", "pydoc",
                           "--texts", "4",
                           "--max-tokens", "128", "--components", "16", "--check-layers", "5", "--heldout-docs", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["failures"] == []
    assert result["analyze"]["n_tokens"] == 4 * 128 and result["analyze"]["n_components"] == 30 * 16
    assert result["canica_device_vs_cpu"][0]["jaccard_device_vs_cpu"] == 1.0   # same device: same result
    assert result["whole_model"]["subspace"] == "randomized"
    assert result["prune"]["rc"] == 0 and result["prune"]["pruned_ppl"] > 0
    streamed = result["streamed_obs_device_vs_cpu"]   # same device twice: the same pruning
    assert streamed["min_layer_keep_jaccard"] == 1.0 and streamed["ppl_change"] == 0.0
    assert any(w < 1536 for w in streamed["cpu"]["widths"])


def test_gpu_check_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
