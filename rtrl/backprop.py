"""Reverse-mode references: truncated BPTT run online, whole-sequence BPTT, and the BPTT loss.

tbptt(w), online: at step t the gradient of the current loss L_t is back-propagated through the
last w transitions, from the stored carry s_{t-w} (held constant) with the current parameters:

    g_t = ∂/∂θ L_t(s_t(θ; s_{t-w}, x_{t-w+1..t}))

Summed over t with the parameters held fixed, w ≥ T gives ∂(Σ_t L_t)/∂θ, the BPTT gradient;
w = 1 is the immediate derivative (equal to traces with decay 0 for the vanilla RNN; the LSTM's
traces keep the exact diagonal cell-state path, which w = 1 cuts). The carry itself advances one
step per call with the current parameters, as in every other algorithm. Cost O(w) steps forward
and backward per step, memory O(w · n).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rtrl import cells as cells_lib
from rtrl import losses
from rtrl.interface import Algorithm, StepOutput, check_step_shapes


class WindowState(NamedTuple):
    carry: object  # s_{t-1}
    xs: jax.Array  # [w, n_in] the last w inputs (oldest first)
    starts: object  # like carry with a leading [w] axis: the carry before each of those inputs
    count: jax.Array  # [] int32 steps taken (saturating at w is not needed)


def tbptt(cell, w, loss="mse"):
    """Truncated BPTT with window w, one gradient per step (see the module docstring)."""
    w = int(w)
    if w < 1:
        raise ValueError(f"the truncation window w must be >= 1, got {w}")
    cells_lib.require(cell, cells_lib.STEPWISE, "tbptt")
    loss_fn = losses.get(loss)

    def init(key, params):
        dtype = cells_lib.param_dtype(params)
        carry = cell.initial_carry(dtype)
        starts = jax.tree.map(lambda leaf: jnp.zeros((w,) + leaf.shape, dtype), carry)
        xs = jnp.zeros((w, cell.n_in), dtype)
        return WindowState(carry, xs, starts, jnp.zeros((), jnp.int32))

    def step(params, state, x, y):
        target = losses.as_target(y)
        check_step_shapes(cell, x, target)
        xs = jnp.concatenate([state.xs[1:], x[None]])
        starts = jax.tree.map(
            lambda buf, leaf: jnp.concatenate([buf[1:], leaf[None]]), state.starts, state.carry
        )
        filled = jnp.minimum(state.count + 1, w)
        first = w - filled  # index of the oldest input inside the window
        start = jax.tree.map(lambda buf: buf[first], starts)
        valid = jnp.arange(w) >= first

        def window_loss(p):
            def body(s, inputs):
                x_j, ok = inputs
                s_next = cell.transition(p, s, x_j)
                return jax.tree.map(lambda a, b: jnp.where(ok, a, b), s_next, s), None

            s_t, _ = jax.lax.scan(body, start, (xs, valid))
            y_t = cell.output(p, s_t, x)
            return losses.weighted(loss_fn, y_t, target)[0], (y_t, s_t)

        (step_loss, (pred, _)), grads = jax.value_and_grad(window_loss, has_aux=True)(params)
        carry, _ = cell.step(params, state.carry, x)
        return WindowState(carry, xs, starts, state.count + 1), StepOutput(grads, step_loss, pred)

    return Algorithm(f"tbptt(w={w})", init, step)


def bptt(cell, length, loss="mse"):
    """Whole-sequence BPTT as an online algorithm: tbptt with w = length (the sequence length),
    so its per-step gradients sum to ∂(Σ_t L_t)/∂θ. O(T) per step; use `sequence_loss` with
    `jax.grad` for the one-shot reference."""
    algo = tbptt(cell, length, loss)
    return algo._replace(name="bptt")


def sequence_loss(cell, params, xs, ys, loss="mse") -> jax.Array:
    """Σ_t L_t over a sequence from the zero carry, xs [T, n_in], ys [T, n_out] or Target."""
    loss_fn = losses.get(loss)

    def body(carry, inputs):
        x, y = inputs
        carry, pred = cell.step(params, carry, x)
        return carry, losses.weighted(loss_fn, pred, losses.as_target(y))[0]

    _, per_step = jax.lax.scan(body, cell.initial_carry(cells_lib.param_dtype(params)), (xs, ys))
    return jnp.sum(per_step)
