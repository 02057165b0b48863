"""Byte corpora for language modelling: enwik8 when the user has it, else the GCIDE stand-in.

Lookup order: an explicit path, $ENWIK8, data/enwik8, data/enwik8.zip, then GCIDE from Debian's
dict-gcide (/usr/share/dictd/gcide.dict.dz, a dictzip file that gzip reads), labelled as a stand-in.
enwik8 uses the standard 90M/5M/5M split; any other corpus is split 90%/5%/5% in order.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

ENWIK8_BYTES = 100_000_000
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)
GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")
HOW_TO_PROVIDE = (
    "provide enwik8 as $ENWIK8 or data/enwik8[.zip] (the zip holds one member 'enwik8'), "
    "or install the stand-in corpus with `apt-get update && apt-get install -y dict-gcide` "
    "(or `make data`)"
)


class Corpus(NamedTuple):
    """A byte corpus split in order into train / valid / test (uint8 arrays)."""

    name: str  # "enwik8" or "gcide"
    source: str  # the file it was read from
    is_standin: bool  # True when this is not enwik8
    train: np.ndarray  # uint8 [n_train]
    valid: np.ndarray  # uint8 [n_valid]
    test: np.ndarray  # uint8 [n_test]

    def describe(self) -> str:
        """One line naming the corpus and its split sizes, printed above every table."""
        label = "GCIDE dictionary, a STAND-IN for enwik8" if self.is_standin else "enwik8"
        return (
            f"Data: {label} ({self.source}); bytes train/valid/test = "
            f"{self.train.size:,}/{self.valid.size:,}/{self.test.size:,}"
        )

    def summary(self) -> dict:
        return {
            "corpus": self.name,
            "source": self.source,
            "is_standin": self.is_standin,
            "train_bytes": int(self.train.size),
            "valid_bytes": int(self.valid.size),
            "test_bytes": int(self.test.size),
        }


def _read_zip(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "enwik8" not in names:
                raise ValueError(f"{path} holds {names}, not the member 'enwik8'; {HOW_TO_PROVIDE}")
            return archive.read("enwik8")
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable zip ({err}); re-download enwik8.zip or unzip it to "
            f"data/enwik8"
        ) from err


def _read_enwik8(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"enwik8 path {path} does not exist; {HOW_TO_PROVIDE}")
    return _read_zip(path) if path.suffix == ".zip" else path.read_bytes()


def _split(data: bytes, sizes: tuple[int, int, int] | None):
    array = np.frombuffer(data, dtype=np.uint8)
    if sizes is None:
        n_train = int(0.9 * array.size)
        n_valid = int(0.05 * array.size)
        sizes = (n_train, n_valid, array.size - n_train - n_valid)
    n_train, n_valid, n_test = sizes
    return (
        array[:n_train],
        array[n_train : n_train + n_valid],
        array[n_train + n_valid : n_train + n_valid + n_test],
    )


def find_enwik8(data_dir: str | os.PathLike = "data") -> Path | None:
    """Where enwik8 is, if anywhere: $ENWIK8, data/enwik8, data/enwik8.zip."""
    env = os.environ.get("ENWIK8")
    if env:
        return Path(env)
    for candidate in (Path(data_dir) / "enwik8", Path(data_dir) / "enwik8.zip"):
        if candidate.is_file():
            return candidate
    return None


def load_corpus(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike = "data",
    gcide_path: str | os.PathLike = GCIDE_PATH,
) -> Corpus:
    """Loads enwik8 (standard split) or, when absent, the GCIDE stand-in with a warning.

    Args:
      path: explicit enwik8 file or zip (overrides the lookup).
      data_dir: where to look for enwik8 / enwik8.zip.
      gcide_path: the dictzip file of the stand-in corpus.
    Raises:
      ValueError naming the fix when nothing readable is found or a file is corrupt.
    """
    enwik8 = Path(path) if path is not None else find_enwik8(data_dir)
    if enwik8 is not None:
        data = _read_enwik8(enwik8)
        if len(data) == ENWIK8_BYTES:
            sizes = ENWIK8_SPLIT
        else:
            sizes = None
            warnings.warn(
                f"{enwik8} holds {len(data):,} bytes, not enwik8's {ENWIK8_BYTES:,}; "
                "splitting 90/5/5 by proportion",
                stacklevel=2,
            )
        return Corpus("enwik8", str(enwik8), False, *_split(data, sizes))
    gcide = Path(gcide_path)
    if not gcide.is_file():
        raise ValueError(
            f"no text corpus found: looked for $ENWIK8, {Path(data_dir) / 'enwik8'}, "
            f"{Path(data_dir) / 'enwik8.zip'} and the stand-in {gcide}; {HOW_TO_PROVIDE}"
        )
    try:
        with gzip.open(gcide) as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(
            f"{gcide} is not readable as gzip ({err}); reinstall it with "
            "`apt-get install --reinstall dict-gcide`"
        ) from err
    warnings.warn(
        "enwik8 not found: using the GCIDE dictionary as a stand-in corpus (results are labelled); "
        + HOW_TO_PROVIDE,
        stacklevel=2,
    )
    return Corpus("gcide", str(gcide), True, *_split(data, None))


def random_windows(split: np.ndarray, batch: int, length: int, seed: int, step: int) -> np.ndarray:
    """Batch `step` of a seeded sampler: `batch` random windows of `length` bytes, int32 [B, T].

    Stateless in `step`, so two trainers given the same seed see the same batches in the same
    order, and a resumed run needs only the step index.
    """
    if split.size < length + 1:
        raise ValueError(
            f"split of {split.size:,} bytes is too small for windows of {length} bytes; "
            "lower seq_len or provide a larger corpus"
        )
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, split.size - length + 1, size=batch)
    return np.stack([split[s : s + length] for s in starts]).astype(np.int32)


def eval_streams(split: np.ndarray, n_streams: int, window: int, cap: int):
    """The first `cap` bytes of a split (all if cap = 0) as n_streams contiguous rows.

    Row i is bytes [i·M, (i+1)·M] (M + 1 bytes, M a multiple of window), so the S·M scored
    predictions are bytes 1 .. S·M of the split, each exactly once. Returns (int32 [S, M+1], S·M).
    """
    available = split.size if cap == 0 else min(cap, split.size)
    per_stream = (available - 1) // n_streams // window * window
    if per_stream < window:
        raise ValueError(
            f"an evaluation split of {available:,} bytes cannot fill {n_streams} streams of one "
            f"{window}-byte window; lower eval.streams / eval.window or raise the byte cap"
        )
    rows = [split[i * per_stream : (i + 1) * per_stream + 1] for i in range(n_streams)]
    return np.stack(rows).astype(np.int32), n_streams * per_stream
