"""One image loader for every study: `load(name, root=None)` -> Images(train, test), each a Split
with `images` uint8 [N, H, W, C] and `labels` int32 [N].

- "fashion_mnist": Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/
  {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (IDX), 60k / 10k, 28×28×1, 10 classes.
- "cifar10", "cifar100": the standard python batches under a user path (`root`, or $CIFAR10 /
  $CIFAR100): cifar-10-batches-py/data_batch_1..5, test_batch; cifar-100-python/train, test
  (label="fine" or "coarse"). They are pickles; they are read with an unpickler that admits only
  the dict / list / bytes / NumPy-array pieces those files contain and refuses any other global,
  so a crafted file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_FASHION = (
    "install it with `apt-get update && apt-get install -y dataset-fashion-mnist` (or `make data`)"
)


class Split(NamedTuple):
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]


class Images(NamedTuple):
    name: str
    source: str
    classes: int
    train: Split
    test: Split


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # unsigned byte IDX
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    dims = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {body.size} bytes for a shape {shape}; the file is truncated")
    return body.reshape(shape)


def _fashion(root: Path) -> Images:
    files = {
        (split, kind): root / f"{prefix}-{kind}-ubyte.gz"
        for split, prefix in (("train", "train"), ("test", "t10k"))
        for kind in ("images-idx3", "labels-idx1")
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ValueError(f"Fashion-MNIST files missing: {missing}; {HOW_TO_FASHION}")
    splits = {
        split: Split(
            _idx(files[(split, "images-idx3")])[..., None],
            _idx(files[(split, "labels-idx1")]).astype(np.int32),
        )
        for split in ("train", "test")
    }
    return Images("fashion_mnist", str(root), 10, splits["train"], splits["test"])


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's python batches hold: NumPy arrays and their dtypes."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing {module}.{name}: CIFAR batches hold only dicts, lists, bytes and arrays"
        )


def _batch(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: point root (or $CIFAR10 / $CIFAR100) at the python batches"
        )
    with open(path, "rb") as handle:
        data = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a CIFAR batch dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_split(batches, key) -> Split:
    images = np.concatenate([np.asarray(b["data"], np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[key], np.int32) for b in batches])
    return Split(images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)


def _cifar(name: str, root: Path, label: str) -> Images:
    if name == "cifar10":
        base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        train = [_batch(base / f"data_batch_{i}") for i in range(1, 6)]
        test = [_batch(base / "test_batch")]
        key, classes = "labels", 10
    else:
        base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        train, test = [_batch(base / "train")], [_batch(base / "test")]
        if label not in ("fine", "coarse"):
            raise ValueError(f"cifar100 label must be 'fine' or 'coarse', got {label!r}")
        key, classes = f"{label}_labels", 100 if label == "fine" else 20
    return Images(name, str(base), classes, _cifar_split(train, key), _cifar_split(test, key))


def load(name: str, root: str | os.PathLike | None = None, label: str = "fine") -> Images:
    """The dataset `name` ("fashion_mnist", "cifar10", "cifar100")."""
    if name == "fashion_mnist":
        return _fashion(Path(root) if root else FASHION_MNIST)
    if name in ("cifar10", "cifar100"):
        root = root or os.environ.get(name.upper())
        if not root:
            raise ValueError(
                f"{name} is not installed here: pass root= or set ${name.upper()} to the directory "
                "of the python batches (it cannot be downloaded on these machines)"
            )
        return _cifar(name, Path(root), label)
    raise ValueError(f"unknown image dataset {name!r}; known: fashion_mnist, cifar10, cifar100")
