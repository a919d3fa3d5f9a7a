"""Seed stability of networks on synthetic problems whose answer is known."""

import numpy as np
import pytest

from fnprune.analysis.ica import CanICA
from fnprune.analysis.stability import (
    SeedFit,
    chance_jaccard,
    fit_summary,
    fold_signals,
    jaccard,
    match_maps,
    reproducible_components,
    seed_stability,
    top_set,
)
from fnprune.errors import ConfigError


def planted_fits(n_fits=5, n_planted=6, n_random=4, n=400, seed=0):
    """Fits that share ``n_planted`` sparse maps (permuted, sign-flipped, slightly noisy) and each have
    ``n_random`` maps of their own. Planted neurons are in the first half of the columns."""
    rng = np.random.default_rng(seed)
    planted = np.zeros((n_planted, n))
    support = rng.permutation(n // 2)[:10 * n_planted].reshape(n_planted, 10)      # disjoint networks
    for i in range(n_planted):
        planted[i, support[i]] = rng.normal(6, 0.3, 10)                           # z ≈ 6
    fits = []
    for _ in range(n_fits):
        maps = np.concatenate([planted + 0.1 * rng.standard_normal(planted.shape),
                               rng.standard_normal((n_random, n))])
        maps *= rng.choice([-1, 1], size=(len(maps), 1))
        maps = maps[rng.permutation(len(maps))]
        maps = (maps - maps.mean(1, keepdims=True)) / maps.std(1, keepdims=True)
        fits.append(SeedFit(maps))
    return fits


def test_planted_maps_are_the_reproducible_ones():
    fits = planted_fits()
    assert [int(r.sum()) for r in reproducible_components(fits)] == [6] * 5
    result = seed_stability(fits, budget=60)
    assert result.n_reproducible == [6] * 5 and result.n_networks == [10] * 5
    # 6 x 10 planted neurons with |z| far above the random maps' tails: the key set is exactly them
    assert result.key_share_reproducible == 1.0 and result.key_share_unresolved == 0.0
    assert result.mask_jaccard["min"] == 1.0
    assert result.leverage_jaccard is None                      # no leverage given: no control
    assert result.chance_jaccard == pytest.approx(chance_jaccard(60, 60, 400))


def test_a_map_missing_from_one_seed_is_not_reproduced():
    fits = planted_fits(n_fits=3, n_planted=3, n_random=0)
    fits[2] = SeedFit(np.concatenate([fits[2].maps[:2], np.random.default_rng(9).standard_normal((1, 400))]))
    counts = [int(r.sum()) for r in reproducible_components(fits)]
    assert counts == [2, 2, 2]


def test_random_key_sets_agree_at_the_chance_level():
    rng = np.random.default_rng(1)
    n, budget = 3000, 900
    fits = [SeedFit(rng.standard_normal((8, n)), leverage=rng.random(n)) for _ in range(6)]
    result = seed_stability(fits, budget=budget)
    chance = chance_jaccard(budget, budget, n)                  # 270 / 1530 = 0.176
    assert chance == pytest.approx(270 / 1530)
    assert abs(result.mask_jaccard["mean"] - chance) < 0.02
    assert abs(result.leverage_jaccard["mean"] - chance) < 0.03
    assert result.n_reproducible == [0] * 6


def test_chance_jaccard_matches_simulation_and_edge_cases():
    rng = np.random.default_rng(2)
    sims = [jaccard(rng.choice(500, 120, replace=False), rng.choice(500, 300, replace=False)) for _ in range(400)]
    assert chance_jaccard(120, 300, 500) == pytest.approx(np.mean(sims), abs=0.01)
    assert chance_jaccard(10, 10, 10) == 1.0 and chance_jaccard(5, 5, 10) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError):
        chance_jaccard(11, 1, 10)


def test_unresolved_energy_is_credited_and_leverage_control_matches_it():
    """A fit whose components are all unresolved: every key neuron comes from the unresolved energy,
    and when that energy ranks neurons like the leverage does, the leverage mask is the key mask."""
    rng = np.random.default_rng(3)
    n = 500
    leverage = rng.random(n)
    fits = [SeedFit(rng.standard_normal((5, n)), networks=np.zeros(5, bool), unresolved=3 * np.sqrt(leverage),
                    leverage=leverage) for _ in range(3)]
    result = seed_stability(fits, budget=200)
    assert result.key_share_unresolved == 1.0 and result.key_share_reproducible == 0.0
    assert result.mask_jaccard["min"] == 1.0                    # seed-free: identical masks ...
    assert result.leverage_jaccard["min"] == 1.0                # ... and exactly the leverage control
    assert result.n_reproducible_networks == [0, 0, 0]


