"""Multi-scale retention (Sun et al. 2023, "Retentive Network"), one layer in its recurrent form,
with n = n_hidden = heads · d and heads h = 0..heads−1 of size d:

    q_t = W_q x_t,  k_t = W_k x_t / √d,  v_t = W_v x_t        ([n] each, split into [heads, d])
    S_t^h = γ_h S_{t−1}^h + (k_t^h)ᵀ v_t^h                     ([d, d] per head, S_0 = 0)
    o_t^h = q_t^h S_t^h                                        ([d] per head)
    h_t = W_O (swish(W_G x_t) ⊙ GroupNorm_heads(o_t))          ([n])
    y_t = W_out h_t + b_out                                    ([n_out])

with RetNet's fixed decays γ_h = 1 − 2^(−5−h) and the 1/√d key scaling of its implementation.
GroupNorm_heads normalises each head's d values to zero mean and unit variance,
(o^h − mean(o^h)) / √(var(o^h) + 1e-6), with no affine parameters (the paper's GroupNorm;
torchscale's current code uses a parameter-free RMSNorm instead). d = 1 is refused: GroupNorm
of one value is 0, so h_t ≡ 0. Use d >= 3 for a useful layer: for d = 2 GroupNorm gives ±1 up to
eps, and for n_in = 1 each o_t^h is a multiple of W_v^h, which GroupNorm divides out; in both
cases q and k reach y_t only through eps and the sign. xPos (the rotation of q and k by
position) is left out, so the parallel form below is exactly (Q Kᵀ ⊙ D) V. The paper's recurrent
form has no normalising scale on S_t (torchscale's stabilisation, exact up to GroupNorm's eps, is
not used) and the layer has no bypass: y_t reads only h_t.

The carry is (h_t, S_t): `hidden` must be a selection of an [n_hidden] carry leaf (it also maps
sensitivities), and S_t flattened has heads · d² = n · d entries, so h_t, the layer's output, is
kept in the carry. transition never reads h_{t−1}; its sensitivity is only ∂h_t/∂θ.

Initialisation as the suite's: W_q, W_k, W_v, W_G ~ N(0, 1/n_in), W_O, W_out ~ N(0, 1/n),
b_out = 0 (RetNet has no biases in the retention; torchscale's Xavier gains are not used).
Stepwise only (tbptt, bptt, full rtrl).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rtrl.cells.base import Cell, Params, normal, readout, stepwise_cell

GROUP_NORM_EPS = 1e-6


class RetentionCarry(NamedTuple):
    h: jax.Array  # [n] the layer output W_O (swish(W_G x_t) ⊙ GroupNorm(o_t)); first, so leaf 0
    S: jax.Array  # [heads, d, d] the retention state of each head


def _head_size(n_hidden: int, heads: int) -> int:
    if int(heads) < 1:
        raise ValueError(f"retnet needs heads >= 1, got {heads}")
    if n_hidden % heads:
        raise ValueError(
            f"retnet needs n_hidden = heads · d; n_hidden = {n_hidden} is not divisible by "
            f"heads = {heads}"
        )
    d = n_hidden // heads
    if d < 2:
        raise ValueError(
            f"retnet needs a head size d = n_hidden / heads >= 2 (got {n_hidden} / {heads} = {d}): "
            "GroupNorm of one value is identically 0, so the layer's output would be constant"
        )
    return d


def decays(heads: int, dtype=jnp.float32) -> jax.Array:
    """γ_h = 1 − 2^(−5−h) for h = 0..heads−1, shape [heads] (RetNet's multi-scale decays)."""
    return jnp.asarray(1.0 - 2.0 ** (-5.0 - np.arange(heads)), dtype)


def _group_norm(o: jax.Array) -> jax.Array:
    """(o − mean) / √(var + eps) over the last axis (each head's d values), no affine."""
    centred = o - jnp.mean(o, axis=-1, keepdims=True)
    return centred / jnp.sqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + GROUP_NORM_EPS)


def _layer_output(params: Params, o: jax.Array, x: jax.Array) -> jax.Array:
    """h = W_O (swish(W_G x) ⊙ GroupNorm_heads(o)), o [heads, d], x [n_in] -> [n]."""
    gate = jax.nn.silu(params["W_G"] @ x)
    return params["W_O"] @ (gate * _group_norm(o).reshape(-1))


