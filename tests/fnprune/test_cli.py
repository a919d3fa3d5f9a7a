"""The fnprune command end to end on the tiny model; errors are one line, no traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fnprune.cli import build_parser, main
from fnprune.cli._args import int_list
from fnprune.errors import ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--texts", "6", "--max-tokens", "64",
                 "--components", "4", "--n-init", "2", "--out", str(out)]) == 0
    return out


def test_analyze_networks_mask_export(run_dir, tmp_path, capsys):
    assert (run_dir / "run.json").exists()
    capsys.readouterr()
    assert main(["networks", str(run_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 16
    assert main(["mask", str(run_dir), "--target-ratio", "0.1", "--json", "--out", str(tmp_path / "m.json")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["ratio_total"] >= 0.1 and (tmp_path / "m.json").exists()
    assert main(["mask", str(run_dir), "--target-ratio", "0.1", "--networks", "4,5,6,7,8,9,10,11", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["networks"] == list(range(4, 12))
    assert main(["export", str(run_dir), "--nifti", str(tmp_path / "maps.nii.gz"), "--labels",
                 str(tmp_path / "l.txt")]) == 0
    assert (tmp_path / "maps.nii.gz").stat().st_size > 0


def test_analyze_with_a_seed_check(tmp_path, capsys):
    """--check-seeds 2: every network carries in how many of the 2 other seeds it came back, the run
    directory keeps it, and `networks` prints the per-layer seed check."""
    out = tmp_path / "run"
    assert main(["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--texts", "6", "--max-tokens", "64",
                 "--components", "4", "--n-init", "2", "--layers", "1,2", "--check-seeds", "2",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["networks", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(r["reproduced"] in (0, 1, 2) for r in rows)
    from fnprune.analysis.networks import FunctionalNetworks

    fn = FunctionalNetworks.load(out)
    assert fn.info["check_seeds"] == 2 and fn.reproduced.tolist() == [r["reproduced"] for r in rows]
    units = fn.info["unit_stability"]
    assert [u["layer"] for u in units] == [1, 2]
    for u in units:
        s = u["seeds"]
        if u["n_key"]:
            assert s["n_seeds"] == 3 and s["budget"] == u["n_key"]
            assert abs(s["key_share_reproducible"] + s["key_share_other_networks"] + s["key_share_unresolved"] - 1) < 1e-9
        else:
            assert s is None
    assert main(["networks", str(out)]) == 0
    text = capsys.readouterr().out
    assert "seed check (3 seeds" in text or all(u["seeds"] is None for u in units)


def test_every_subcommand_is_registered():
    """No subcommand may silently disappear (an import error is an error, not a shorter command list)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == ["ablate", "analyze", "compare", "evaluate", "export", "export-gguf", "fetch-data", "mask",
                                   "networks", "prune", "serve"]
    for name, parser in sub.choices.items():
        assert callable(parser.get_default("func")), name


def test_int_list_is_one_rule():
    assert int_list("1, 5,9", "--networks") == [1, 5, 9]
    assert int_list(None, "--networks") is None and int_list(" ", "--networks") is None
    assert int_list("all", "--layers", allow_all=True) is None
    with pytest.raises(ConfigError, match="--networks must be comma-separated integers, got 'all'"):
        int_list("all", "--networks")
    with pytest.raises(ConfigError, match="--windows must be comma-separated integers"):
        int_list("512,x", "--windows")


@pytest.mark.parametrize("argv,message", [
    (["mask", "RUN", "--target-ratio", "1.5"], "target_ratio must be between 0 and 1"),
    (["mask", "RUN", "--networks", "1,x"], "--networks must be comma-separated integers"),
    (["prune", "RUN", "--networks", "1,x", "--out", "OUT"], "--networks must be comma-separated integers"),
    (["compare", "--windows", "512,x", "--out", "OUT"], "--windows must be comma-separated integers"),
    (["mask", "/nonexistent/run"], "not an fnprune run directory"),
    (["analyze", "--model", "/no/such/model", "--corpus", "pydoc", "--out", "OUT"], "does not exist"),
    (["analyze", "--model", "tiny-llama", "--corpus", "nonsense", "--out", "OUT"], "unknown corpus"),
    (["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--texts", "2", "--max-tokens", "16",
      "--components", "500", "--out", "OUT"], "n_components"),
    (["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--check-seeds", "-1", "--out", "OUT"], "--check-seeds"),
    (["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--check-seeds", "2", "--mode", "whole-model",
      "--out", "OUT"], "needs --mode per-layer"),
])
def test_errors_are_one_line(run_dir, tmp_path, argv, message):
    argv = [str(run_dir) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "fnprune", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


@pytest.mark.slow
def test_default_model_analyze_is_reproducible(tmp_path):
    """The real default model on Brown (pydoc when the corpus is absent); same seed, same masks."""
    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.corpus import brown_dir

    corpus = "brown" if (brown_dir() / "cats.txt").exists() else "pydoc"
    args = ["analyze", "--model", "smollm2-135m", "--corpus", corpus, "--texts", "3", "--max-tokens", "96",
            "--components", "12", "--n-init", "3", "--layers", "4,5", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = FunctionalNetworks.load(tmp_path / "a"), FunctionalNetworks.load(tmp_path / "b")
    assert a.maps.shape == (24, 1, 2, 1536) and a.layers == [4, 5]
    np.testing.assert_array_equal(a.maps, b.maps)
    protected = [0, 1, 2, 3, 6] + list(range(7, 30))
    mask_a = a.key_mask(target_ratio=0.02, protected_layers=protected)
    assert (mask_a == b.key_mask(target_ratio=0.02, protected_layers=protected)).all()
    assert mask_a[4:6].sum() < 2 * 1536 and mask_a[[0, 29]].all()
