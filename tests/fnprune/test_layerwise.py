"""Layer-streamed calibration: the same statistics as the all-at-once pass, one layer's alive at a time,
on the device where each layer computes (accelerate dispatch with disk offload), and the sequential
mode sees the pruned layers below."""

import numpy as np
import pytest
import torch

from fnprune.corpus import load_corpus
from fnprune.models.loading import load_model
from fnprune.models.mlp import find_mlps
from fnprune.pruning.layerwise import LayerStream, live_moments, streamed_layer_moments
from fnprune.pruning.statistics import collect_down_input_stats
from fnprune.pruning.surgery import prune_model


@pytest.fixture()
def tiny():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def docs():
    return load_corpus("pydoc")[:6]


def _reference(model, tok, docs, **kw):
    return collect_down_input_stats(model, tok, docs, 96, 2, second_moments=True, weighted=True, **kw)


def test_streamed_moments_equal_the_all_at_once_pass_with_one_layer_alive(tiny, docs):
    model, tok = tiny
    ref = _reference(model, tok, docs)
    seen, alive = [], []
    for adapter, m in streamed_layer_moments(model, tok, docs, max_tokens=96, batch_size=2, plain=True, weighted=True,
                                             dtype=torch.float64):
        layer = adapter.layer
        seen.append(layer)
        alive.append(live_moments())
        assert m.n == ref.n_tokens
        for got, want in ((m.mean, ref.mean[layer]), (m.var, ref.var[layer]), (m.l2, ref.l2[layer]),
                          (m.second_moment, ref.second_moment[layer]),
                          (m.weighted_second_moment, ref.weighted_second_moment[layer]),
                          (m.weighted_mean, ref.weighted_mean[layer])):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert m.weight_mean == pytest.approx(ref.weight_mean[layer], rel=1e-12)
    assert seen == list(range(len(find_mlps(model))))
    assert alive == [1] * len(seen)           # never two layers' (I, I) moments at once
    assert live_moments() == 0                # and none after the pass


def test_the_model_is_unchanged_after_recording(tiny, docs):
    model, tok = tiny
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    before = model(input_ids=ids).logits
    LayerStream(model, tok, docs[:2], 32, 2)
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)


def test_layers_run_in_order_only(tiny, docs):
    model, tok = tiny
    stream = LayerStream(model, tok, docs[:2], 32, 2)
    with pytest.raises(RuntimeError, match="expected layer 0, got 1"):
        stream.run(1)


def test_sequential_mode_calibrates_each_layer_on_the_pruned_layers_below(tiny, docs):
    model, tok = tiny
    pruned_copy, _ = load_model("tiny-llama", device="cpu")
    keep0 = np.arange(0, 64, 2)
    layers = []
    for adapter, m in streamed_layer_moments(model, tok, docs, max_tokens=96, batch_size=2, plain=True,
                                             sequential=True, dtype=torch.float64):
        layers.append(adapter.layer)
        if adapter.layer == 0:  # prune layer 0 in place; the stream must carry the pruned outputs on
            keep = [keep0] + [np.arange(a.width) for a in find_mlps(model)[1:]]
            prune_model(model, keep)
            prune_model(pruned_copy, keep)
        if adapter.layer == 1:
            ref = collect_down_input_stats(pruned_copy, tok, docs, 96, 2, second_moments=True, layers=[1])
            torch.testing.assert_close(m.second_moment, ref.second_moment[1], rtol=1e-12, atol=1e-12)
            dense, _ = load_model("tiny-llama", device="cpu")
            dense_ref = collect_down_input_stats(dense, tok, docs, 96, 2, second_moments=True, layers=[1])
            assert not torch.allclose(m.second_moment, dense_ref.second_moment[1])   # the test means something
    assert layers == [0, 1, 2, 3]


def test_accelerate_dispatch_with_disk_offload(tiny, docs, tmp_path):
    """Odd layers' weights rest on disk (the meta device) until accelerate loads them to compute: the
    statistics are made where the layer computes and equal those of the undispatched model."""
    import accelerate
    model, tok = tiny
    ref = _reference(model, tok, docs)
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": "cpu" if i % 2 == 0 else "disk" for i in range(len(model.model.layers))}
    model = accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    assert model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    for adapter, m in streamed_layer_moments(model, tok, docs, max_tokens=96, batch_size=2, plain=True, weighted=True,
                                             dtype=torch.float64):
        assert m.device.type == "cpu"
        torch.testing.assert_close(m.second_moment, ref.second_moment[adapter.layer], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.weighted_second_moment, ref.weighted_second_moment[adapter.layer],
                                   rtol=1e-12, atol=1e-12)