HEADS = 4


def default_heads(n: int) -> int:
    """HEADS where it divides n with heads of d >= 3 units, else the largest of 2, 1 that does
    (a GroupNorm over fewer than 3 values is degenerate), else 1: n = 64 gives 4 heads of 16."""
    for heads in (HEADS, 2):
        if n % heads == 0 and n // heads >= 3:
            return heads
    return 1


def retnet(n_in: int, n_hidden: int, n_out: int, heads: int | None = None) -> Cell:
    """The recurrent multi-scale retention layer of the module docstring; n_hidden = heads · d,
    d >= 2 (d >= 3 to be useful), heads by `default_heads` unless given. Carry
    RetentionCarry(h [n], S [heads, d, d]); hidden(s) = h."""
    n = n_hidden
    heads = default_heads(n) if heads is None else heads
    d = _head_size(n, heads)

    def init(key, dtype=jnp.float32):
        k_q, k_k, k_v, k_g, k_o, k_out = jax.random.split(key, 6)
        return {
            "W_q": normal(k_q, (n, n_in), n_in, dtype),
            "W_k": normal(k_k, (n, n_in), n_in, dtype),
            "W_v": normal(k_v, (n, n_in), n_in, dtype),
            "W_G": normal(k_g, (n, n_in), n_in, dtype),
            "W_O": normal(k_o, (n, n), n, dtype),
            "W_out": normal(k_out, (n_out, n), n, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def initial_carry(dtype=jnp.float32):
        return RetentionCarry(jnp.zeros((n,), dtype), jnp.zeros((heads, d, d), dtype))

    def transition(params, carry, x):
        q = (params["W_q"] @ x).reshape(heads, d)
        k = (params["W_k"] @ x).reshape(heads, d) / math.sqrt(d)
        v = (params["W_v"] @ x).reshape(heads, d)
        gamma = decays(heads, carry.S.dtype)
        S = gamma[:, None, None] * carry.S + k[:, :, None] * v[:, None, :]
        o = jnp.einsum("hi,hij->hj", q, S)
        return RetentionCarry(_layer_output(params, o, x), S)

    return stepwise_cell(
        "retnet",
        n_in,
        n_hidden,
        n_out,
        init=init,
        initial_carry=initial_carry,
        transition=transition,
        output=lambda params, carry, x: readout(params, carry.h),
        hidden=lambda carry: carry.h,
        output_params=("W_out", "b_out"),
        bypass="",
    )


def retention_parallel(params: Params, xs: jax.Array, heads: int) -> jax.Array:
    """The parallel form of the same layer over a whole sequence, xs [T, n_in] -> ys [T, n_out]:

        Q = X W_qᵀ, K = X W_kᵀ / √d, V = X W_vᵀ             ([T, heads, d])
        O^h = (Q^h K^hᵀ ⊙ D^h) V^h,  D^h_nm = γ_h^(n−m) if n ≥ m else 0      ([T, d] per head)
        h_t = W_O (swish(W_G x_t) ⊙ GroupNorm_heads(O_t)),  y_t = W_out h_t + b_out

    equal to stepping `retnet(...)` from the zero carry (O_t^h = q_t^h S_t^h). O(T²) memory."""
    n, n_in = params["W_q"].shape
    d = _head_size(n, heads)
    if xs.ndim != 2 or xs.shape[1] != n_in:
        raise ValueError(f"xs has shape {xs.shape}, retention_parallel expects (T, {n_in})")
    length = xs.shape[0]
    Q = (xs @ params["W_q"].T).reshape(length, heads, d)
    K = (xs @ params["W_k"].T).reshape(length, heads, d) / math.sqrt(d)
    V = (xs @ params["W_v"].T).reshape(length, heads, d)
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]  # n − m
    gamma = decays(heads, xs.dtype)[:, None, None]
    D = jnp.where(lag >= 0, gamma ** jnp.maximum(lag, 0), 0.0)  # [heads, T, T]
    O = jnp.einsum("hnm,mhd->nhd", jnp.einsum("nhd,mhd->hnm", Q, K) * D, V)
    hs = jax.vmap(lambda o, x: _layer_output(params, o, x))(O, xs)
    return jax.vmap(lambda h: readout(params, h))(hs)
