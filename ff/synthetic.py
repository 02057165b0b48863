"""The synthetic teacher–student task of paper §3.2 / App. E and its four students.

Teacher: a 3-layer ReLU network (our reading of "3-layer": three linear maps,
50 → 128 → 128 → K, ReLU after the first two; He-normal hidden weights N(0, 2/fan_in), output
N(0, 1/fan_in), zero biases; a fresh draw per seed). Inputs x ~ N(0, I_50), labels y = argmax of
the teacher's logits; 20,000 train + 5,000 test samples.

Students (4 hidden layers of 128, every linear map with a bias, PyTorch's default init):
    dtg_student       DTG-FF: u_l = z_l², ψ_l = (u_l/T_l)ᵀ R_l + b_l, local CE, detach between
                      layers, logit-sum inference; T ∈ [0.5, 2] (the CNN instance's range: its
                      loss is the CNN's; App. E gives none); no inter-layer norm or dropout
    bp_student        single BP: backbone + one K-way head, end-to-end CE
    deepsup_student   BP-DeepSup: a linear head per hidden layer, summed CE, logit-sum inference
    ensemble_student  BP-Ensemble: 4 independent single-BP students, softmax-averaged
Learnable parameters at K = 10 (App. E, asserted in tests/ff): PAPER_PARAMETER_COUNTS.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ff.backbones import Dense
from ff.baselines import BPNet, Ensemble
from ff.dtg import DTGNet

D_IN, HIDDEN, STUDENT_WIDTH, STUDENT_DEPTH = 50, 128, 128, 4
PAPER_PARAMETER_COUNTS = {  # learnable, K = 10
    "dtg_ff": 56_068,
    "bp_deepsup": 61_224,
    "bp": 57_354,
    "bp_ensemble": 229_416,
}
PAPER_DTG_BUFFERS = 5_160  # the fixed R_l, b_l of the four layers at K = 10


class Task(NamedTuple):
    x_train: jax.Array  # [N_train, d_in]
    y_train: jax.Array  # [N_train] int32
    x_test: jax.Array  # [N_test, d_in]
    y_test: jax.Array  # [N_test] int32


def init_teacher(key, classes: int, d_in: int = D_IN, hidden: int = HIDDEN, dtype=jnp.float32):
    """[{"W", "b"}] × 3: d_in → hidden → hidden → K. The three weight matrices are consecutive
    slices of one standard-normal draw (one random program, cheap to compile), scaled per layer."""
    sizes = (d_in, hidden, hidden, classes)
    counts = [sizes[l] * sizes[l + 1] for l in range(3)]
    flat = jax.random.normal(key, (sum(counts),), dtype)
    layers, start = [], 0
    for l in range(3):
        gain = 2.0 if l < 2 else 1.0
        W = flat[start : start + counts[l]].reshape(sizes[l], sizes[l + 1])
        start += counts[l]
        layers.append({"W": W * jnp.sqrt(gain / sizes[l]), "b": jnp.zeros((sizes[l + 1],), dtype)})
    return layers


def teacher_logits(teacher, x):
    h = x
    for l, layer in enumerate(teacher):
        h = h @ layer["W"] + layer["b"]
        if l < len(teacher) - 1:
            h = jax.nn.relu(h)
    return h


def make_task(
    key, classes: int, n_train=20_000, n_test=5_000, d_in=D_IN, hidden=HIDDEN, dtype=jnp.float32
):
    """A fresh teacher and its labelled Gaussian inputs (one seed's task)."""
    if classes < 2:
        raise ValueError(f"the teacher needs K >= 2 classes; got {classes}")
    kt, kx = jax.random.split(key)
    x, y = sample(init_teacher(kt, classes, d_in, hidden, dtype), kx, n_train + n_test, d_in, dtype)
    return Task(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def sample(teacher, key, n: int, d_in: int = D_IN, dtype=jnp.float32):
    """(x ~ N(0, I) [n, d_in], y = argmax teacher(x) [n] int32): make_task's inputs and labels
    from its input key (jax.random.split(task key)[1]), for regenerating a task inside a program."""
    x = jax.random.normal(key, (n, d_in), dtype)
    return x, jnp.argmax(teacher_logits(teacher, x), axis=-1).astype(jnp.int32)


def student_backbone(d_in=D_IN, width=STUDENT_WIDTH, depth=STUDENT_DEPTH) -> Dense:
    return Dense(d_in=d_in, widths=(width,) * depth)


def dtg_student(classes: int, **options) -> DTGNet:
    bb = student_backbone(**{k: options.pop(k) for k in ("d_in", "width", "depth") if k in options})
    return DTGNet(bb, classes, aggregation="logit_sum", **options)


def bp_student(classes: int, **options) -> BPNet:
    return BPNet(student_backbone(**options), classes, head="single")


def deepsup_student(classes: int, **options) -> BPNet:
    return BPNet(student_backbone(**options), classes, head="deepsup")


def ensemble_student(classes: int, members: int = 4, **options) -> Ensemble:
    return Ensemble(bp_student(classes, **options), members)


STUDENTS = {
    "dtg_ff": dtg_student,
    "bp": bp_student,
    "bp_deepsup": deepsup_student,
    "bp_ensemble": ensemble_student,
}
