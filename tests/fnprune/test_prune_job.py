"""``prune_job``: what a pruning job holds in memory while it runs (issue 21 item 5)."""

import copy
import gc

import pytest
from torch import nn

import fnprune.pruning.job as job_module
from fnprune.analysis.networks import FunctionalNetworks
from fnprune.cli import main
from fnprune.pruning.job import PruneJob, evaluate_for_job, prune_job
from fnprune.pruning.spec import PruningSpec


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    run = tmp_path_factory.mktemp("job") / "run"
    assert main(["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--texts", "8", "--max-tokens", "48",
                 "--components", "6", "--n-init", "2", "--out", str(run)]) == 0
    return FunctionalNetworks.load(run)


def _run(networks, tmp_path, monkeypatch, **job_fields):
    copies, stages = [], []
    real_deepcopy = copy.deepcopy

    def counting_deepcopy(x, *args, **kwargs):
        if isinstance(x, nn.Module):
            copies.append(type(x).__name__)
        return real_deepcopy(x, *args, **kwargs)

    monkeypatch.setattr(job_module.copy, "deepcopy", counting_deepcopy)
    job = PruneJob(model_spec="tiny-llama", corpus="pydoc", out=tmp_path / "model", n_calibration=6,
                   calibration_tokens=48, n_heldout=2, **job_fields)
    done = prune_job(networks, PruningSpec(target_ratio=0.1), job,
                     lambda stage, fraction, message="": stages.append(stage))
    return done, copies, stages


def test_an_evaluation_alone_measures_the_dense_model_first_and_holds_no_copy(networks, tmp_path, monkeypatch):
    done, copies, stages = _run(networks, tmp_path, monkeypatch, evaluate=True)
    assert copies == []                                              # never two models' weights
    assert stages.index("evaluate dense") < stages.index("calibrate") < stages.index("evaluate pruned")
    from fnprune.corpus import load_split
    from fnprune.models.loading import load_model

    dense, tokenizer = load_model("tiny-llama", device="cpu")        # seeded: the same dense model
    heldout = load_split("pydoc", 6, 2)[1]
    expected = evaluate_for_job(dense, tokenizer, heldout)["perplexity"]
    assert {w: p["ppl"] for w, p in done.dense_eval["perplexity"].items()} == \
        pytest.approx({w: p["ppl"] for w, p in expected.items()}, rel=1e-6)
    assert done.dense_param_bytes == sum(p.numel() * p.element_size() for p in dense.parameters())
    assert done.pruned_eval["perplexity"]["512"]["ppl"] != done.dense_eval["perplexity"]["512"]["ppl"]


def test_fidelity_reads_the_dense_model_before_the_pruning_and_holds_no_copy(networks, tmp_path, monkeypatch):
    done, copies, stages = _run(networks, tmp_path, monkeypatch, evaluate=True, fidelity=2)
    assert copies == [] and len(done.fidelity) == 2
    assert stages.index("evaluate dense") < stages.index("fidelity") < stages.index("calibrate")
    assert stages.index("calibrate") < len(stages) - 1 - stages[::-1].index("fidelity") < stages.index("save")


def test_a_small_model_compared_after_the_pruning_keeps_one_dense_copy(networks, tmp_path, monkeypatch):
    done, copies, stages = _run(networks, tmp_path, monkeypatch, unrepaired=True, baselines=("magnitude",))
    # the one copy, then a deep copy of it per comparison (the unrepaired row and both baseline allocations)
    assert copies == ["LlamaForCausalLM"] * 4 and [r["name"] for r in done.comparisons] == [
        "without repair", "magnitude (own)", "magnitude (networks)"]


def _protection_measure(networks):
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.job import protection_comparison

    def measure(models, tokenizer, done, progress):
        before = (PruningSpec(target_ratio=0.2), Calibration(tokenizer, done.calibration, 48, 4))
        return protection_comparison(models, tokenizer, networks, done.heldout, done.heldout[:1], dense_a=1.0,
                                     pruned_a=done.pruned_eval["perplexity"]["512"]["ppl"], unconstrained=before,
                                     progress=progress)
    return measure


def _live_models(cls) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is cls)


def test_a_large_model_is_reloaded_and_never_alive_twice(networks, tmp_path, monkeypatch):
    """Above ``dense_copy_max_bytes`` the comparisons reload the dense model: at every load and every new
    stage at most one model is alive, and every figure equals the run that kept a copy."""
    from fnprune.models.loading import load_model

    fields = dict(evaluate=True, fidelity=2, unrepaired=True, baselines=("magnitude",),
                  measure=_protection_measure(networks))
    kept, copies, _ = _run(networks, tmp_path / "copy", monkeypatch, **fields)
    assert copies, "the small model's run keeps a copy"

    cls = type(load_model("tiny-llama")[0])
    alive, loads = [], []

    def counting_load(spec):
        loads.append(spec)
        alive.append(_live_models(cls))       # before the new one: nothing else may be alive
        return load_model(spec)

    seen = set()

    def on_stage(stage, fraction, message=""):
        if stage not in seen:
            seen.add(stage)
            alive.append(_live_models(cls) - 1)

    job = PruneJob(model_spec="tiny-llama", corpus="pydoc", out=tmp_path / "reload" / "model", n_calibration=6,
                   calibration_tokens=48, n_heldout=2, load_model=counting_load, dense_copy_max_bytes=0, **fields)
    reloaded = prune_job(networks, PruningSpec(target_ratio=0.1), job, on_stage)
    # the job's own load, the protection's dense model, then one per comparison row
    assert len(loads) == 1 + 1 + 3
    assert max(alive) == 0 and {"fidelity", "protect", "baselines"} <= seen
    assert reloaded.measured == kept.measured and reloaded.measured["calibration"]["unconstrained"] > 0
    assert reloaded.comparisons == kept.comparisons and reloaded.baseline_budget == kept.baseline_budget
    assert reloaded.fidelity == kept.fidelity
    assert reloaded.dense_eval["perplexity"] == kept.dense_eval["perplexity"]


def test_the_pruned_model_must_be_asked_for_before_a_dense_one(networks):
    from fnprune.models.loading import load_model
    from fnprune.pruning.job import JobModels

    model = load_model("tiny-llama")[0]
    models = JobModels(model, lambda: load_model("tiny-llama")[0], copy_max_bytes=0)
    models.hold_pruned(model)
    assert models.pruned() is model and not models.copied
    del model
    models.dense()
    with pytest.raises(RuntimeError, match="released"):
        models.pruned()
