"""CanICA on synthetic mixtures with known sources, and its bad inputs."""

import numpy as np
import pytest

from fnprune.analysis.blocks import StandardizedBlocks
from fnprune.analysis.fastica import fastica
from fnprune.analysis.ica import CanICA
from fnprune.errors import ConfigError


def mixture(n_neurons=300, n_tokens=2000, k=4, seed=0, noise=0.2):
    rng = np.random.default_rng(seed)
    maps = np.zeros((k, n_neurons))
    for i in range(k):
        maps[i, rng.choice(n_neurons, 15, replace=False)] = rng.normal(4, 1, 15)
    time_courses = rng.laplace(size=(n_tokens, k))
    return time_courses @ maps + noise * rng.normal(size=(n_tokens, n_neurons)), maps, time_courses


def best_match(a, b):
    k = len(b)
    return np.abs(np.corrcoef(a, b)[:k, k:]).max(axis=1) if len(a) == k else None


@pytest.mark.parametrize("subspace", ["covariance", "gram", "randomized"])
def test_recovers_known_sparse_maps(subspace):
    X, maps, _ = mixture()
    if subspace == "gram":
        X = X[:250]  # fewer tokens than neurons
    ica = CanICA(4, n_init=3, subspace=subspace, random_state=0).fit(X)
    assert ica.components_.shape == (4, 300)
    assert best_match(ica.components_, maps).min() > 0.9
    # maps are z-scored and their heavy tail is positive
    np.testing.assert_allclose(ica.components_.mean(1), 0, atol=0.05)
    assert (np.sort(ica.components_, axis=1)[:, -5:].mean(1) > 0).all()
    assert (ica.stability_ > 0.95).all()


def test_time_courses_recovered_and_deterministic():
    X, maps, tc = mixture()
    a = CanICA(4, n_init=2, random_state=3).fit(X)
    b = CanICA(4, n_init=2, random_state=3).fit(X)
    np.testing.assert_array_equal(a.components_, b.components_)
    est = a.transform(X)
    assert est.shape == (2000, 4)
    assert np.abs(np.corrcoef(est.T, tc.T)[:4, 4:]).max(1).min() > 0.9


def test_column_blocks_equal_concatenated_matrix():
    X, _, _ = mixture()
    whole = CanICA(4, n_init=1, subspace="covariance").fit(X)
    blocks = CanICA(4, n_init=1, subspace="covariance").fit([X[:, :100], X[:, 100:]])
    np.testing.assert_allclose(whole.components_, blocks.components_, atol=1e-4)


def test_constant_neurons_are_handled():
    X, _, _ = mixture()
    X[:, :10] = 5.0  # zero variance
    ica = CanICA(4, n_init=1).fit(X)
    assert ica.n_constant_ == 10
    assert np.isfinite(ica.components_).all()
    assert np.abs(ica.components_[:, :10]).max() < 1.0  # constant neurons never stand out


def test_bad_inputs():
    X, _, _ = mixture(n_tokens=50)
    with pytest.raises(ConfigError, match="smaller than the number of tokens"):
        CanICA(60).fit(X)
    with pytest.raises(ConfigError, match="larger than the number of neuron signals"):
        CanICA(20).fit(X[:, :10])
    bad = X.copy()
    bad[3, 7] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        CanICA(4).fit(bad)
    with pytest.raises(ConfigError, match="2-D"):
        CanICA(4).fit(X[0])
    with pytest.raises(ConfigError, match="subspace"):
        CanICA(4, subspace="magic").fit(X)
    with pytest.raises(ConfigError, match="n_components"):
        CanICA(0).fit(X)
    with pytest.raises(ConfigError, match="not fitted"):
        CanICA(4).transform(X)


def test_fastica_rank_deficient_input_is_an_error():
    import torch

    U = torch.randn(100, 3, dtype=torch.float64)
    U = torch.cat([U, U[:, :1]], 1)  # 4 features, rank 3
    with pytest.raises(ConfigError, match="rank-deficient"):
        fastica(U)


