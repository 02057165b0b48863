"""Online streams backed by files, as `rtrl.tasks.TaskSpec`s (the RTRL studies' data-backed tasks).

- "text_shift": character-level next-character prediction on English, then Python source. English
  is the GCIDE dictionary from Debian's dict-gcide (a STAND-IN for the immediate-derivative paper's
  Shakespeare, labelled as such in every table); Python is the interpreter's own standard library
  (the top-level `*.py` files of `sysconfig`'s stdlib directory, sorted by name). Characters are
  the 95 printable ASCII bytes, newline and one symbol for every other byte (VOCAB = 97), one-hot
  in and out, cross-entropy. Each seed reads `shift_at` characters of English from a random
  offset, then `length − shift_at` of Python from another; the first SOURCE_BYTES of each source
  are kept (so the program embeds a few MB at most).
"""

from __future__ import annotations

import functools
import gzip
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.data.text import GCIDE_PATH, HOW_TO_PROVIDE
from rtrl import tasks

VOCAB = 97  # 95 printable ASCII (32..126), newline, other
SOURCE_BYTES = 2_000_000


def encode(data: bytes) -> np.ndarray:
    """Bytes -> symbols [N] int32: printable b ↦ b − 32, newline ↦ 95, anything else ↦ 96."""
    raw = np.frombuffer(data, np.uint8).astype(np.int32)
    out = np.full(raw.shape, 96, np.int32)
    printable = (raw >= 32) & (raw <= 126)
    out[printable] = raw[printable] - 32
    out[raw == 10] = 95
    return out


@functools.cache
def english(path: str = str(GCIDE_PATH)) -> np.ndarray:
    if not Path(path).is_file():
        raise ValueError(f"the English stand-in {path} is missing; {HOW_TO_PROVIDE}")
    with gzip.open(path) as handle:
        return encode(handle.read(SOURCE_BYTES))


@functools.cache
def python_source() -> np.ndarray:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise ValueError(f"no Python sources under {stdlib}; point sysconfig's stdlib at them")
    data, total = [], 0
    for f in files:
        data.append(f.read_bytes())
        total += len(data[-1])
        if total >= SOURCE_BYTES:
            break
    return encode(b"".join(data)[:SOURCE_BYTES])


def _text_shift(key, *, length, shift_at, first, second):
    k1, k2 = jax.random.split(key)
    n1, n2 = shift_at + 1, length - shift_at
    a = jax.random.randint(k1, (), 0, first.shape[0] - n1)
    b = jax.random.randint(k2, (), 0, second.shape[0] - n2)
    symbols = jnp.concatenate(
        [jax.lax.dynamic_slice(first, (a,), (n1,)), jax.lax.dynamic_slice(second, (b,), (n2,))]
    )  # [length + 1]: the target of the last English step is English
    onehot = jax.nn.one_hot(symbols, VOCAB)
    return tasks.Stream(xs=onehot[:-1], ys=onehot[1:], weights=jnp.ones(length))


def text_shift(*, length: int = 40_000, shift_at: int = 20_000) -> tasks.TaskSpec:
    if not 0 < shift_at < length:
        raise ValueError(f"need 0 < shift_at < length, got {shift_at}, {length}")
    first, second = jnp.asarray(english()), jnp.asarray(python_source())
    make = functools.partial(
        _text_shift, length=length, shift_at=shift_at, first=first, second=second
    )
    return tasks.TaskSpec("text_shift", VOCAB, VOCAB, "xent", length, (shift_at,), make)


TASKS = {"text_shift": text_shift}


def describe(name: str) -> str:
    """The data line every table of a data-backed task prints."""
    if name == "text_shift":
        return (
            "Data: English = the GCIDE dictionary (Debian dict-gcide), a STAND-IN for the "
            "paper's Shakespeare; Python = this interpreter's standard library "
            f"({sysconfig.get_paths()['stdlib']}/*.py); {VOCAB} symbols."
        )
    return ""