# -- the recipe on the streamed path ---------------------------------------------------------------
def _prune(docs, streamed, moment_dtype=torch.float64, calibration_out=None, progress=None, spill=True, **spec):
    """Prune tiny-llama; the streamed sums in float64 by default here, so the paths can be compared exactly.
    ``calibration_out``: a list the Calibration is appended to."""
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.recipe import prune_with_networks
    from fnprune.pruning.spec import PruningSpec

    model, tok = load_model("tiny-llama", device="cpu")
    calibration = Calibration(tok, docs, max_tokens=96, batch_size=2, streamed=streamed, moment_dtype=moment_dtype,
                              spill_moments=spill)
    outcome = prune_with_networks(model, None, PruningSpec(**spec), calibration, progress=progress)
    if calibration_out is not None:
        calibration_out.append(calibration)
    return outcome, model


def _count_streams(monkeypatch) -> list:
    import fnprune.pruning.layerwise as layerwise

    streams = []
    real = layerwise.LayerStream.__init__

    def counting(self, *args, **kwargs):
        streams.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(layerwise.LayerStream, "__init__", counting)
    return streams


def test_the_one_shot_repair_reads_the_select_pass_moments_back_and_fits_the_same_weights(docs, monkeypatch,
                                                                                          tmp_path):
    """On a CPU the streamed select pass writes each layer's moments to disk; the one-shot repair reads them
    back instead of a second pass through the model, and fits bit-identical weights."""
    import gc
    import os

    monkeypatch.setenv("FNPRUNE_HOME", str(tmp_path))
    dead, live = tmp_path / "tmp" / "moments-999999999-x", tmp_path / "tmp" / f"moments-{os.getppid()}-x"
    for d in (dead, live):
        d.mkdir(parents=True)
    streams = _count_streams(monkeypatch)
    again, again_model = _prune(docs, True, torch.float32, spill=False, method="obs", target_ratio=0.2)
    assert len(streams) == 2                                          # select, then prune
    held, messages = [], []
    spilled, spilled_model = _prune(docs, True, torch.float32, calibration_out=held, method="obs", target_ratio=0.2,
                                    progress=lambda stage, f, msg="": messages.append((stage, msg)))
    assert len(streams) == 3                                          # select only
    assert ("prune", "layer 1 (the select pass's moments, read back)") in messages
    assert any(stage == "select" and "kept on disk" in msg for stage, msg in messages)
    for (name, p), (_, q) in zip(again_model.state_dict().items(), spilled_model.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert spilled.keep_digest == again.keep_digest
    figures = lambda fits: {k: (f.error_pruned, f.error_bias, f.error_repaired) for k, f in fits.items()}  # noqa: E731
    assert figures(spilled.layer_fits) == figures(again.layer_fits) and len(spilled.layer_fits) == 2
    spill = held[0].spilled_moments
    assert not dead.exists() and live.exists()                       # a killed process' spill is removed
    assert os.path.dirname(spill.dir) == str(tmp_path / "tmp")
    assert sorted(os.listdir(spill.dir)) == ["layer1.pt", "layer2.pt"]  # the prunable layers, none of the protected
    directory = spill.dir
    del held, spill
    gc.collect()
    assert not os.path.exists(directory)                              # removed with the calibration


def test_the_moments_are_collected_again_where_the_spill_does_not_hold_them(docs, monkeypatch):
    """Pruned heads change what the MLPs see (the repair calibrates on them), and a full disk holds nothing:
    both collect the moments in a second pass, announced."""
    from fnprune.pruning.layerwise import MomentSpill

    streams = _count_streams(monkeypatch)
    _prune(docs, True, torch.float32, method="obs", target_ratio=0.2, heads_fraction=0.25)
    assert len(streams) == 2
    monkeypatch.setattr(MomentSpill, "fits", staticmethod(lambda *a, **k: False))
    messages = []
    full, full_model = _prune(docs, True, torch.float32, method="obs", target_ratio=0.2,
                              progress=lambda stage, f, msg="": messages.append(msg))
    assert len(streams) == 4 and any(m.startswith("not enough free disk") for m in messages)
    spilled, spilled_model = _prune(docs, True, torch.float32, spill=False, method="obs", target_ratio=0.2)
    for (name, p), (_, q) in zip(full_model.state_dict().items(), spilled_model.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("method", ["obs", "flap", "wanda-sp"])
def test_streamed_pruning_equals_the_all_at_once_pruning(docs, method, monkeypatch):
    import fnprune.pruning.layerwise as layerwise
    from fnprune.pruning import scores, surgery

    at_once, dense_path = _prune(docs, False, method=method, target_ratio=0.2)
    greedy_layers, alive = [], []
    real_scores, real_repair = scores.obs_layer_scores, surgery.repair_layer

    def counting_scores(adapter, *args, **kw):
        greedy_layers.append(adapter.layer)
        alive.append(live_moments())
        return real_scores(adapter, *args, **kw)

    def counting_repair(adapter, *args, **kw):
        alive.append(live_moments())
        return real_repair(adapter, *args, **kw)

    monkeypatch.setattr(scores, "obs_layer_scores", counting_scores)
    monkeypatch.setattr(surgery, "repair_layer", counting_repair)
    streamed, streamed_path = _prune(docs, True, method=method, target_ratio=0.2)
    assert streamed.keep_digest == at_once.keep_digest
    for a, b in zip(at_once.keep, streamed.keep, strict=True):
        np.testing.assert_array_equal(a, b)
    assert streamed.widths == at_once.widths and any(w < 64 for w in streamed.widths)
    for (name, p), (_, q) in zip(dense_path.state_dict().items(), streamed_path.state_dict().items(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
    assert alive and max(alive) == 1                     # one layer's moments alive at any time
    if method == "obs":                                   # the protected layers (0 and 3) pay for no greedy
        assert greedy_layers == [1, 2]
    assert layerwise.live_moments() == 0


def test_sequential_repair_is_the_layer_by_layer_fit_on_the_pruned_layers_below(docs):
    """The streamed sequential repair equals re-collecting each layer's moments on the partly pruned model
    (what the former implementation did with one full forward pass per layer)."""
    from fnprune.pruning.surgery import finish_pruning, normalize_keep, repair_layer

    outcome, streamed_model = _prune(docs, None, method="flap", target_ratio=0.2, sequential=True)
    model, tok = load_model("tiny-llama", device="cpu")
    keep = normalize_keep(outcome.keep, [a.width for a in find_mlps(model)])
    for adapter in find_mlps(model):
        if keep[adapter.layer].numel() < adapter.width:
            stats = collect_down_input_stats(model, tok, docs, 96, 2, second_moments=True, layers=[adapter.layer])
            repair_layer(adapter, keep[adapter.layer], stats.second_moment[adapter.layer], stats.mean[adapter.layer],
                         outcome.spec.ridge)
    finish_pruning(model, True)
    expected, got = model.state_dict(), streamed_model.state_dict()
    assert sorted(expected) == sorted(got)
    for name, p in expected.items():
        torch.testing.assert_close(got[name], p, rtol=1e-6, atol=1e-7, msg=name)
    assert sorted(outcome.layer_fits) == [1, 2]


def test_sequential_obs_chooses_each_layer_again_on_the_pruned_layers_below(docs):
    """Sequential obs keeps the dense pass's widths and, layer by layer, runs the greedy and the repair
    on the residual-weighted moments of the model whose lower layers are already pruned and repaired."""
    from fnprune.pruning.repair import down_weight_by_neuron, obs_removal_order
    from fnprune.pruning.surgery import finish_pruning, repair_layer

    one_shot, _ = _prune(docs, None, method="obs", target_ratio=0.2)
    outcome, streamed_model = _prune(docs, None, method="obs", target_ratio=0.2, sequential=True)
    assert outcome.widths == one_shot.widths
    model, tok = load_model("tiny-llama", device="cpu")
    for adapter in find_mlps(model):
        width = len(outcome.keep[adapter.layer])
        if width < adapter.width:
            stats = collect_down_input_stats(model, tok, docs, 96, 2, weighted=True, layers=[adapter.layer])
            S, mu = stats.weighted_second_moment[adapter.layer], stats.weighted_mean[adapter.layer]
            order, _ = obs_removal_order(down_weight_by_neuron(adapter), S, mu, ridge=outcome.spec.ridge,
                                         min_width=width)
            keep = np.setdiff1d(np.arange(adapter.width), order)
            np.testing.assert_array_equal(outcome.keep[adapter.layer], keep)
            repair_layer(adapter, torch.as_tensor(keep), S, mu, outcome.spec.ridge)
    finish_pruning(model, True)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(streamed_model.state_dict()[name], p, rtol=1e-6, atol=1e-7, msg=name)
    assert any(not np.array_equal(a, b) for a, b in zip(outcome.keep, one_shot.keep, strict=True))


def test_float32_sums_are_the_default_and_change_no_kept_neuron(docs):
    """The streamed pass sums in float32 unless told otherwise (BENCHMARKS §12); on tiny-llama its moments
    are within float32 round-off of the float64 sums and obs keeps the same neurons."""
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.layerwise import MOMENT_SUM_DTYPE

    model, tok = load_model("tiny-llama", device="cpu")
    assert MOMENT_SUM_DTYPE == torch.float32 and Calibration(tok, docs).moment_dtype == torch.float32
    wide = {a.layer: m.weighted_second_moment.clone() for a, m in streamed_layer_moments(
        model, tok, docs, max_tokens=96, batch_size=2, weighted=True, dtype=torch.float64)}
    for adapter, m in streamed_layer_moments(model, tok, docs, max_tokens=96, batch_size=2, weighted=True):
        assert m.weighted_second_moment.dtype == torch.float32
        ref = wide[adapter.layer]
        rel = float(torch.linalg.norm(m.weighted_second_moment.double() - ref) / torch.linalg.norm(ref))
        assert 0 < rel < 1e-6, (adapter.layer, rel)  # not bit-equal (float32 sums) and close
    exact, _ = _prune(docs, True, method="obs", target_ratio=0.2)
    default, _ = _prune(docs, True, moment_dtype=MOMENT_SUM_DTYPE, method="obs", target_ratio=0.2)
    assert default.keep_digest == exact.keep_digest