def test_correlation_pass_matches_float64_correlation_despite_large_means():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((3000, 40)) @ rng.standard_normal((40, 40)) + 1e3).astype(np.float32)
    X[:, 5] = 7.0  # a constant column
    data = StandardizedBlocks(X, chunk_size=512)
    C = data.correlation().numpy() / len(X)
    Xd = X.astype(np.float64)
    std = Xd.std(0)
    std[5] = 1.0
    Z = (Xd - Xd.mean(0)) / std
    np.testing.assert_allclose(C, Z.T @ Z / len(X), atol=2e-4)
    np.testing.assert_allclose(data.mean.numpy(), Xd.mean(0), rtol=1e-6)
    assert data.n_constant == 1 and float(data.scale[5]) == 1.0


def test_operator_products_match_dense_algebra():
    """Every streamed product of the standardised blocks equals the dense product (chunks of 7 rows)."""
    import torch

    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 12)) * rng.uniform(0.5, 3, 12) + rng.uniform(-4, 4, 12)
    data = StandardizedBlocks([X[:, :5], X[:, 5:]], chunk_size=7)
    data.standardize()
    Z = (X - X.mean(0)) / X.std(0)
    V, Q = rng.standard_normal((50, 3)), rng.standard_normal((12, 3))
    np.testing.assert_allclose(data.gram().numpy(), Z @ Z.T, atol=1e-4)
    np.testing.assert_allclose(data.rmatmul(torch.from_numpy(V)).numpy(), Z.T @ V, atol=1e-4)
    np.testing.assert_allclose(data.matmul(torch.from_numpy(Q)).numpy(), Z @ Q, atol=1e-4)
    np.testing.assert_allclose(data.project(torch.from_numpy(Q)).numpy(), Z @ Q, atol=1e-4)


@pytest.mark.parametrize("n", [100, 600])  # 100: dense solver; 600: block Krylov
def test_top_eigenpairs_match_the_dense_solver(n):
    import torch

    from fnprune.analysis.blocks import _top_eigh_exact, top_eigh

    rng = np.random.default_rng(1)
    A = rng.standard_normal((2 * n, n)) * np.linspace(3, 0.5, n)   # a slowly decaying spectrum
    M = torch.from_numpy((A.T @ A).astype(np.float32))
    vals, vecs = top_eigh(M, 20, random_state=0)
    ref_vals, ref_vecs = _top_eigh_exact(M, 20)
    assert vecs.shape == (n, 20) and (vals[:-1] >= vals[1:]).all()
    np.testing.assert_allclose(vals.numpy(), ref_vals.numpy(), rtol=1e-3)
    # same subspace: every principal angle cosine ~1
    cosines = torch.linalg.svdvals(ref_vecs.T.double() @ vecs.double())
    assert float(cosines.min()) > 0.999


def test_restart_budget_and_its_validation():
    X, maps, _ = mixture()
    single = CanICA(4, n_init=1, random_state=0).fit(X)
    assert single.n_iter_.max() < 300          # a clean mixture converges well inside the paper's budget
    budgeted = CanICA(4, n_init=3, random_state=0).fit(X)
    assert budgeted.n_iter_.max() <= 50
    assert best_match(budgeted.components_, maps).min() > 0.9
    with pytest.raises(ConfigError, match="max_iter"):
        CanICA(4, max_iter=0).fit(X)


# -- a scikit-learn estimator ----------------------------------------------------------------------
def test_clone_params_round_trip_and_repr():
    from sklearn.base import clone

    ica = CanICA(5, n_init=3, subspace="gram", stable_threshold=0.8, device="cpu")
    params = ica.get_params()
    assert params["n_components"] == 5 and params["subspace"] == "gram" and params["stable_threshold"] == 0.8
    twin = clone(ica)
    assert twin is not ica and twin.get_params() == params
    assert ica.set_params(n_init=2, tol=1e-3) is ica
    assert ica.get_params() == params | {"n_init": 2, "tol": 1e-3}
    assert repr(CanICA(5, n_init=3)) == "CanICA(n_components=5, n_init=3)"
    # clone of a fitted estimator is unfitted
    X, _, _ = mixture(n_tokens=400)
    fitted = CanICA(4, n_init=2).fit(X)
    assert not hasattr(clone(fitted), "components_")


def test_fit_returns_self_sets_only_underscored_attributes_and_keeps_params():
    X, _, _ = mixture(n_tokens=400)
    ica = CanICA(4, n_init=2, max_iter=None, device="cpu")
    params = ica.get_params()
    before = set(vars(ica))
    assert ica.fit(X) is ica
    added = [a for a in set(vars(ica)) - before if not a.startswith("_")]
    assert added and all(a.endswith("_") for a in added), added
    assert {"components_", "key_score_", "mean_", "scale_", "n_features_in_", "subspace_"} <= set(added)
    assert ica.get_params() == params                 # max_iter stays None, device stays "cpu"
    assert ica.n_features_in_ == X.shape[1]


