"""Evaluation (perplexity, counts, speed, generations), the comparison report, ablation, CLI parsing."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from prune_helpers import VOCAB, FakeNetworks, documents, tiny_model, tokenizer

from fnprune.cli.pruning import add_subcommands
from fnprune.errors import ConfigError, RunDirError
from fnprune.evaluation.compare import METHODS, ablate_networks, compare, parse_methods, parse_ratios
from fnprune.evaluation.metrics import (
    concatenated_ids,
    evaluate_model,
    generations,
    lm_eval_tasks,
    memory_usage,
    parameter_counts,
    perplexity,
    size_on_disk,
    speed,
)
from fnprune.models.mlp import find_mlps


def _uniform_model():
    """lm_head all zeros: every next token has probability 1/VOCAB, so PPL == VOCAB exactly."""
    model = tiny_model("gpt2")
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(16, VOCAB, bias=False)
    torch.nn.init.zeros_(model.lm_head.weight)
    return model


def test_perplexity_of_uniform_predictions_is_vocab_size():
    model, tok = _uniform_model(), tokenizer()
    result = perplexity(model, tok, documents(6), window=32)
    assert math.isclose(result["ppl"], VOCAB, rel_tol=1e-5)
    n_ids = len(concatenated_ids(tok, documents(6)))
    assert result["n_windows"] == n_ids // 32 and result["n_tokens"] == result["n_windows"] * 31


def test_perplexity_windows_are_consistent():
    model, tok = tiny_model("llama"), tokenizer()
    ids = concatenated_ids(tok, documents(8))
    full = perplexity(model, tok, None, window=64, ids=ids, batch_size=8)
    batched = perplexity(model, tok, None, window=64, ids=ids, batch_size=1)
    assert math.isclose(full["ppl"], batched["ppl"], rel_tol=1e-4)
    assert 1 < full["ppl"] < 10 * VOCAB


def test_perplexity_streams_the_running_value_and_ends_on_the_result():
    """The progress messages carry the perplexity of the windows scored so far; the last one is the
    result, and an earlier one is the perplexity of exactly its first windows."""
    model, tok = tiny_model("llama"), tokenizer()
    ids = concatenated_ids(tok, documents(8))
    seen: list[tuple[str, float, str]] = []
    full = perplexity(model, tok, None, window=32, ids=ids, batch_size=2,
                      progress=lambda stage, fraction, message="": seen.append((stage, fraction, message)))
    assert full["n_windows"] >= 4 and len(seen) == math.ceil(full["n_windows"] / 2)
    assert all(stage == "ppl@32" for stage, _, _ in seen) and seen[-1][1] == 1.0
    running = [float(m.split("so far ")[1].split(" ")[0]) for _, _, m in seen]
    assert math.isclose(running[-1], full["ppl"], abs_tol=0.006)
    first_two = perplexity(model, tok, None, window=32, ids=ids[:64], batch_size=2)
    assert first_two["n_windows"] == 2 and math.isclose(running[0], first_two["ppl"], abs_tol=0.006)
    assert f"2 of {full['n_windows']} windows" in seen[0][2]


def test_per_document_perplexity_ignores_padding():
    from fnprune.evaluation.metrics import per_document_perplexity

    model, tok = tiny_model("llama"), tokenizer()
    docs = documents(5)
    one = per_document_perplexity(model, tok, docs, window=40, batch_size=1)
    padded = per_document_perplexity(model, tok, docs, window=40, batch_size=5)
    assert math.isclose(one["ppl"], padded["ppl"], rel_tol=1e-4) and one["n_tokens"] == padded["n_tokens"]
    uniform = per_document_perplexity(_uniform_model(), tok, docs, window=40)
    assert math.isclose(uniform["ppl"], VOCAB, rel_tol=1e-5)


def test_counts_size_memory(tmp_path):
    model = tiny_model("llama")
    counts = parameter_counts(model)
    assert counts["total_params"] == sum(p.numel() for p in model.parameters())
    assert counts["mlp_params"] == 4 * 3 * 16 * 24 and counts["widths"] == [24] * 4
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"x" * 5)
    assert size_on_disk(tmp_path) == 15 and size_on_disk(tmp_path / "a") == 10
    mem = memory_usage()
    assert mem["peak_rss_bytes"] >= mem["rss_bytes"] > 0 or mem["peak_rss_bytes"] > 0


def test_speed_and_generations():
    model, tok = tiny_model("llama"), tokenizer()
    result = speed(model, batch_sizes=(1, 2), prompt_tokens=8, new_tokens=4, repeats=1)
    assert result["batch_1"]["tokens_per_s"] > 0 and result["batch_2"]["decode_tokens_per_s"] > 0
    gens = generations(model, tok, ["Hello"], max_new_tokens=5)
    assert gens[0]["prompt"] == "Hello" and isinstance(gens[0]["completion"], str)


def test_evaluate_model_is_json_ready(tmp_path):
    model, tok = tiny_model("opt"), tokenizer()
    result = evaluate_model(model, tok, documents(4), windows=(32, 16), with_speed=False, prompts=["Hi"],
                            model_dir=tmp_path)
    json.dumps(result)
    assert set(result["perplexity"]) == {"32", "16"} and "memory" in result and len(result["generations"]) == 1


def test_lm_eval_absent_returns_none():
    pytest.importorskip("torch")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        assert lm_eval_tasks(None, None) is None


def _fake_fn(model, seed=0):
    adapters = find_mlps(model)
    return FakeNetworks(len(adapters), adapters[0].width, adapters[0].params_per_neuron,
                        sum(p.numel() for p in model.parameters()), seed=seed, protected=(0,))


def test_compare_writes_report(tmp_path):
    model, tok = tiny_model("llama", n_layers=4, width=48), tokenizer()
    fn = _fake_fn(model)
    result = compare("tiny", "test", "0.05,0.1", METHODS, tmp_path / "report", model=model, tokenizer=tok,
                     docs=documents(30), fn=fn, paper_fn=_fake_fn(model, seed=1), protected_layers=[0],
                     max_tokens=64, windows=(32,), fidelity=3, controls=True)
    rows = result["rows"]
    assert rows[0]["method"] == "dense"
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    # per ratio: paper, fn, fn-flap; random/magnitude/wanda-sp own + networks; flap own; 2 controls -> 12 pairs,
    # each with its native compensation and with the least-squares repair; obs own + networks, whose native
    # repair is the least-squares one -> 2 more rows
    assert len(rows) - 1 == 2 * (12 * 2 + 2)
    assert {r["repair"] for r in rows if r["method"] == "obs"} == {"lstsq"}
    for r in rows[1:]:
        assert r["removed_fraction"] >= r["ratio"] - 0.005  # added down biases cost a few parameters
        assert r["widths"][0] == 48 or r["allocation"] == "uniform"  # uniform cuts protected layers too
        low, high = r["ppl"]["test"]["32"]["ci95"]
        assert low <= r["ppl"]["test"]["32"]["ppl"] <= high
        assert len(r["fidelity"]) == 3 and all(-1 <= f["correlation"] <= 1 for f in r["fidelity"])
        assert (r["repair_errors"] is not None) == (r["repair"] == "lstsq")
    net_rows = [r for r in rows if r["allocation"] == "networks" and r["ratio"] == 0.1]
    assert len({tuple(r["widths"]) for r in net_rows}) == 1  # every method uses the networks' widths
    for r in rows[1:]:  # the least-squares repair never does worse on calibration tokens than the mean bias
        if r["repair"] == "lstsq":
            assert r["repair_errors"]["error_repaired"] <= r["repair_errors"]["error_bias"] + 1e-9
    ref = [r for r in rows if (r["method"], r["allocation"], r["repair"]) == ("flap", "own", "bias")]
    assert len(ref) == 2 and "vs_reference" not in ref[0]
    other = [r for r in rows[1:] if r is not ref[0] and r["ratio"] == ref[0]["ratio"]]
    assert all(r["vs_reference"]["test"]["32"]["low"] <= r["vs_reference"]["test"]["32"]["ratio"]
               <= r["vs_reference"]["test"]["32"]["high"] for r in other)
    for name in ("results.json", "report.md", "ppl_vs_ratio.html"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "| 0.10 | fn-flap | networks | lstsq |" in (tmp_path / "report" / "report.md").read_text()
    per_doc = compare("tiny", "test", [0.1], ["flap"], None, model=model, tokenizer=tok, docs=documents(30),
                      protected_layers=[0], max_tokens=64, windows=(32,), per_document=True, repairs="native")
    assert per_doc["ppl_protocol"] == "per-document" and len(per_doc["rows"]) == 2
    assert model is not None and [a.width for a in find_mlps(model)] == [48] * 4  # original untouched


def test_compare_with_chosen_networks_keeps_them_in_every_row(tmp_path):
    model, tok = tiny_model("llama", n_layers=4, width=48), tokenizer()
    fn = _fake_fn(model)
    chosen = [c for c in range(fn.n_components) if fn.component_row_layer(c) in (1, 2)
              and (fn.abs_max_map(c) > fn.threshold).any()][:2]
    result = compare("tiny", "test", [0.1], ["fn-flap", "flap", "wanda-sp"], None, model=model, tokenizer=tok,
                     docs=documents(30), fn=fn, networks=chosen, protected_layers=[0], max_tokens=64,
                     windows=(32,), repairs="lstsq", split="validation", n_calib=10)
    assert result["split"] == "validation" and result["fidelity_networks"] == chosen
    for r in result["rows"][1:]:
        assert [c["n_kept"] for c in r["chosen_networks"]] == [c["n_key"] for c in r["chosen_networks"]]
        assert [f["id"] for f in r["fidelity"]] == chosen


def test_compare_calibrates_once_for_every_row(tmp_path, monkeypatch):
    """obs (residual-weighted moments) and FLAP + lstsq (plain second moments) share one calibration pass."""
    import fnprune.pruning.calibration as calibration

    calls = []
    real = calibration.collect_down_input_stats
    monkeypatch.setattr(calibration, "collect_down_input_stats", lambda *a, **k: calls.append(k) or real(*a, **k))
    model, tok = tiny_model("llama", n_layers=4, width=48), tokenizer()
    result = compare("tiny", "test", [0.05, 0.1], ["obs", "flap"], None, model=model, tokenizer=tok,
                     docs=documents(30), fn=_fake_fn(model), protected_layers=[0], max_tokens=64, windows=(32,),
                     repairs="native,lstsq", fidelity=None, n_calib=10)
    assert [r["method"] for r in result["rows"][1:] if "error" not in r] == ["obs", "obs", "flap", "flap"] * 2
    assert len(calls) == 1 and calls[0]["second_moments"] and calls[0]["weighted"]


def test_compare_rejects_bad_arguments(tmp_path):
    model, tok = tiny_model("llama"), tokenizer()
    with pytest.raises(ConfigError, match="target_ratio must be between 0 and 1"):
        parse_ratios("0.2,1.0")
    with pytest.raises(ConfigError, match="numbers"):
        parse_ratios("a,b")
    with pytest.raises(ConfigError, match="unknown method"):
        parse_methods("fn,sparsegpt")
    other = FakeNetworks(4, 30, 48, 1)
    with pytest.raises(RunDirError, match="another model"):
        compare("tiny", "test", [0.1], ["fn"], None, model=model, tokenizer=tok, docs=documents(20), fn=other)


def test_ablation_zeroes_without_removing():
    model, tok = tiny_model("llama"), tokenizer()
    fn = _fake_fn(model)
    result = ablate_networks(model, tok, documents(4), fn, top_k=1, threshold=3.0, window=32)
    assert result["n_neurons"] == sum(result["neurons_per_layer"]) > 0
    assert result["network_ppl"] != result["dense_ppl"] and result["random_ppl"] > 0
    assert [a.width for a in find_mlps(model)] == [24] * 4
    assert perplexity(model, tok, documents(4), window=32)["ppl"] == pytest.approx(result["dense_ppl"])
    peaks = [fn.neuron_scores(networks=[k]).max() for k in range(fn.n_components)]
    assert result["networks"] == [int(np.argmax(peaks))]


def _parser():
    parser = argparse.ArgumentParser(prog="fnprune")
    add_subcommands(parser.add_subparsers(dest="command"))
    return parser


def test_cli_parses_subcommands():
    parser = _parser()
    args = parser.parse_args(["prune", "run", "--target-ratio", "0.3", "--networks", "1,5,9", "--bias",
                              "--uniform", "--out", "m"])
    assert args.func.__name__ == "cmd_prune" and args.networks == "1,5,9" and args.bias and args.uniform
    args = parser.parse_args(["evaluate", "m", "--json"])
    assert args.func.__name__ == "cmd_evaluate" and args.corpus == "brown"
    args = parser.parse_args(["compare", "--ratios", "0.1,0.2", "--out", "r"])
    assert args.model == "smollm2-135m" and args.func.__name__ == "cmd_compare"


def test_cli_prune_errors(tmp_path):
    parser = _parser()
    args = parser.parse_args(["prune", str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    with pytest.raises(RunDirError, match="does not exist"):
        args.func(args)
    args = parser.parse_args(["prune", str(tmp_path), "--target-ratio", "1.2", "--out", str(tmp_path / "m")])
    with pytest.raises(ConfigError, match="target_ratio must be between 0 and 1"):
        args.func(args)
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run directory: fnprune.analysis.networks.analyze on the seeded tiny LLaMA (few components)."""
    from fnprune.analysis.networks import analyze
    from fnprune.models.loading import load_model

    model, tok = load_model("tiny-llama", device="cpu")
    fn = analyze(model, tok, documents(24), n_components=8, n_init=1, max_tokens=48, model_spec="tiny-llama",
                 corpus_spec="test", device="cpu")
    run_dir = tmp_path_factory.mktemp("run") / "run"
    fn.save(run_dir)
    return run_dir, fn


