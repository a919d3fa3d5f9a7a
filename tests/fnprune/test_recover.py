"""Recovery by distillation (fnprune.pruning.recover) and its place in the one recipe."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from prune_helpers import documents, tiny_model, tokenizer

from fnprune.cli import main
from fnprune.errors import ConfigError
from fnprune.models.mlp import find_mlps
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.recover import distill, mlp_parameters
from fnprune.pruning.spec import PruningSpec
from fnprune.tokens import encode_documents, padded_batches


def _kl_to(teacher, student, docs, tok) -> float:
    """Mean KL(teacher || student) per real token of ``docs`` (what recovery minimises)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask in padded_batches(encode_documents(tok, docs, 64), 4):
            real = mask.reshape(-1).bool()
            t = torch.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits.reshape(-1, 258)[real], -1)
            s = torch.log_softmax(student(input_ids=ids, attention_mask=mask).logits.reshape(-1, 258)[real], -1)
            total += float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="sum"))
            n += int(real.sum())
    return total / n


def _pruned(ratio: float = 0.3, **spec):
    dense = tiny_model("llama", width=32, initializer_range=0.3)
    pruned = copy.deepcopy(dense)
    cal = Calibration(tokenizer(), documents(12), 64)
    outcome = prune_with_networks(pruned, None, PruningSpec(method="obs", target_ratio=ratio, protected_layers=(),
                                                            **spec), cal)
    return dense, pruned, cal, outcome


def test_distill_moves_only_the_mlp_weights_toward_the_teacher():
    dense, pruned, cal, _ = _pruned()
    teacher_state = {k: v.clone() for k, v in dense.state_dict().items()}
    student = copy.deepcopy(pruned)
    mlp = {id(p) for p in mlp_parameters(student)}
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    docs = documents(12)
    kl_before = _kl_to(dense, student, docs, cal.tokenizer)
    rec = distill(student, dense, cal.tokenizer, docs, epochs=8, lr=1e-2, max_tokens=64)
    kl_after = _kl_to(dense, student, docs, cal.tokenizer)
    assert kl_before > 1e-4
    assert kl_after < 0.85 * kl_before, (kl_before, kl_after)  # the objective falls, on the text trained on
    for name, p in student.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (id(p) in mlp), name  # MLP weights move, nothing else does
        assert p.requires_grad == flags[name] and p.grad is None
    assert all(torch.equal(v, teacher_state[k]) for k, v in dense.state_dict().items())  # the teacher is untouched
    assert rec.steps == 8 * math.ceil(12 / 4) and rec.documents == 12 and rec.epochs == 8
    assert rec.kl_last < rec.kl_first
    assert [a.width for a in find_mlps(student)] == [a.width for a in find_mlps(pruned)]


def test_distill_is_reproducible_from_its_random_state():
    dense, pruned, cal, _ = _pruned()
    runs = []
    for seed in (0, 0, 1):
        student = copy.deepcopy(pruned)
        distill(student, dense, cal.tokenizer, documents(12), epochs=1, lr=1e-3, max_tokens=64, random_state=seed)
        runs.append(torch.cat([p.detach().reshape(-1) for p in mlp_parameters(student)]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])  # another order of the batches


@pytest.mark.parametrize("kwargs, field", [({"epochs": 0, "lr": 1e-4}, "recover_epochs"),
                                           ({"epochs": 1, "lr": 0.0}, "recover_lr"),
                                           ({"epochs": 1, "lr": float("nan")}, "recover_lr")])
