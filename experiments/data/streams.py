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
CORPORA = {"english": english, "python": python_source}  # symbol arrays for pretraining


def describe(name: str) -> str:
    """The data line every table of a data-backed task prints."""
    if name == "text_shift":
        return (
            "Data: English = the GCIDE dictionary (Debian dict-gcide), a STAND-IN for the "
            "paper's Shakespeare; Python = this interpreter's standard library "
            f"({sysconfig.get_paths()['stdlib']}/*.py); {VOCAB} symbols."
        )
    return ""


# ---------------------------------------------------------------------------------------------
# River's synthetic classification streams (the optional extra `credit[streaming]`)

RIVER_HINT = "install River with `pip install -e '.[streaming]'` (or `make install`)"


def _river():
    try:
        import river  # noqa: F401
        from river.datasets import synth
    except ImportError as err:  # an optional dependency: say how to get it
        raise ValueError(f"this stream needs River ({err}); {RIVER_HINT}") from None
    return synth


def river_generator(name: str, seed: int, options: dict):
    """River's generator for a seed. hyperplane: `synth.Hyperplane(seed, n_features,
    n_drift_features, mag_change, noise_percentage, sigma)`; random_rbf: `synth.RandomRBFDrift(
    seed_model=seed, seed_sample=seed + 1, n_classes, n_features, n_centroids, change_speed,
    n_drift_centroids)`."""
    synth = _river()
    options = {k: v for k, v in options.items() if k != "length"}
    if name == "hyperplane":
        return synth.Hyperplane(seed=seed, **options)
    return synth.RandomRBFDrift(seed_model=seed, seed_sample=seed + 1, **options)


HYPERPLANE = {  # Gomes et al. 2017's HYPER stream where it states values, River's defaults else
    "n_features": 10,
    "n_drift_features": 2,  # River's default (the ARF paper does not list it)
    "mag_change": 0.001,  # the ARF paper's HYPER: t = 0.001 (River's default 0 means no drift)
    "noise_percentage": 0.05,  # the ARF paper: 5% noise
    "sigma": 0.1,  # River's default
}
RANDOM_RBF = {  # the case where trees should win: moving centroids (ours, documented)
    "n_classes": 2,
    "n_features": 10,
    "n_centroids": 50,
    "change_speed": 0.001,
    "n_drift_centroids": 50,
}


def river_streams(name: str, seeds, *, length: int = 200_000, **options) -> tasks.Stream:
    """The seeds' River streams stacked: xs [S, T, n_features] (features in key order),
    ys [S, T, n_classes] one-hot labels (the label of sample t is scored at step t), weights 1."""
    defaults = HYPERPLANE if name == "hyperplane" else RANDOM_RBF
    options = {**defaults, **options}
    n_classes = options.get("n_classes", 2)
    xs, ys = [], []
    for seed in seeds:
        rows = list(river_generator(name, int(seed), options).take(length))
        xs.append(np.asarray([[x[k] for k in sorted(x)] for x, _ in rows], np.float32))
        ys.append(np.eye(n_classes, dtype=np.float32)[[int(y) for _, y in rows]])
    xs, ys = np.stack(xs), np.stack(ys)
    return tasks.Stream(jnp.asarray(xs), jnp.asarray(ys), jnp.ones(ys.shape[:2], jnp.float32))


def river_spec(name: str, *, length: int = 200_000, **options) -> tasks.TaskSpec:
    defaults = HYPERPLANE if name == "hyperplane" else RANDOM_RBF
    options = {**defaults, **options}

    def make(key):
        raise ValueError(f"{name} streams come from River seeds: use river_streams(seeds)")

    n_out = options.get("n_classes", 2)
    return tasks.TaskSpec(name, options["n_features"], n_out, "xent", length, (), make)


def river_baselines(name: str, seeds, models, *, length: int = 200_000, **options) -> dict:
    """{model: [progressive (test-then-train) accuracy per seed]} of River models on the same
    streams: "arf" = `forest.ARFClassifier(seed=seed)` (River's defaults: 10 trees, ADWIN drift
    detection), "logistic" = `linear_model.LogisticRegression()` (plain online SGD, lr 0.01)
    on features standardised online (`preprocessing.StandardScaler`), as River's docs pipe it."""
    _river()
    from river import forest, linear_model, metrics, preprocessing

    defaults = HYPERPLANE if name == "hyperplane" else RANDOM_RBF
    options = {**defaults, **options}
    out = {}
    for model_name in models:
        accuracies = []
        for seed in seeds:
            if model_name == "arf":
                model = forest.ARFClassifier(seed=int(seed))
            elif model_name == "logistic":
                model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
            else:
                raise ValueError(f"unknown River baseline {model_name!r}; use 'arf' or 'logistic'")
            accuracy = metrics.Accuracy()
            for x, y in river_generator(name, int(seed), options).take(length):
                accuracy.update(y, model.predict_one(x))
                model.learn_one(x, y)
            accuracies.append(float(accuracy.get()))
        out[model_name] = accuracies
    return out


SEEDED = {"hyperplane": "hyperplane", "random_rbf": "random_rbf"}  # task -> River generator
TASKS.update({name: functools.partial(river_spec, name) for name in SEEDED})