def test_cli_prune_end_to_end(tiny_run, tmp_path, monkeypatch):
    import fnprune.pruning.job as job_module
    from fnprune.models.pruned_io import load_pruned, read_pruning_info

    run_dir, fn = tiny_run
    monkeypatch.setattr(job_module, "load_split", lambda corpus, n, n_heldout, **kw: (documents(20), documents(5)))
    parser = _parser()
    # per-layer widths need fnprune's modelling file; uniform widths are the stock architecture (LLaMA's
    # own mlp_bias switch carries the down bias the repair adds)
    cases = [([], "per-layer"), (["--method", "fn", "--repair", "none"], "per-layer"),
             (["--method", "fn", "--bias"], "per-layer"), (["--method", "fn-flap", "--networks", "0,8,16,24"], "per-layer"),
             (["--method", "fn", "--uniform"], "stock"), (["--method", "paper", "--no-repair", "--uniform"], "stock"),
             (["--heads", "0.5", "--bias"], "per-layer"), (["--method", "flap", "--sequential", "--fidelity", "2"], "per-layer")]
    for extra, architecture in cases:
        out = tmp_path / ("m" + "".join(extra).replace("-", "").replace(",", ""))
        args = parser.parse_args(["prune", str(run_dir), "--target-ratio", "0.1", "--out", str(out), "--quiet",
                                  "--max-tokens", "64"] + extra)
        assert args.func(args) == 0
        info = read_pruning_info(out)
        assert info["source_model"] == "tiny-llama" and info["removed_fraction"] >= 0.095
        assert info["architecture"] == architecture, extra
        assert info["repair"] == ("none" if "--no-repair" in extra or "none" in extra else
                                  "bias" if "--bias" in extra else "lstsq")
        model, tok = load_pruned(out)
        assert [a.width for a in find_mlps(model)] == info["widths"]
        if "--heads" in extra:
            assert info["kv_heads"] == [2, 1, 1, 2] and info["heads_fraction"] == 0.5
            tokens = torch.tensor([[5, 6, 7, 8]])
            assert model(tokens).logits.shape == (1, 4, 258)
        if "--uniform" in extra:
            assert len(set(info["widths"])) == 1
        elif extra[:2] == ["--method", "fn-flap"]:
            assert info["widths"] == fn.plan(target_ratio=0.1, networks=[0, 8, 16, 24])["widths"]
        if "--networks" in extra:
            assert [c["id"] for c in info["chosen_networks"]] == [0, 8, 16, 24]
            assert all(c["n_kept"] == c["n_key"] for c in info["chosen_networks"])
        if "--fidelity" in extra:
            assert len(info["fidelity"]) == 2


def test_real_run_dir_from_another_model(tiny_run):
    from fnprune.evaluation.compare import check_networks_match

    _, fn = tiny_run
    with pytest.raises(RunDirError, match="another model"):
        check_networks_match(fn, tiny_model("llama"))
    with pytest.raises(RunDirError, match="another model"):
        check_networks_match(fn, tiny_model("gpt2", width=64))
