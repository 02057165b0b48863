"""Which k of the n propagation paths each row keeps in sparse RTRL.

A selection is an index array idx [R, k]: row r of the Jacobian propagation term keeps
Σ_{j ∈ idx[r]} W_rec[r, j] M_h[j] (paper Eq. 8). Row r belongs to neuron r mod n (for the LSTM the
four gate rows of a neuron are rows i, n+i, 2n+i, 3n+i).

- ring: neuron i keeps itself and its nearest ring neighbours, offsets 0, +1, −1, +2, −2, ... (the
  first k of them), so k = n keeps every path. The ring order is the unit index, which bears no
  relation to the learned dense W_rec.
- random: k distinct columns per row, drawn once at init.
- oracle: the k largest |W_rec[r, j]|, recomputed every `period` (200) steps.
- anti_oracle: the k smallest |W_rec[r, j]|, same schedule.
- dynamic: the k largest |J_rj| every step, J_rj = φ'(z_r) W_rec[r, j] the one-step Jacobian of
  row r with respect to h_{t-1, j}. (Scaling a row by φ'(z_r) does not change its order, so for
  these cells this equals the oracle recomputed every step.)
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ORACLE_PERIOD = 200


class Mask(NamedTuple):
    """A path-selection rule: `initial(key, W_rec [R, n], k) -> idx [R, k]` at init and
    `refresh(idx, step, W_rec, row_gain [R], k, period) -> idx` before each step."""

    initial: Callable
    refresh: Callable


def signed_ring_offsets(k: int) -> list[int]:
    """[0, 1, -1, 2, -2, ...][:k] (static Python ints)."""
    offsets = [0]
    step = 1
    while len(offsets) < k:
        offsets += [step, -step]
        step += 1
    return offsets[:k]


def ring_offsets(k: int, n: int) -> np.ndarray:
    """`signed_ring_offsets(k)` as residues mod n, shape [k] (static: numpy, not traced)."""
    return np.asarray(signed_ring_offsets(k), np.int32) % n


def ring(rows: int, n: int, k: int) -> jax.Array:
    neuron = jnp.arange(rows, dtype=jnp.int32) % n
    return (neuron[:, None] + ring_offsets(k, n)[None, :]) % n


def random(key: jax.Array, rows: int, n: int, k: int) -> jax.Array:
    keys = jax.random.split(key, rows)
    perm = jax.vmap(lambda kk: jax.random.permutation(kk, n))(keys)
    return perm[:, :k].astype(jnp.int32)


def top_k(scores: jax.Array, k: int) -> jax.Array:
    """Indices of the k largest entries of each row of scores [R, n]."""
    return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


def _fixed(idx, step, W_rec, row_gain, k, period):
    return idx


def _periodic(sign):
    def refresh(idx, step, W_rec, row_gain, k, period):
        return jnp.where(step % period == 0, top_k(sign * jnp.abs(W_rec), k), idx)

    return refresh


def _dynamic(idx, step, W_rec, row_gain, k, period):
    return top_k(jnp.abs(row_gain[:, None] * W_rec), k)


MASKS = {
    "ring": Mask(lambda key, W, k: ring(W.shape[0], W.shape[1], k), _fixed),
    "random": Mask(lambda key, W, k: random(key, W.shape[0], W.shape[1], k), _fixed),
    "oracle": Mask(lambda key, W, k: top_k(jnp.abs(W), k), _periodic(1.0)),
    "anti_oracle": Mask(lambda key, W, k: top_k(-jnp.abs(W), k), _periodic(-1.0)),
    "dynamic": Mask(lambda key, W, k: top_k(jnp.abs(W), k), _dynamic),
}


def check(mask: str, k: int, n: int) -> None:
    if mask not in MASKS:
        raise ValueError(f"unknown mask {mask!r}; known masks: {list(MASKS)}")
    if not 0 <= k <= n:
        raise ValueError(f"k must satisfy 0 <= k <= n_hidden = {n}, got k = {k}")


def initial(mask: str, key, W_rec, k: int) -> jax.Array:
    """The selection at init, idx [R, k]."""
    return MASKS[mask].initial(key, W_rec, k)


def refresh(mask: str, idx, step, W_rec, row_gain, k: int, period: int = ORACLE_PERIOD):
    """The selection to use at `step` (counted from 0); row_gain [R] = φ'(z_r) for dynamic."""
    return MASKS[mask].refresh(idx, step, W_rec, row_gain, k, period)