def test_non_reproduced_networks_are_their_own_share():
    fits = planted_fits(n_fits=3, n_planted=2, n_random=3)
    # the random maps of each fit get one huge neuron each: key, but from a network no other seed has
    for i, fit in enumerate(fits):
        reproduced = reproducible_components(fits)[i]
        for c in np.flatnonzero(~reproduced):
            fit.maps[c, 300 + 10 * i + c] = 50.0
    result = seed_stability(fits, budget=23)                    # 2 x 10 planted + 3 spikes
    assert result.key_share_other_networks == pytest.approx(3 / 23)
    assert result.key_share_reproducible == pytest.approx(20 / 23)
    assert result.key_share_unresolved == 0.0


def test_signals_are_folded_per_neuron():
    scores = np.array([1.0, 5.0, 2.0, 4.0, 0.0, 3.0])          # 2 signals x 3 neurons
    np.testing.assert_array_equal(fold_signals(scores, 3), [4.0, 5.0, 3.0])
    np.testing.assert_array_equal(top_set([1, 3, 3, 0], 2), [1, 2])
    with pytest.raises(ConfigError, match="does not divide"):
        fold_signals(scores, 4)


def test_match_maps_handles_sign_and_order():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 50))
    np.testing.assert_allclose(match_maps(a, -a[::-1]), 1.0)


def test_bad_arguments():
    fits = planted_fits(n_fits=2)
    with pytest.raises(ConfigError, match="at least two"):
        seed_stability(fits[:1], budget=10)
    with pytest.raises(ConfigError, match="budget"):
        seed_stability(fits, budget=0)
    with pytest.raises(ConfigError, match="different numbers of columns"):
        seed_stability([fits[0], SeedFit(np.ones((2, 5)))], budget=3)
    with pytest.raises(ConfigError, match="min_corr"):
        seed_stability(fits, budget=3, min_corr=0)
    with pytest.raises(ConfigError, match="one value per map column"):
        SeedFit(np.ones((2, 5)), unresolved=np.ones(4))


def planted_activations(k: int, seed: int, n_neurons: int = 300, n_tokens: int = 2000) -> np.ndarray:
    """(n_tokens, n_neurons): k sparse planted maps (15 neurons each) driven by Laplace sources, plus noise."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((k, n_neurons))
    for i in range(k):
        maps[i, rng.choice(n_neurons, 15, replace=False)] = rng.normal(4, 1, 15)
    return rng.laplace(size=(n_tokens, k)) @ maps + 0.2 * rng.normal(size=(n_tokens, n_neurons))


def test_canica_recovers_planted_networks_across_seeds():
    """End to end: 4 planted sparse sources, 3 seeds of CanICA: all 4 networks reproduced, every key
    neuron (the planted ones) from a reproducible network, identical masks, a fit summary that agrees."""
    k = 4
    X = planted_activations(k, seed=0)
    fits = [CanICA(k, n_init=3, random_state=seed).fit(X) for seed in (0, 1, 2)]
    result = seed_stability(fits, budget=50, width=150)         # two "signals" of 150 neurons
    assert result.n_reproducible == [4, 4, 4] and result.n_reproducible_networks == [4, 4, 4]
    assert result.key_share_reproducible == 1.0
    assert result.mask_jaccard["min"] > 0.9
    assert 0 <= result.leverage_jaccard["mean"] <= 1
    summary = fit_summary(fits[0], threshold=3.0, shape=(1, 2, 150))
    assert summary["n_stable"] == 4 and summary["unresolved_dim"] == 0
    assert summary["n_key"] > 0 and summary["key_from_networks"] == 1.0 and summary["key_from_unresolved"] == 0.0


def test_seed_check_counts_the_seeds_each_network_comes_back_in():
    """seed_check refits with other seeds: the 4 planted networks come back in both other seeds, noise
    directions do not always; the statistics are seed_stability's over all fits."""
    from fnprune.analysis.stability import seed_check

    k = 4
    X = planted_activations(k, seed=1)
    ica = CanICA(k, n_init=3, random_state=0).fit(X)
    reproduced, stats = seed_check(ica, X, 2, budget=50, width=150)
    assert reproduced.tolist() == [2, 2, 2, 2]
    expected = seed_stability([ica] + [CanICA(k, n_init=3, random_state=s * 7919).fit(X) for s in (1, 2)],
                              budget=50, width=150)
    assert stats["n_seeds"] == 3 and stats["n_reproducible"] == expected.n_reproducible[0] == 4
    assert stats["key_share_reproducible"] == expected.key_share_reproducible == 1.0
    assert stats["mask_jaccard"] == expected.mask_jaccard
    # 12 components beyond the planted ones: those (ordered first, by stability x kurtosis) come back
    # in both other seeds; some of the noise directions do not
    wide = CanICA(16, n_init=3, random_state=0).fit(X)
    counts, no_stats = seed_check(wide, X, 2, budget=None)
    assert no_stats is None and counts[:4].tolist() == [2, 2, 2, 2] and counts.min() == 0
    with pytest.raises(ConfigError, match="positive number"):
        seed_check(ica, X, 0, budget=10)
