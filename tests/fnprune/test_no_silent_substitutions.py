"""Nothing the user asked for is silently replaced by something else (issue 19, item 3): each case is
honoured, refused before any model work with a one-line reason naming the field (CLI: exit 2), or
announced in the output and recorded in ``pruning.json``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from prune_helpers import FakeNetworks, documents, sample_ids, tiny_model, tokenizer

from fnprune.cli import build_parser, main
from fnprune.cli.pruning import spec_from_args
from fnprune.corpus import load_corpus
from fnprune.errors import ConfigError, CorpusError
from fnprune.models.pruned_io import load_pruned, read_pruning_info, save_pruned
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.spec import PruningSpec, default_target


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("subst") / "run"
    assert main(["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--texts", "6", "--max-tokens", "32",
                 "--components", "4", "--n-init", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: refusals must come before model work."""
    import fnprune.models.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the request was refused")

    monkeypatch.setattr(fnprune.models.loading, "load_model", refuse)


def _refused(capsys, argv: list[str], message: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def _args(*flags: str):
    return build_parser().parse_args(["prune", "RUN", "--out", "OUT", *flags])


# -- a. uniform allocation and protected layers -----------------------------------------------------
def test_uniform_refuses_explicit_protected_layers(run_dir, tmp_path, capsys, no_model):
    with pytest.raises(ConfigError, match="uniform allocation prunes every layer") as err:
        PruningSpec(allocation="uniform", protected_layers=(1,)).validated(have_networks=True)
    assert err.value.field == "protected_layers"
    PruningSpec(allocation="uniform", protected_layers=()).validated(have_networks=True)  # none protected: fine
    _refused(capsys, ["prune", str(run_dir), "--uniform", "--protected", "1", "--out", str(tmp_path / "m")],
             "protected_layers: a uniform allocation")
    # the preview's plan (and `fnprune mask`) is the same rule
    fn = FakeNetworks(4, 24, 48, 10_000)
    with pytest.raises(ConfigError, match="uniform allocation") as err:
        fn.plan(target_ratio=0.1, protected_layers=[0], uniform=True)
    assert err.value.field == "protected_layers"
    _refused(capsys, ["mask", str(run_dir), "--target-ratio", "0.1", "--uniform", "--protected", "1"],
             "uniform allocation")


def test_uniform_announces_that_no_layer_is_protected(tmp_path):
    model, tok = tiny_model("llama", width=24), tokenizer()
    out = prune_with_networks(model, None, PruningSpec(method="magnitude", allocation="uniform", repair="none",
                                                        target_ratio=0.1))
    assert len(set(out.widths)) == 1 and out.protected_layers == []
    assert any("no layer is protected" in n and "[0, 3]" in n for n in out.notes), out.notes
    save_pruned(model, tok, tmp_path / "m", out.info())
    assert read_pruning_info(tmp_path / "m")["notes"] == out.notes
    own = prune_with_networks(tiny_model("llama", width=24), None,
                              PruningSpec(method="magnitude", repair="none", target_ratio=0.1))
    assert own.notes == [] and own.protected_layers == [0, 3]


# -- b. --threshold and --target-ratio ----------------------------------------------------------------
def test_threshold_and_target_ratio_together_are_refused(capsys, tmp_path, no_model):
    with pytest.raises(ConfigError, match="--threshold and --target-ratio"):
        spec_from_args(_args("--threshold", "3", "--target-ratio", "0.2"))  # 0.2 = the default, given explicitly
    assert spec_from_args(_args("--threshold", "3", "--method", "fn")).target_ratio is None
    assert spec_from_args(_args("--target-ratio", "0.3")).target_ratio == 0.3
    assert spec_from_args(_args()).target_ratio == 0.2 and spec_from_args(_args()).threshold is None
    _refused(capsys, ["prune", str(tmp_path / "run"), "--threshold", "3", "--target-ratio", "0.3", "--out",
                      str(tmp_path / "m")], "--threshold and --target-ratio")


# -- c. --bias / --no-repair / --repair -----------------------------------------------------------------
@pytest.mark.parametrize("flags", [("--bias", "--repair", "lstsq"), ("--no-repair", "--repair", "lstsq"),
                                   ("--bias", "--repair", "none"), ("--bias", "--no-repair")])
def test_conflicting_repairs_are_refused(flags, capsys, tmp_path, no_model):
    with pytest.raises(ConfigError, match="ask for different repairs"):
        spec_from_args(_args(*flags))
    _refused(capsys, ["prune", str(tmp_path / "run"), *flags, "--out", str(tmp_path / "m")], "different repairs")


@pytest.mark.parametrize("flags, repair", [((), "lstsq"), (("--bias",), "bias"), (("--bias", "--repair", "bias"), "bias"),
                                           (("--no-repair",), "none"), (("--no-repair", "--method", "flap"), "bias"),
                                           (("--no-repair", "--bias", "--method", "flap"), "bias"),
                                           (("--repair", "none"), "none")])
def test_agreeing_repair_flags(flags, repair):
    assert spec_from_args(_args(*flags)).repair == repair


# -- d. genres ---------------------------------------------------------------------------------------------
def test_genres_a_corpus_lacks_are_refused(tmp_path, capsys, no_model):
    with pytest.raises(CorpusError, match="'news' not in corpus 'pydoc'") as err:
        load_corpus("pydoc", genres=["news"])
    assert err.value.field == "genres"
    assert len(load_corpus("pydoc", genres=["pydoc"], limit=5)) == 5
    plain = tmp_path / "plain.txt"
    plain.write_text("one\n\ntwo\n")
    with pytest.raises(CorpusError, match="has no genre labels"):
        load_corpus(str(plain), genres=["x"])
    labelled = tmp_path / "c.jsonl"
    labelled.write_text("\n".join(json.dumps({"text": t, "label": g}) for t, g in [("a", "x"), ("b", "y")]))
    with pytest.raises(CorpusError, match="'z' not in corpus"):
        load_corpus(str(labelled), genres=["x", "z"])  # one known genre does not hide an unknown one
    assert [d.text for d in load_corpus(str(labelled), genres=["y"])] == ["b"]
    _refused(capsys, ["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--genres", "news", "--out",
                      str(tmp_path / "run")], "not in corpus 'pydoc'")


# -- e. calibration documents --------------------------------------------------------------------------------
def test_calibration_documents_used_are_printed_and_saved(run_dir, tmp_path, capsys):
    n_calib = len([i for i in range(len(load_corpus("pydoc"))) if i % 10 != 0])
    assert main(["prune", str(run_dir), "--corpus", "pydoc", "--calib-docs", "120", "--max-tokens", "16",
                 "--target-ratio", "0.1", "--fidelity", "0", "--quiet", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert f"calibration: {n_calib} documents x 16 tokens (120 requested)" in out
    assert f"note: calibration: {n_calib} documents used of the 120 requested" in out
    info = read_pruning_info(tmp_path / "m")
    assert info["calibration_docs"] == {"requested": 120, "used": n_calib, "tokens_per_doc": 16}
    assert any(n.startswith("calibration:") for n in info["notes"])


def test_calibration_record_without_a_cut():
    model, tok = tiny_model("llama", width=24), tokenizer()
    calib = Calibration(tok, documents(6), 32, requested_docs=6)
    out = prune_with_networks(model, None, PruningSpec(method="flap", repair="bias", target_ratio=0.1), calib)
    assert out.calibration_docs == {"requested": 6, "used": 6, "tokens_per_doc": 32} and out.notes == []
    nothing = prune_with_networks(tiny_model("llama", width=24), None,
                                  PruningSpec(method="magnitude", repair="none", target_ratio=0.1),
                                  Calibration(tok, documents(6), 32))
    assert nothing.calibration_docs["used"] == 0  # nothing needed calibration


# -- f. attention heads get the least-squares repair ------------------------------------------------------------
def _duplicated_groups():
    """A LLaMA whose KV group 1 is a copy of group 0 (q, k, v): o_proj's input channels of group 1
    equal those of group 0, so the dense output is exactly reachable from group 0 alone."""
    from fnprune.pruning.heads import find_attentions

    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=2)
    with torch.no_grad():
        for a in find_attentions(model):
            m = a.module
            q0, q1 = a.q_channels(torch.tensor([0])), a.q_channels(torch.tensor([1]))
            kv0, kv1 = a.kv_channels(torch.tensor([0])), a.kv_channels(torch.tensor([1]))
            m.q_proj.weight[q1] = m.q_proj.weight[q0]
            m.k_proj.weight[kv1] = m.k_proj.weight[kv0]
            m.v_proj.weight[kv1] = m.v_proj.weight[kv0]
    return model


def test_head_lstsq_repair_is_exact_where_the_kept_heads_span_the_output():
    from fnprune.pruning.heads import collect_attention_stats, prune_heads

    ids = sample_ids()
    model = _duplicated_groups()
    with torch.no_grad():
        before = model(ids).logits
    stats = collect_attention_stats(model, tokenizer(), documents(6), max_tokens=32, second_moments=True)
    assert stats.second_moment[0].shape == (32, 32)  # 4 query heads x head_dim 8
    biased = copy.deepcopy(model)
    prune_heads(biased, [[0]] * 4, bias=stats)
    fits = {}
    prune_heads(model, [[0]] * 4, repair=stats, ridge=0.0, fits=fits)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-4)
        assert not torch.allclose(biased(ids).logits, before, atol=1e-3)  # the mean bias alone is not exact
    assert sorted(fits) == [0, 1, 2, 3] and all(f.error_repaired < 1e-8 < f.error_bias for f in fits.values())
    with pytest.raises(ConfigError, match="second moments"):
        prune_heads(_duplicated_groups(), [[0]] * 4,
                    repair=collect_attention_stats(_duplicated_groups(), tokenizer(), documents(2), max_tokens=16))


def test_recipe_repairs_pruned_heads_by_least_squares_and_the_model_reloads(tmp_path):
    tok = tokenizer()
    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=2, width=24)
    spec = PruningSpec(method="flap", repair="lstsq", target_ratio=0.05, heads_fraction=0.5)
    out = prune_with_networks(model, None, spec, Calibration(tok, documents(8), 32))
    assert out.kv_heads == [2, 1, 1, 2] and sorted(out.head_fits) == [1, 2]
    errors = out.info()["head_repair_errors"]
    assert errors["layers"] == [1, 2] and errors["error_repaired"] < errors["error_bias"] < errors["error_pruned"]
    ids = sample_ids()
    with torch.no_grad():
        expected = model(ids).logits
    save_pruned(model, tok, tmp_path / "m", out.info())
    loaded, _ = load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-5)
    assert read_pruning_info(tmp_path / "m")["head_repair_errors"] == errors
    # repair bias keeps the mean compensation, none changes no o_proj weight
    biased = prune_with_networks(tiny_model("llama", num_attention_heads=4, num_key_value_heads=2, width=24), None,
                                 PruningSpec(method="flap", repair="bias", target_ratio=0.05, heads_fraction=0.5),
                                 Calibration(tok, documents(8), 32))
    assert biased.head_fits == {} and biased.info()["head_repair_errors"] is None


# -- h. the defaults work together --------------------------------------------------------------------------------
def test_default_target_fits_the_method():
    spec, source = default_target(PruningSpec(target_ratio=None), threshold=2.5)  # obs: own allocation
    assert (spec.target_ratio, spec.threshold, source) == (0.2, None, "default target ratio")
    spec.validated(have_networks=True)
    for method in ("fn", "fn-flap", "paper"):
        spec, source = default_target(PruningSpec(method=method, target_ratio=None), threshold=2.5)
        assert (spec.target_ratio, spec.threshold, source) == (None, 2.5, "analysis threshold")
        spec.validated(have_networks=True)
    given = PruningSpec(target_ratio=0.3)
    assert default_target(given, 2.5) == (given, "request")

