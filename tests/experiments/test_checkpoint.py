"""Checkpoint round trip: values, writability of restored buffers, corruption fallback."""

import numpy as np
import pytest

from experiments import checkpoint


def test_round_trip_restores_values_as_writable_arrays(tmp_path):
    store = {"loss": np.arange(6.0).reshape(2, 3), "count": np.array([3], np.int32)}
    checkpoint.save(tmp_path, {"step": 7}, store)
    meta, arrays, _ = checkpoint.load_latest(tmp_path)
    restored = checkpoint.restore(
        {"loss": np.zeros((2, 3)), "count": np.zeros(1, np.int32)}, arrays
    )
    assert meta == {"step": 7}
    np.testing.assert_array_equal(restored["loss"], store["loss"])
    restored["loss"][0, 0] = -1.0  # resumed runs fill restored buffers in place
    assert restored["loss"][0, 0] == -1.0


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    checkpoint.save(tmp_path, {"step": 1}, {"x": np.ones(2)})
    newest = checkpoint.save(tmp_path, {"step": 2}, {"x": np.full(2, 2.0)})
    newest.write_bytes(newest.read_bytes()[:-5])
    with pytest.warns(UserWarning, match="checksum mismatch"):
        meta, arrays, _ = checkpoint.load_latest(tmp_path)
    assert meta == {"step": 1}
    np.testing.assert_array_equal(arrays["x"], np.ones(2))


def test_shape_mismatch_is_reported(tmp_path):
    checkpoint.save(tmp_path, {}, {"x": np.ones(2)})
    _, arrays, _ = checkpoint.load_latest(tmp_path)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="do not match"):
        checkpoint.restore({"x": np.ones(3)}, arrays)
