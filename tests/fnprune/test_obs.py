"""Structured OBS (fnprune.pruning.repair.obs_removal_order) and the least-squares repair (refit_down) against
a brute force on small layers, at the shipped block size and ridge, with residual-weighted moments
and planted near-duplicate neurons: exact costs, the one-at-a-time greedy's order, one objective."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from prune_helpers import documents, tiny_model
from torch import nn

import fnprune.pruning.repair as repair
import fnprune.pruning.scores as scores_module
from fnprune.errors import ConfigError
from fnprune.pruning.repair import DEFAULT_RIDGE, obs_block, obs_removal_order, refit_down


class Layer:
    """A planted layer: tokens ``x`` (T, n), positive token weights ``w`` (the residual weighting),
    ``down``'s weight ``W`` (hidden, n) and the weighted moments, with the objective computed directly
    on the tokens (an independent brute force, not the moments' closed form)."""

    def __init__(self, x: np.ndarray, w: np.ndarray, W: np.ndarray, ridge: float = DEFAULT_RIDGE):
        self.x, self.w, self.W, self.ridge = x, w, W, ridge
        self.n = x.shape[1]
        p = w / w.sum()
        self.S = (x * p[:, None]).T @ x                      # Σ w x xᵀ / Σ w
        self.mu = p @ x                                      # Σ w x / Σ w
        self.lam = ridge * float(np.mean(np.diag(self.S)))   # ridge × mean diag over all n neurons
        self.sqrt_p = np.sqrt(p)

    def torch_args(self, dtype=torch.float64):
        return (torch.as_tensor(self.W, dtype=dtype), torch.as_tensor(self.S, dtype=dtype),
                torch.as_tensor(self.mu, dtype=dtype))

    def objective_at(self, keep, cols: np.ndarray, bias: np.ndarray) -> float:
        """E_w||W x - W' x_K - b||² + λ||Ŵ - W||²_F (Ŵ: W' on keep, 0 elsewhere) on the tokens."""
        What = np.zeros_like(self.W)
        What[:, list(keep)] = cols
        err = self.x @ (self.W - What).T - bias            # (T, hidden)
        return float((self.sqrt_p[:, None] ** 2 * err ** 2).sum() + self.lam * ((What - self.W) ** 2).sum())

    def fit(self, keep) -> tuple[np.ndarray, np.ndarray]:
        """The minimiser over W', b, by one stacked least squares: weighted token rows, then one ridge row
        per kept neuron pulling its column toward W's."""
        keep = list(keep)
        k = len(keep)
        Z = np.hstack([self.x[:, keep], np.ones((len(self.x), 1))]) * self.sqrt_p[:, None]
        Y = (self.x @ self.W.T) * self.sqrt_p[:, None]
        if k and self.lam > 0:
            ridge_rows = np.hstack([np.sqrt(self.lam) * np.eye(k), np.zeros((k, 1))])
            Z = np.vstack([Z, ridge_rows])
            Y = np.vstack([Y, np.sqrt(self.lam) * self.W[:, keep].T])
        sol = np.linalg.lstsq(Z, Y, rcond=None)[0]          # (k+1, hidden)
        return sol[:k].T, sol[k]

    def objective(self, keep) -> float:
        return self.objective_at(keep, *self.fit(keep))

    def calibration_error(self, keep) -> float:
        """E_w||W x - W' x_K - b||² alone (no ridge term), at the fit."""
        cols, bias = self.fit(keep)
        What = np.zeros_like(self.W)
        What[:, list(keep)] = cols
        return float((self.sqrt_p[:, None] ** 2 * (self.x @ (self.W - What).T - bias) ** 2).sum())


def planted(n_base: int = 12, n_dup: int = 6, hidden: int = 7, tokens: int = 600, seed: int = 0,
            noise: float = 1e-2, ridge: float = DEFAULT_RIDGE) -> Layer:
    """``n_base`` correlated neurons (non-zero mean) and ``n_dup`` near-duplicates of the first ones."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(tokens, n_base)) @ rng.normal(size=(n_base, n_base)) / np.sqrt(n_base) + 0.3
    dup = base[:, :n_dup] + noise * rng.normal(size=(tokens, n_dup))
    x = np.hstack([base, dup])
    w = np.exp(rng.normal(scale=0.7, size=tokens))        # residual weights 1 / mean h²: positive, uneven
    return Layer(x, w, rng.normal(size=(hidden, n_base + n_dup)), ridge)


def _adapter(W: np.ndarray, layer: int = 5):
    down = nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=torch.float64)
    down.weight.data = torch.as_tensor(W)
    return SimpleNamespace(down=down, layer=layer)


@pytest.mark.parametrize("panel", [repair.LOWER_PANEL, 3])     # the shipped one (one panel here), several
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_cost_is_the_exact_rise_and_every_step_the_brute_force_best(seed, panel, monkeypatch):
    monkeypatch.setattr(repair, "LOWER_PANEL", panel)
    layer = planted(seed=seed)
    forced = np.zeros(layer.n, dtype=bool)
    forced[3] = True
    order, cost = obs_removal_order(*layer.torch_args(), forced=forced)   # the shipped block and ridge
    assert obs_block(layer.n + 1) > 1 and len(order) == layer.n - 1 and 3 not in order.tolist()
    keep = list(range(layer.n))
    before = layer.objective(keep)
    assert before == pytest.approx(0.0, abs=1e-10)  # nothing removed: the dense layer, at no cost
    for j, c in zip(order.tolist(), cost, strict=True):
        options = {i: layer.objective([k for k in keep if k != i]) for i in keep if i != 3}
        after = options[j]
        assert c == pytest.approx(after - before, rel=1e-7, abs=1e-10)        # (a) the exact rise
        assert after <= min(options.values()) * (1 + 1e-9) + 1e-12          # the greedy's own choice
        keep.remove(j)
        before = after


@pytest.mark.parametrize("seed", [0, 3])
def test_the_block_only_batches_the_updates_the_order_is_the_one_at_a_time_greedys(seed):
    layer = planted(n_base=14, n_dup=6, seed=seed)
    ref_order, ref_cost = obs_removal_order(*layer.torch_args(), block=1)
    for block in (2, 5, None, 64):                # None: the shipped, sized by the layer
        order, cost = obs_removal_order(*layer.torch_args(), block=block)
        assert order.tolist() == ref_order.tolist()
        np.testing.assert_allclose(cost, ref_cost, rtol=1e-8, atol=1e-12)


def test_correlated_neurons_are_not_removed_together():
    """Issue 19's case: 64 neurons of which 24 are near-duplicates. Removing the 16 cheapest by their
    individual costs (the former block step) takes both copies of some pairs; the greedy takes one of
    each, at the shipped block size as at block 1."""
    layer = planted(n_base=40, n_dup=24, hidden=16, tokens=2000, noise=1e-3, seed=4)
    n_remove = 16
    kept, objective = {}, {}
    for block in (1, None):
        order, cost = obs_removal_order(*layer.torch_args(), block=block, min_width=layer.n - n_remove)
        kept[block] = sorted(set(range(layer.n)) - set(order.tolist()))
        objective[block] = layer.objective(kept[block])
        assert cost.sum() == pytest.approx(objective[block], rel=1e-6)
    assert kept[None] == kept[1]
    assert objective[None] <= objective[1] * (1 + 1e-6)
    # the former rule: the 16 lowest first-step costs, removed at once
    first = {i: layer.objective([k for k in range(layer.n) if k != i]) for i in range(layer.n)}
    former = sorted(set(range(layer.n)) - set(sorted(first, key=first.get)[:n_remove]))
    assert layer.objective(former) > 50 * objective[None]
    # the calibration error alone (the objective also holds λ‖W[:, removed]‖²): 2e-4 against 3.6 here
    assert layer.calibration_error(former) > 1000 * layer.calibration_error(kept[None])


@pytest.mark.parametrize("ridge", [DEFAULT_RIDGE, 1e-2, 0.0])
def test_the_repair_reaches_exactly_the_error_the_greedy_reported(ridge):
    """(c) One objective: refit_down on the greedy's kept set is the brute-force minimiser, and its
    objective is the sum of the greedy's costs (the dense layer's is 0), ridge included."""
    layer = planted(seed=5, ridge=ridge)
    order, cost = obs_removal_order(*layer.torch_args(), ridge=ridge)
    W, S, mu = layer.torch_args()
    for k in (1, 4, obs_block(layer.n + 1), len(order)):
        keep = sorted(set(range(layer.n)) - set(order[:k].tolist()))
        fit = refit_down(_adapter(layer.W), torch.as_tensor(keep), S, mu, ridge=ridge)
        cols, bias = layer.fit(keep)
        np.testing.assert_allclose(fit.weight.numpy(), cols, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fit.bias.numpy(), bias, rtol=1e-6, atol=1e-8)
        reached = layer.objective_at(keep, fit.weight.numpy(), fit.bias.numpy())
        assert reached == pytest.approx(cost[:k].sum(), rel=1e-7)
        assert fit.objective == pytest.approx(reached, rel=1e-7)
    # with every neuron kept the fit is the dense layer, whatever the ridge (it pulls toward W)
    fit = refit_down(_adapter(layer.W), torch.arange(layer.n), S, mu, ridge=ridge)
    np.testing.assert_allclose(fit.weight.numpy(), layer.W, atol=1e-8)
    assert np.abs(fit.bias.numpy()).max() < 1e-8 and fit.objective == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("ridge", [DEFAULT_RIDGE, 1e-2])
def test_the_fits_error_figures_are_the_calibration_errors_on_the_tokens(ridge):
    """refit_down derives its four figures from traces (one product Wz H); each equals the error computed
    directly on the planted tokens: the kept columns alone, with FLAP's mean bias, and the fit."""
    layer = planted(n_base=16, n_dup=8, hidden=9, seed=6, ridge=ridge)
    W, S, mu = layer.torch_args()
    keep = [k for k in range(layer.n) if k % 3]                      # a third of the neurons pruned
    pruned = [k for k in range(layer.n) if not k % 3]
    fit = refit_down(_adapter(layer.W), torch.as_tensor(keep), S, mu, ridge=ridge)

    def error(cols, bias):  # E_w||W x - Ŵ x - b||² / E_w||W x||² on the tokens
        What = np.zeros_like(layer.W)
        What[:, keep] = cols
        p = layer.sqrt_p[:, None] ** 2
        return float((p * (layer.x @ (layer.W - What).T - bias) ** 2).sum() / (p * (layer.x @ layer.W.T) ** 2).sum())

    zero = np.zeros(layer.W.shape[0])
    assert fit.error_pruned == pytest.approx(error(layer.W[:, keep], zero), rel=1e-9)
    assert fit.error_bias == pytest.approx(error(layer.W[:, keep], layer.W[:, pruned] @ layer.mu[pruned]), rel=1e-9)
    assert fit.error_repaired == pytest.approx(error(fit.weight.numpy(), fit.bias.numpy()), rel=1e-9)
    assert fit.objective == pytest.approx(layer.objective(keep), rel=1e-9)
    assert fit.error_repaired < fit.error_bias < fit.error_pruned


