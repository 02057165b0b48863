"""Text corpus loader: enwik8 zip/raw, the GCIDE stand-in, clear errors, the window sampler."""

import gzip
import zipfile

import numpy as np
import pytest

from experiments.data import text

CONTENT = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture(autouse=True)
def _no_enwik8_env(monkeypatch):
    monkeypatch.delenv("ENWIK8", raising=False)


def _zip(path, member="enwik8", data=CONTENT):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def test_enwik8_zip_in_data_dir_split_in_order(tmp_path):
    _zip(tmp_path / "enwik8.zip")
    with pytest.warns(UserWarning, match="by proportion"):
        corpus = text.load_corpus(data_dir=tmp_path, gcide_path=tmp_path / "none.dz")
    assert corpus.name == "enwik8" and not corpus.is_standin
    assert (corpus.train.size, corpus.valid.size, corpus.test.size) == (9216, 512, 512)
    joined = np.concatenate([corpus.train, corpus.valid, corpus.test]).tobytes()
    assert joined == CONTENT
    assert "enwik8" in corpus.describe() and "STAND-IN" not in corpus.describe()


def test_enwik8_standard_split_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "ENWIK8_BYTES", 1000)
    monkeypatch.setattr(text, "ENWIK8_SPLIT", (900, 50, 50))
    (tmp_path / "enwik8").write_bytes(bytes(1000))
    monkeypatch.setenv("ENWIK8", str(tmp_path / "enwik8"))
    corpus = text.load_corpus(data_dir=tmp_path / "elsewhere")
    assert (corpus.train.size, corpus.valid.size, corpus.test.size) == (900, 50, 50)


def test_gcide_standin_is_labelled(tmp_path):
    dz = tmp_path / "gcide.dict.dz"
    with gzip.open(dz, "wb") as handle:
        handle.write(CONTENT)
    with pytest.warns(UserWarning, match="stand-in"):
        corpus = text.load_corpus(data_dir=tmp_path, gcide_path=dz)
    assert corpus.is_standin and corpus.name == "gcide"
    assert "STAND-IN" in corpus.describe() and corpus.summary()["is_standin"] is True
    assert corpus.train.size + corpus.valid.size + corpus.test.size == len(CONTENT)


def test_real_gcide_slice_is_english():
    if not text.GCIDE_PATH.is_file():
        pytest.fail("dict-gcide is not installed: run `make data`")
    with pytest.warns(UserWarning):
        corpus = text.load_corpus(data_dir="/nonexistent")
    assert 35_000_000 < corpus.train.size < 40_000_000
    sample = corpus.train[:100_000].tobytes()
    assert sample.count(b"the") > 200


def test_missing_and_corrupt_files_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="apt-get install -y dict-gcide"):
        text.load_corpus(data_dir=tmp_path, gcide_path=tmp_path / "none.dz")
    (tmp_path / "enwik8.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        text.load_corpus(data_dir=tmp_path)
    with pytest.raises(ValueError, match="not the member 'enwik8'"):
        text.load_corpus(path=_zip(tmp_path / "other.zip", member="wrong"))
    with pytest.raises(ValueError, match="does not exist"):
        text.load_corpus(path=tmp_path / "missing.zip")


def test_random_windows_are_seeded_and_stateless():
    split = np.arange(1000, dtype=np.int64).astype(np.uint8)
    a = text.random_windows(split, 4, 17, seed=3, step=5)
    b = text.random_windows(split, 4, 17, seed=3, step=5)
    c = text.random_windows(split, 4, 17, seed=3, step=6)
    assert a.shape == (4, 17) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Windows are contiguous slices of the split.
    assert np.all((np.diff(a, axis=1) % 256) == 1)
    with pytest.raises(ValueError, match="too small for windows"):
        text.random_windows(split[:10], 1, 17, seed=0, step=0)
