"""``prune_job``: what a pruning job holds in memory while it runs (issue 21 item 5)."""

import copy

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


def test_a_comparison_after_the_pruning_keeps_one_dense_copy(networks, tmp_path, monkeypatch):
    done, copies, stages = _run(networks, tmp_path, monkeypatch, evaluate=True, fidelity=2)
    assert len(copies) == 1 and done.fidelity is not None
    assert stages.index("calibrate") < stages.index("evaluate dense")