def test_distill_refuses_settings_that_train_nothing(kwargs, field):
    model = tiny_model("llama")
    with pytest.raises(ConfigError) as err:
        distill(model, model, tokenizer(), documents(2), **kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("epochs, lr, field", [(-1, 1e-4, "recover_epochs"), (21, 1e-4, "recover_epochs"),
                                               (True, 1e-4, "recover_epochs"), (1.5, 1e-4, "recover_epochs"),
                                               (1, 0.0, "recover_lr"), (1, 1.0, "recover_lr"),
                                               (1, float("inf"), "recover_lr"), (1, True, "recover_lr")])
def test_spec_refuses_bad_recovery_settings(epochs, lr, field):
    with pytest.raises(ConfigError) as err:
        PruningSpec(recover_epochs=epochs, recover_lr=lr).validated(have_networks=False)
    assert err.value.field == field


def test_recipe_recovers_and_records_it():
    dense, plain, cal, off = _pruned()
    _, recovered, _, on = _pruned(recover_epochs=4, recover_lr=1e-2)
    assert off.recovery is None and off.info()["recovery"] is None
    assert on.keep_digest == off.keep_digest  # recovery changes weights, never the kept neurons
    info = on.info()
    assert info["recovery"]["epochs"] == 4 and info["recovery"]["lr"] == 1e-2 and info["recovery"]["steps"] == 12
    assert info["spec"]["recover_epochs"] == 4
    docs = documents(12)
    assert _kl_to(dense, recovered, docs, cal.tokenizer) < 0.9 * _kl_to(dense, plain, docs, cal.tokenizer)


def test_recovery_without_calibration_is_refused_before_the_model_is_touched():
    model = tiny_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="recovery") as err:
        prune_with_networks(model, None, PruningSpec(method="magnitude", repair="none", target_ratio=0.1,
                                                     recover_epochs=1))
    assert err.value.field == "recover_epochs"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_cli_prune_recovers_and_saves_the_record(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--texts", "6", "--max-tokens", "32",
                 "--components", "4", "--n-init", "2", "--out", str(run)]) == 0
    out = tmp_path / "m"
    assert main(["prune", str(run), "--target-ratio", "0.2", "--calib-docs", "6", "--max-tokens", "32",
                 "--recover-epochs", "2", "--recover-lr", "0.001", "--fidelity", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recovery by distillation: 2 epoch(s) over 6 documents (4 steps, learning rate 0.001)" in text
    saved = json.loads((out / "pruning.json").read_text())
    assert saved["recovery"]["steps"] == 4 and saved["spec"]["recover_lr"] == 0.001


def test_cli_refuses_bad_recovery_flags_in_one_line(tmp_path, capsys):
    capsys.readouterr()
    assert main(["prune", str(tmp_path), "--recover-epochs", "-1", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recover_epochs must be a whole number from 0 to 20" in err[0], err


def test_compare_refuses_bad_recovery_before_loading_a_model(monkeypatch):
    import fnprune.models.loading
    from fnprune.evaluation.compare import compare

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the request was refused")

    monkeypatch.setattr(fnprune.models.loading, "load_model", refuse)
    with pytest.raises(ConfigError) as err:
        compare("tiny-llama", "pydoc", "0.2", "obs", None, recover_lr=2.0)
    assert err.value.field == "recover_lr"


def test_compare_recovers_every_row_and_says_so(tmp_path):
    from fnprune.evaluation.compare import compare

    model = tiny_model("llama", width=32, initializer_range=0.3)
    kwargs = dict(model=model, tokenizer=tokenizer(), docs=documents(30), protected_layers=[0], max_tokens=64,
                  windows=(32,), repairs="lstsq", fidelity=None, n_calib=12, reference=None)
    plain = compare("tiny", "test", [0.2], ["obs"], None, **kwargs)
    result = compare("tiny", "test", [0.2], ["obs"], tmp_path / "report", recover_epochs=3, recover_lr=1e-2, **kwargs)
    row, before = result["rows"][1], plain["rows"][1]
    assert row["recovery"]["epochs"] == 3 and row["recovery"]["steps"] == 9 and before["recovery"] is None
    assert row["keep_digest"] == before["keep_digest"]
    assert row["ppl"]["test"]["32"]["ppl"] != before["ppl"]["test"]["32"]["ppl"]  # the recovered model is scored
    assert result["recovery"] == {"epochs": 3, "lr": 1e-2} and plain["recovery"] is None
    assert "3 epoch(s) of recovery by distillation" in (tmp_path / "report" / "report.md").read_text()