@pytest.mark.parametrize("panel", [1, 4, 7, 64])
def test_the_greedys_update_is_exact_on_the_lower_triangle_and_leaves_the_upper_one(panel):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(23, 23, generator=g, dtype=torch.float64)
    left, right = torch.randn(23, 5, generator=g, dtype=torch.float64), torch.randn(5, 23, generator=g, dtype=torch.float64)
    out = X.clone()
    repair.addmm_lower_(out, left, right, alpha=-1, panel=panel)
    full = X - left @ right
    lower = torch.ones(23, 23, dtype=torch.bool).tril()
    torch.testing.assert_close(out[lower], full[lower], rtol=0, atol=1e-12)
    blocks = torch.zeros(23, 23, dtype=torch.bool)                  # the diagonal blocks' upper parts are updated too
    for c0 in range(0, 23, panel):
        blocks[c0:c0 + panel, c0:c0 + panel] = True
    torch.testing.assert_close(out[~lower & blocks], full[~lower & blocks], rtol=0, atol=1e-12)
    assert torch.equal(out[~lower & ~blocks], X[~lower & ~blocks])   # the rest of the upper triangle: untouched


@pytest.mark.parametrize("panel", [1, 5, 64])
def test_a_lower_triangle_product_symmetrized_is_the_full_product_in_either_accumulator_dtype(panel):
    """What the streamed moments do: accumulate ``aᵀ b`` (symmetric) on the lower triangle, then mirror it."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 19, generator=g)
    w = torch.rand(40, generator=g)
    full = (x * w[:, None]).T @ x
    for dtype in (torch.float32, torch.float64):
        out = torch.zeros(19, 19, dtype=dtype)
        repair.addmm_lower_(out, (x * w[:, None]).T, x, panel=panel)
        repair.addmm_lower_(out, (x * w[:, None]).T, x, panel=panel)            # a second batch adds to it
        repair.symmetrize_lower_(out, panel=7)                                   # other panels than the sums'
        torch.testing.assert_close(out, (2 * full).to(dtype), rtol=1e-5, atol=1e-5)
        assert torch.equal(out, out.T)


def test_the_greedys_compaction_reuses_the_matrix_storage():
    from fnprune.pruning.repair import _compact

    X = torch.arange(37 * 37, dtype=torch.float64).reshape(37, 37)
    keep = torch.tensor([0, 2, 3, 7, 8, 9, 20, 30, 36])
    expected = X.index_select(0, keep).index_select(1, keep)
    out = _compact(X, keep, rows=2)                                   # several row blocks
    assert torch.equal(out, expected) and out.data_ptr() == X.data_ptr() and out.is_contiguous()


def test_ridge_zero_is_honoured_and_a_singular_moment_is_an_error_naming_the_layer():
    layer = planted(seed=6, ridge=0.0)
    order, cost = obs_removal_order(*layer.torch_args(), ridge=0.0)  # (d) non-singular: exact at ridge 0
    keep = list(range(layer.n))
    prev = 0.0
    for j, c in zip(order.tolist(), cost, strict=True):
        keep.remove(j)
        now = layer.objective(keep)
        assert c == pytest.approx(now - prev, rel=1e-6, abs=1e-10)
        prev = now
    for singular in ("duplicate", "dead"):
        x = layer.x.copy()
        x[:, 2] = x[:, 7] if singular == "duplicate" else 0.0
        bad = Layer(x, layer.w, layer.W, ridge=0.0)
        W, S, mu = bad.torch_args()
        with pytest.raises(ConfigError, match="layer 7: .*singular.*ridge"):
            obs_removal_order(W, S, mu, ridge=0.0, layer=7)
        with pytest.raises(ConfigError, match="layer 9: .*singular"):
            refit_down(_adapter(bad.W, layer=9), torch.arange(bad.n), S, mu, ridge=0.0)
        obs_removal_order(W, S, mu, ridge=DEFAULT_RIDGE, layer=7)  # a ridge makes it well posed


def test_a_pivot_below_its_exact_floor_stops_the_greedy_naming_the_layer():
    from fnprune.pruning.repair import _Greedy

    H = torch.eye(4, dtype=torch.float64) * 2.0
    floor = 1.0 / torch.diagonal(H)
    P = torch.eye(4, dtype=torch.float64) * 0.2  # H⁻¹'s diagonal is 0.5: 0.2 is lost precision
    greedy = _Greedy(P, torch.eye(4, dtype=torch.float64), floor, torch.tensor([False, False, False, True]), 2, 3)
    with pytest.raises(ConfigError, match="layer 3: .*precision"):
        greedy.remove_block(2)


def test_float32_moments_give_the_float64_order_on_a_well_conditioned_layer():
    """(e) float32 inputs (as moments accumulated on a device arrive) are converted, and the maths in
    float32 gives the same order on a well-conditioned layer."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(800, 12)) * rng.uniform(0.5, 2.0, size=12) + 0.2
    layer = Layer(x, np.exp(rng.normal(scale=0.5, size=800)), rng.normal(size=(6, 12)))
    order64, cost64 = obs_removal_order(*layer.torch_args())
    order_in32, cost_in32 = obs_removal_order(*layer.torch_args(torch.float32))
    order32, cost32 = obs_removal_order(*layer.torch_args(torch.float32), dtype=torch.float32)
    assert order_in32.tolist() == order64.tolist() == order32.tolist()
    np.testing.assert_allclose(cost_in32, cost64, rtol=1e-5)
    np.testing.assert_allclose(cost32, cost64, rtol=1e-3)
    W, S, mu = layer.torch_args(torch.float32)
    fit = refit_down(_adapter(layer.W), torch.as_tensor(order64[4:]), S, mu)
    assert fit.weight.dtype == torch.float64


