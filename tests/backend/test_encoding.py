import numpy as np

from backend.app.services import encoding


def test_int8_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 2, 100)).astype(np.float32) * 4
    enc = encoding.int8_array(values)
    back = encoding.decode(enc)
    assert back.shape == values.shape
    assert np.abs(back - values).max() <= enc["scale"] / 2 + 1e-6


def test_uint8_counts_and_scaled():
    counts = encoding.decode(encoding.uint8_array(np.array([[0, 3, 300]]), quantise=False))
    assert counts.tolist() == [[0, 3, 255]]
    enc = encoding.uint8_array(np.array([0.0, 2.0, 10.0]), quantise=True)
    assert np.allclose(encoding.decode(enc), [0, 2, 10], atol=enc["scale"])


def test_grid_and_helpers():
    assert encoding.grid_shape(1536) == [39, 40]
    assert encoding.grid_shape(64) == [8, 8]
    rows, cols = encoding.grid_shape(1000)
    assert rows * cols >= 1000
    assert len(encoding.subsample_indices(10_000, 100)) == 100
    hist = encoding.histogram(np.arange(100), bins=10)
    assert sum(hist["counts"]) == 100 and len(hist["edges"]) == 11
