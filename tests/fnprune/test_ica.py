"""CanICA on synthetic mixtures with known sources, and its bad inputs."""

import numpy as np
import pytest

from fnprune.errors import ConfigError
from fnprune.ica import CanICA, fastica


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


def test_covariance_pass_matches_float64_correlation_despite_large_means():
    from fnprune.ica import _Blocks

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((3000, 40)) @ rng.standard_normal((40, 40)) + 1e3).astype(np.float32)
    X[:, 5] = 7.0  # a constant column
    ica = CanICA(4, chunk_size=512)
    C = ica._covariance_pass(_Blocks(X), "cpu").numpy() / len(X)
    Xd = X.astype(np.float64)
    std = Xd.std(0)
    std[5] = 1.0
    Z = (Xd - Xd.mean(0)) / std
    np.testing.assert_allclose(C, Z.T @ Z / len(X), atol=2e-4)
    np.testing.assert_allclose(ica.mean_, Xd.mean(0), rtol=1e-6)
    assert ica.n_constant_ == 1 and ica.scale_[5] == 1.0


@pytest.mark.parametrize("n", [100, 600])  # 100: dense solver; 600: block Krylov
def test_top_eigenpairs_match_the_dense_solver(n):
    import torch

    from fnprune.ica import _top_eigh, _top_eigh_exact

    rng = np.random.default_rng(1)
    A = rng.standard_normal((2 * n, n)) * np.linspace(3, 0.5, n)   # a slowly decaying spectrum
    M = torch.from_numpy((A.T @ A).astype(np.float32))
    vals, vecs = _top_eigh(M, 20, random_state=0)
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