def test_protected_layers_pay_for_no_greedy(monkeypatch):
    """(f) obs_scores and the recipe run the greedy only on layers that can lose neurons; the kept
    neurons are those of scoring every layer."""
    from fnprune.models.loading import byte_tokenizer
    from fnprune.pruning.budget import keep_from_scores, params_to_remove
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.recipe import prune_with_networks
    from fnprune.pruning.scores import obs_scores
    from fnprune.pruning.spec import PruningSpec
    from fnprune.pruning.statistics import collect_down_input_stats

    model = tiny_model("llama", n_layers=4, width=24)
    tok = byte_tokenizer()
    stats = collect_down_input_stats(model, tok, documents(8), 48, weighted=True)
    full = obs_scores(model, stats)
    calls: list[int] = []
    real = scores_module.obs_removal_order

    def counted(*args, **kwargs):
        calls.append(kwargs.get("layer"))
        return real(*args, **kwargs)

    monkeypatch.setattr(scores_module, "obs_removal_order", counted)
    skipped = obs_scores(model, stats, skip=[0, 3])
    assert calls == [1, 2]
    assert np.isinf(skipped[0]).all() and np.isinf(skipped[3]).all()
    for layer in (1, 2):
        np.testing.assert_array_equal(skipped[layer], full[layer])
    # the recipe (no networks: the default protected layers of 4 layers are 0 and 3)
    calls.clear()
    spec = PruningSpec(method="obs", target_ratio=0.05)
    out = prune_with_networks(copy.deepcopy(model), None, spec, Calibration(tok, documents(8), 48, streamed=False))
    assert sorted(calls) == [1, 2] and out.protected_layers == [0, 3]
    ppn = [a.params_per_neuron for a in scores_module.find_mlps(model)]
    unskipped = keep_from_scores(full, ppn, n_params_remove=params_to_remove(model, 0.05, "all"),
                                 protected_layers=[0, 3])
    assert [k.tolist() for k in out.keep] == [np.asarray(k).tolist() for k in unskipped]


def test_a_non_finite_moment_is_an_error_naming_the_layer_and_a_huge_finite_one_is_not():
    nan = torch.eye(3, dtype=torch.float64)
    nan[2, 1] = float("nan")
    with pytest.raises(ConfigError, match="layer 4: .*non-finite"):
        repair._cholesky(nan, 4, "the moment")
    inf = torch.eye(3, dtype=torch.float64)
    inf[0, 0] = float("inf")
    with pytest.raises(ConfigError, match="non-finite"):
        repair._cholesky(inf, 4, "the moment")
    huge = torch.diag(torch.tensor([1e308, 1e308, 1e300], dtype=torch.float64))   # its sum overflows; it is finite
    L = repair._cholesky(huge.clone(), 4, "the moment")
    torch.testing.assert_close(L, huge.sqrt())
