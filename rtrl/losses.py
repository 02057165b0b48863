"""Per-step losses with their output error, and the optional per-step weight.

A target is either an array y_t (weight 1) or a `Target(value, weight)`; the weight masks steps
that are not scored (copy task input phase, all but the last step of an adding episode).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Target(NamedTuple):
    value: jax.Array  # [n_out] regression target or one-hot class
    weight: jax.Array  # [] 1 where the step is scored, 0 elsewhere


def as_target(y) -> Target:
    if isinstance(y, Target):
        return y
    y = jnp.asarray(y)
    return Target(y, jnp.ones((), y.dtype))


def mse(y: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """L = mean_o (y_o − y*_o)², and ∂L/∂y = 2 (y − y*) / n_out."""
    err = y - target
    return jnp.mean(err**2), 2.0 * err / err.shape[-1]


def xent(logits: jax.Array, onehot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """L = −Σ_o y*_o log softmax(y)_o, and ∂L/∂y = softmax(y) − y*."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(onehot * logp), jnp.exp(logp) - onehot


LOSSES = {"mse": mse, "xent": xent}


def get(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    return LOSSES[name]


def weighted(loss_fn, y: jax.Array, target: Target) -> tuple[jax.Array, jax.Array]:
    """(w L, w ∂L/∂y) for a possibly weighted target."""
    loss, dy = loss_fn(y, target.value)
    return target.weight * loss, target.weight * dy