def test_fit_transform_equals_fit_then_transform():
    X, _, _ = mixture(n_tokens=400)
    np.testing.assert_array_equal(CanICA(4, n_init=2).fit_transform(X), CanICA(4, n_init=2).fit(X).transform(X))


@pytest.mark.parametrize("subspace", ["covariance", "gram", "randomized"])
def test_fit_and_transform_never_modify_their_input(subspace):
    import torch

    X, _, _ = mixture(n_tokens=400)
    X = (X + 50).astype(np.float32)                   # large means: the covariance pass shifts its chunks
    if subspace == "gram":
        X = X[:250]
    inputs = {
        "numpy float32": X.copy(),
        "numpy float64": X.astype(np.float64),
        "torch float32": torch.from_numpy(X.copy()),          # the dtype and device the chunks use
        "torch blocks": [torch.from_numpy(X[:, :100].copy()), torch.from_numpy(X[:, 100:].copy())],
    }
    readonly = X.copy()
    readonly.flags.writeable = False
    inputs["read-only numpy"] = readonly
    for name, data in inputs.items():
        blocks = data if isinstance(data, list) else [data]
        before = [b.clone() if isinstance(b, torch.Tensor) else b.copy() for b in blocks]
        ica = CanICA(4, n_init=2, subspace=subspace, chunk_size=64).fit(data)
        ica.transform(data)
        for b, b0 in zip(blocks, before, strict=True):
            same = torch.equal(b, b0) if isinstance(b, torch.Tensor) else np.array_equal(b, b0)
            assert same, f"{name} input was modified by fit/transform ({subspace})"


BAD_PARAMS = [
    ("n_components", 0, "n_components must be an integer ≥ 1"),
    ("n_components", 4.0, "n_components must be an integer"),
    ("n_components", True, "n_components must be an integer"),
    ("n_init", 0, "n_init must be an integer ≥ 1"),
    ("n_init", "8", "n_init must be an integer"),
    ("subspace", "magic", "subspace must be one of"),
    ("subspace", None, "subspace must be one of"),
    ("max_iter", 0, "max_iter must be None or an integer ≥ 1"),
    ("max_iter", 2.5, "max_iter must be None or an integer"),
    ("tol", 0.0, "tol must be a finite number > 0"),
    ("tol", float("nan"), "tol must be a finite number > 0"),
    ("tol", "1e-4", "tol must be a finite number"),
    ("n_power_iter", -1, "n_power_iter must be an integer ≥ 0"),
    ("chunk_size", 0, "chunk_size must be an integer ≥ 1"),
    ("chunk_size", None, "chunk_size must be an integer"),
    ("stable_threshold", 1.5, "stable_threshold must be a finite number ≥ 0 and ≤ 1"),
    ("stable_threshold", -0.1, "stable_threshold must be a finite number ≥ 0 and ≤ 1"),
    ("random_state", None, "random_state must be an integer"),
    ("random_state", 1.5, "random_state must be an integer"),
    ("device", "gpu0", "unknown device 'gpu0'"),
    ("device", 3, "device must be a string"),
]


@pytest.mark.parametrize(("param", "value", "message"), BAD_PARAMS, ids=[f"{p}={v!r}" for p, v, _ in BAD_PARAMS])
def test_every_bad_parameter_is_rejected_in_fit_with_a_message(param, value, message):
    import re

    from sklearn.base import clone

    X, _, _ = mixture(n_tokens=200)
    ica = CanICA(4).set_params(**{param: value})      # __init__ and set_params only store
    assert clone(ica).get_params()[param] is value
    with pytest.raises(ConfigError, match=re.escape(message)):
        ica.fit(X)


def test_every_constructor_parameter_has_a_bad_value_test():
    assert {p for p, _, _ in BAD_PARAMS} == set(CanICA().get_params())


