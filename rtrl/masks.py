"""Which k of the n propagation paths each row keeps in sparse RTRL.

A selection is an index array idx [R, k]: row r of the Jacobian propagation term keeps
Σ_{j ∈ idx[r]} W_rec[r, j] M_h[j] (paper Eq. 8). Row r belongs to neuron r mod n (for the LSTM the
four gate rows of a neuron are rows i, n+i, 2n+i, 3n+i).

- ring (the paper's): neuron i keeps its k/2 nearest ring neighbours on each side and not itself,
  offsets ±1, ±2, …, ±⌊k/2⌋: 2⌊k/2⌋ paths, so k = 1 propagates nothing (as the companion paper
  notes) and at most n − 1 distinct paths exist (k ≥ n − 1 keeps every path but the self path).
- ring_self (this suite's earlier ring): itself and its nearest neighbours, offsets 0, +1, −1, +2,
  −2, … (the first k of them), so k = n keeps every path. The ring order is the unit index,
  which bears no relation to the learned dense W_rec.
- random: k distinct columns per row, drawn once at init.
- oracle: the k largest |W_rec[r, j]|, recomputed every `period` (200) steps.
- anti_oracle: the k smallest |W_rec[r, j]|, same schedule.
- dynamic: the k largest |J_rj| every step, J_rj = φ'(z_r) W_rec[r, j] the one-step Jacobian of
  row r with respect to h_{t-1, j}. (Scaling a row by φ'(z_r) does not change its order, so for
  these cells this equals the oracle recomputed every step.)
- fisher / anti_fisher (scored): after a dense phase of full RTRL (sparse_rtrl's dense_until = T₀),
  every row keeps the same k neurons, those of largest / smallest empirical Fisher
  F_j = Σ_{t<T₀} Σ_g ‖∂L_t/∂Θ[g n + j, :]‖², fixed from T₀ on (the paper's §4.8 RNN comparison;
  our reading: the paper says only "Fisher oracle" for the RNN, and decomposes the squared
  gradient over each head's parameters for the transformer, here over each neuron's rows of Θ).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ORACLE_PERIOD = 200


class Mask(NamedTuple):
    """A path-selection rule: `initial(key, W_rec [R, n], k) -> idx [R, paths]` at init and
    `refresh(idx, step, W_rec, row_gain [R], k, period) -> idx` before each step; `offsets(k, n)`
    (ring masks only) the static signed ring offsets that idx holds, which lets sparse RTRL
    read M as rolled views (and the CPU kernel use them); `scored(score [n], R, k) -> idx`
    (scored masks only) the selection made once from a per-neuron score at the end of a dense
    phase (`initial` then only fills the state until that step)."""

    initial: Callable
    refresh: Callable
    offsets: Callable | None = None
    scored: Callable | None = None


def neighbour_ring_offsets(k: int, n: int) -> list[int]:
    """The paper's ring: [+1, −1, +2, −2, …] up to ±⌊k/2⌋, never 0, distinct modulo n (so at most
    n − 1 of them), static Python ints."""
    offsets, seen, step = [], {0}, 1
    while len(offsets) < min(2 * (k // 2), n - 1) and step <= n:
        for o in (step, -step):
            if o % n not in seen and len(offsets) < min(2 * (k // 2), n - 1):
                offsets.append(o)
                seen.add(o % n)
        step += 1
    return offsets


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


def ring(rows: int, n: int, k: int, offsets=None) -> jax.Array:
    """idx [R, len(offsets)]: row r keeps neurons (r mod n + o) mod n; offsets default to the
    ring_self offsets of k paths."""
    offsets = signed_ring_offsets(k) if offsets is None else offsets
    neuron = jnp.arange(rows, dtype=jnp.int32) % n
    return (neuron[:, None] + np.asarray(offsets, np.int32)[None, :] % n) % n


def paths(mask: str, k: int, n: int) -> int:
    """How many paths per row the mask keeps for a requested k."""
    spec = MASKS[mask]
    return k if spec.offsets is None else len(spec.offsets(k, n))


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


def _scored(sign):
    def select(score, rows, k):
        return jnp.broadcast_to(top_k(sign * score[None, :], k), (rows, k))

    return select


MASKS = {
    "ring": Mask(
        lambda key, W, k: ring(*W.shape, k, neighbour_ring_offsets(k, W.shape[1])),
        _fixed,
        neighbour_ring_offsets,
    ),
    "ring_self": Mask(
        lambda key, W, k: ring(*W.shape, k),
        _fixed,
        lambda k, n: signed_ring_offsets(k),
    ),
    "random": Mask(lambda key, W, k: random(key, W.shape[0], W.shape[1], k), _fixed),
    "oracle": Mask(lambda key, W, k: top_k(jnp.abs(W), k), _periodic(1.0)),
    "anti_oracle": Mask(lambda key, W, k: top_k(-jnp.abs(W), k), _periodic(-1.0)),
    "dynamic": Mask(lambda key, W, k: top_k(jnp.abs(W), k), _dynamic),
    "fisher": Mask(lambda key, W, k: top_k(jnp.abs(W), k), _fixed, scored=_scored(1.0)),
    "anti_fisher": Mask(lambda key, W, k: top_k(jnp.abs(W), k), _fixed, scored=_scored(-1.0)),
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
