"""The shared image loader: Fashion-MNIST from the Debian package, CIFAR from a tiny file written
in the exact python-batch layout, and a crafted pickle refused instead of executed."""

import os
import pickle

import numpy as np
import pytest

from experiments.data import images


@pytest.mark.skipif(not images.FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    data = images.load("fashion_mnist")
    assert data.train.images.shape == (60000, 28, 28, 1) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (10000, 28, 28, 1)
    assert set(np.unique(data.train.labels)) == set(range(10))
    assert np.bincount(data.test.labels).tolist() == [1000] * 10


def _write_cifar10(root, n=4):
    base = root / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    return base


def test_cifar10_python_batches(tmp_path):
    base = _write_cifar10(tmp_path)
    data = images.load("cifar10", tmp_path)
    assert data.train.images.shape == (20, 32, 32, 3) and data.test.images.shape == (4, 32, 32, 3)
    raw = pickle.loads((base / "data_batch_1").read_bytes())[b"data"][0]
    np.testing.assert_array_equal(data.train.images[0, :, :, 0].ravel(), raw[:1024])  # R plane


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/credit_pickle_exploit",))


def test_a_crafted_pickle_is_refused_not_run(tmp_path):
    base = _write_cifar10(tmp_path)
    (base / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        images.load("cifar10", tmp_path)
    assert not os.path.exists("/tmp/credit_pickle_exploit")


def test_missing_data_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10", raising=False)
    with pytest.raises(ValueError, match=r"set \$CIFAR10"):
        images.load("cifar10")
    with pytest.raises(ValueError, match="dataset-fashion-mnist"):
        images.load("fashion_mnist", tmp_path)
    with pytest.raises(ValueError, match="unknown image dataset"):
        images.load("mnist")