def test_cuda_on_a_machine_without_it_is_a_config_error(monkeypatch):
    import torch

    from fnprune.errors import ModelLoadError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    X, _, _ = mixture(n_tokens=200)
    with pytest.raises(ConfigError, match="CUDA is not available") as err:
        CanICA(4, device="cuda").fit(X)
    assert not isinstance(err.value, ModelLoadError)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        CanICA(4, device=torch.device("cuda", 0)).fit(X)


# scikit-learn's own checks that make sense for an estimator whose samples are tokens and whose
# features are neurons (k=1 so its tiny test matrices are not rank-deficient). Left out: a plain list
# is a list of column blocks here (check_transformer_data_not_an_array), object arrays are not
# activations (check_dtype_object), n_iter_ is one count per restart (check_transformer_n_iter).
SKLEARN_CHECKS = [
    "check_estimator_cloneable", "check_estimator_repr", "check_no_attributes_set_in_init",
    "check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params", "check_dont_overwrite_parameters",
    "check_estimators_overwrite_params", "check_estimators_fit_returns_self", "check_fit_idempotent",
    "check_fit_check_is_fitted", "check_n_features_in", "check_n_features_in_after_fitting", "check_mixin_order",
    "check_dict_unchanged", "check_transformers_unfitted", "check_estimators_unfitted",
    "check_readonly_memmap_input", "check_f_contiguous_array_estimator", "check_estimators_nan_inf",
    "check_transformer_general", "check_estimators_dtypes", "check_fit2d_1sample", "check_fit2d_1feature",
    "check_fit1d", "check_estimators_empty_data_messages", "check_methods_subset_invariance",
    "check_methods_sample_order_invariance", "check_estimators_pickle", "check_transformer_preserve_dtypes",
    "check_pipeline_consistency", "check_complex_data", "check_fit_score_takes_y", "check_estimator_sparse_array",
]


@pytest.mark.parametrize("check", SKLEARN_CHECKS)
def test_scikit_learn_estimator_checks(check):
    import inspect
    import warnings

    from sklearn.utils import estimator_checks

    fn = getattr(estimator_checks, check)
    estimator = CanICA(1, n_init=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(inspect.signature(fn).parameters) == 1:
            fn(estimator)
        else:
            fn("CanICA", estimator)


# -- the same numbers as before the estimator refactor --------------------------------------------
# -- numerical results, checked by properties that hold on every CPU --------------------------------
# The former test compared against arrays saved on one machine; FastICA's iterates depend on the BLAS
# kernels, so its converged maps differ across CPUs by up to the convergence tolerance (issue 19).
# Instead every fitted attribute is checked against what it must equal, in float64 computed in the
# same run, with tolerances derived from float32 rounding, the eigengap and FastICA's stopping rule.
EPS32 = float(np.finfo(np.float32).eps)
CASES = {
    "cov_k4_init3": dict(n_components=4, n_init=3, subspace="covariance", random_state=1),
    "cov_k8_init4": dict(n_components=8, n_init=4, subspace="covariance", random_state=2),
    "gram_k4_init2": dict(n_components=4, n_init=2, subspace="gram", random_state=3),
    "rand_k4_init1": dict(n_components=4, n_init=1, subspace="randomized", random_state=4, n_power_iter=3),
}


def _planted(n_tokens=600, n_neurons=120, k=4, seed=0):
    """Four sparse networks with Laplace time courses, noise and a large offset (float32 data)."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((k, n_neurons))
    for i in range(k):
        maps[i, rng.choice(n_neurons, 12, replace=False)] = rng.normal(4, 1, 12)
    tc = rng.laplace(size=(n_tokens, k))
    X = (tc @ maps + 0.3 * rng.normal(size=(n_tokens, n_neurons)) + 3.0).astype(np.float32)
    return X, maps


def _case_data(name):
    X, maps = _planted()
    data = X[:100] if CASES[name]["subspace"] == "gram" else X
    fit_input = [data[:, :50], data[:, 50:]] if name == "cov_k8_init4" else data
    return data, fit_input, maps


def _float64_reference(data, k):
    """z-scored data, the correlation's eigenvalues (descending) and top-k eigenvectors, in float64."""
    D = data.astype(np.float64)
    Z = (D - D.mean(0)) / D.std(0)
    evals, evecs = np.linalg.eigh(Z.T @ Z / len(Z))
    return Z, evals[::-1], evecs[:, ::-1][:, :k]


@pytest.mark.parametrize("name", list(CASES))
def test_numerical_results_agree_with_float64_computed_in_the_same_run(name):
    kw = CASES[name]
    k = kw["n_components"]
    data, fit_input, maps = _case_data(name)
    ica = CanICA(chunk_size=256, **kw).fit(fit_input)
    again = CanICA(chunk_size=256, **kw).fit(fit_input)
    for attr in ("components_", "stability_", "key_score_", "explained_variance_", "leverage_"):
        np.testing.assert_array_equal(getattr(again, attr), getattr(ica, attr), err_msg=attr)  # same machine: bitwise

    Z, evals, U = _float64_reference(data, k)
    n_tokens = len(data)
    # column statistics (the covariance path accumulates float32 chunks: ~eps32 * sqrt(n) relative)
    np.testing.assert_allclose(ica.mean_, data.astype(np.float64).mean(0), rtol=EPS32 * np.sqrt(n_tokens))
    np.testing.assert_allclose(ica.scale_, data.astype(np.float64).std(0), rtol=10 * EPS32 * np.sqrt(n_tokens))
    # subspace: the float32 products perturb the correlation by ~eps32 * ||C|| per accumulated term;
    # a randomized range finder with q power iterations adds (lambda_{k+1} / lambda_k)^(2q + 1)
    dC = 4 * EPS32 * evals[0] * np.sqrt(n_tokens)
    power = (evals[k] / evals[k - 1]) ** (2 * kw.get("n_power_iter", 0) + 1) if kw["subspace"] == "randomized" else 0
    np.testing.assert_allclose(ica.explained_variance_, evals[:k], rtol=0, atol=dC + power * evals[0])
    gap = evals[k - 1] - evals[k]                                          # Davis-Kahan: ||dP|| <= ||dC|| / gap
    np.testing.assert_allclose(ica.leverage_, (U ** 2).sum(1), rtol=0, atol=2 * (dC / gap + power))
    assert ica.leverage_.sum() == pytest.approx(k, rel=1e-5)

    # maps: the average of R sign-aligned z-maps (unbiased std), so zero-mean with a std between its
    # projection on the reference restart's map, (1 + (R - 1) stability) / R, and 1; heavy tail positive;
    # every planted network found
    comps = ica.components_.astype(np.float64)
    assert comps.shape == (k, data.shape[1])
    np.testing.assert_allclose(comps.mean(1), 0, atol=1e-5)
    R = kw["n_init"]
    std = comps.std(1, ddof=1)
    assert (std <= 1 + 1e-5).all() and (std >= (1 + (R - 1) * ica.stability_) / R - 1e-5).all(), std
    assert ((comps ** 3).mean(1) > 0).all()
    planted = np.abs(np.corrcoef(np.vstack([comps, maps]))[:k, k:]).max(0)
    assert planted.min() > 0.85, planted            # chance level for 120 random entries is ~0.1
    assert ((ica.stability_ >= 0) & (ica.stability_ <= 1)).all()
    np.testing.assert_array_equal(ica.stable_, ica.stability_ >= ica.stable_threshold if kw["n_init"] > 1
                                  else np.ones(k, bool))
    assert (ica.n_iter_ >= 1).all() and (ica.n_iter_ <= 300).all()

    # the key score is its definition
    stable_max = np.abs(comps[ica.stable_]).max(0) if ica.stable_.any() else np.zeros(comps.shape[1])
    np.testing.assert_allclose(ica.key_score_, np.maximum(stable_max, ica.unresolved_energy_), rtol=1e-6)

    # time courses: least squares of the standardised data on the maps, in float64
    expected = Z @ np.linalg.pinv(comps)
    got = ica.transform(fit_input)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def _fastica_float64(U, k, tol=1e-13, max_iter=2000, seed=0):
    """Symmetric cube FastICA in float64 numpy, run to a much tighter tolerance than tested: the fixed point."""
    Xc = U - U.mean(0)
    d, E = np.linalg.eigh(Xc.T @ Xc / len(Xc))
    Xw = Xc @ (E / np.sqrt(d))

    def decorrelate(W):
        s, u = np.linalg.eigh(W @ W.T)
        return (u / np.sqrt(s)) @ u.T @ W

    W = decorrelate(np.random.default_rng(seed).normal(size=(k, k)))
    for _ in range(max_iter):
        S = W @ Xw.T
        W_new = decorrelate((S ** 3) @ Xw / len(Xw) - 3 * (S ** 2).mean(1)[:, None] * W)
        converged = np.abs(np.abs(np.diag(W_new @ W.T)) - 1).max() < tol
        W = W_new
        if converged:
            break
    else:
        raise AssertionError("the float64 reference did not converge")
    return Xw @ W.T, Xw


@pytest.mark.parametrize("name", ["cov_k4_init3", "gram_k4_init2"])
def test_fastica_reaches_the_float64_fixed_point(name):
    """Run to a tight tolerance, the float32-product FastICA lands on the float64 fixed point.

    FastICA stops when successive unmixing vectors satisfy ``1 - |cos θ| < tol``, so the angle to the
    fixed point is at most ``sqrt(2 tol)``; a source ``s_j = x_jᵀ w`` then moves by at most
    ``θ ||x_j||`` (Cauchy-Schwarz, ``x_j`` neuron j's whitened loading). The tolerance below is that
    bound plus float32 rounding of the products, entry by entry; the maps are identifiable here
    (planted sources, each restart finds them), so the fixed point does not depend on the start.
    """
    tol = 1e-10
    kw = dict(CASES[name], tol=tol, max_iter=2000)
    k = kw["n_components"]
    data, fit_input, _ = _case_data(name)
    ica = CanICA(chunk_size=256, **kw).fit(fit_input)
    _, _, U = _float64_reference(data, k)
    sources, Xw = _fastica_float64(U, k)
    ref = (sources - sources.mean(0)) / sources.std(0, ddof=1)            # zscore_maps' convention
    ref = (ref * np.sign((ref ** 3).sum(0))).T                               # heavy tail positive
    comps = ica.components_.astype(np.float64)
    corr = np.corrcoef(np.vstack([comps, ref]))[:k, k:]
    assert (np.abs(corr).max(1) > 0.999).all(), corr                         # the same k sources
    matched = ref[np.abs(corr).argmax(1)]
    bound = (np.sqrt(2 * tol) + 100 * EPS32) * np.linalg.norm(Xw, axis=1) * 2    # 2: z-scaling of both
    assert (np.abs(comps - matched) <= bound[None, :] + 1e-6).all(), np.abs(comps - matched).max()
    # and the stopping rule is what limits it: the default tolerance is visibly further away
    loose = CanICA(chunk_size=256, **CASES[name]).fit(fit_input).components_.astype(np.float64)
    assert np.abs(loose - matched).max() > 10 * np.abs(comps - matched).max()


def test_leverage_and_unresolved_energy():
    """leverage_ is the PCA leverage (row norms² of the top-k eigenvectors of the correlation matrix);
    the unresolved-subspace energy is 0 when every component is stable and is the key score's only
    term when none is."""
    X, _, _ = mixture(n_tokens=800)
    ica = CanICA(6, n_init=1).fit(X)
    Z = (X - X.mean(0)) / X.std(0)
    _, vecs = np.linalg.eigh(Z.T @ Z / len(Z))
    np.testing.assert_allclose(ica.leverage_, (vecs[:, -6:] ** 2).sum(1), atol=1e-4)
    assert ica.leverage_.sum() == pytest.approx(6, rel=1e-4)
    assert ica.stable_.all() and (ica.unresolved_energy_ == 0).all()
    nothing_stable = CanICA(6, n_init=3, stable_threshold=1.0).fit(X)
    assert not nothing_stable.stable_.any()
    np.testing.assert_array_equal(nothing_stable.key_score_, nothing_stable.unresolved_energy_)
    # the unresolved energy is seed-free: a rotation-invariant function of the subspace
    other_seed = CanICA(6, n_init=3, stable_threshold=1.0, random_state=7).fit(X)
    np.testing.assert_allclose(other_seed.unresolved_energy_, nothing_stable.unresolved_energy_, rtol=0.02, atol=0.02)
    np.testing.assert_array_equal(nothing_stable.residual_score_, nothing_stable.unresolved_energy_)  # old name


def test_transform_rejects_non_finite_data_with_a_count():
    X, _, _ = mixture(n_tokens=400)
    ica = CanICA(4, n_init=2).fit(X)
    bad = X.copy()
    bad[10, :3] = np.inf
    with pytest.raises(ConfigError, match=r"3 non-finite values \(NaN/inf\) in rows 0\.\.400"):
        ica.transform(bad)
