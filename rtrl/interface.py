"""The contract every online credit-assignment algorithm implements.

    state = algo.init(key, params)
    state, out = algo.step(params, state, x_t, y_t)     # out.grads: like params

`out.grads` is ∂L_t/∂θ as the algorithm estimates it for the current step's loss L_t, with the
parameters of this step; `out.loss` is L_t and `out.prediction` is y_t, both computed before any
update (prequential). Readout gradients are exact for every algorithm: ∂L_t/∂W_out = e_t h_tᵀ,
∂L_t/∂b_out = e_t with e_t = ∂L_t/∂y_t. Algorithms differ only in ∂L_t/∂Θ for the recurrent
parameters Θ = [W_rec | W_in | b], so gradient diagnostics compare Θ only (rtrl/online.py).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rtrl import cells as cells_lib
from rtrl import losses


class StepOutput(NamedTuple):
    grads: dict  # like params
    loss: jax.Array  # [] weighted per-step loss L_t
    prediction: jax.Array  # [n_out] y_t


class Algorithm(NamedTuple):
    name: str
    init: Callable[..., Any]  # (key, params) -> state
    step: Callable[..., tuple[Any, StepOutput]]  # (params, state, x_t, y_t) -> (state, out)


def check_step_shapes(cell: cells_lib.Cell, x, target: losses.Target) -> None:
    if x.shape != (cell.n_in,):
        raise ValueError(
            f"x_t has shape {x.shape}, expected ({cell.n_in},) for this cell; algorithms are "
            "unbatched, vmap over batch or seed axes"
        )
    if target.value.shape != (cell.n_out,):
        raise ValueError(
            f"y_t has shape {target.value.shape}, expected ({cell.n_out},) for this cell"
        )
    if target.weight.shape != ():
        raise ValueError(f"the target weight must be a scalar, got shape {target.weight.shape}")


def readout_step(cell, loss_fn, params, h, target):
    """Prediction, loss, e_t = ∂L/∂y, ∂L/∂h and the exact readout gradients."""
    y = cells_lib.readout(params, h)
    loss, dy = losses.weighted(loss_fn, y, target)
    dh = params["W_out"].T @ dy
    return y, loss, dh, {"W_out": jnp.outer(dy, h), "b_out": dy}


def assemble(cell, rec_grad_theta, readout_grads) -> dict:
    """Full gradient pytree from ∂L/∂Θ [R, m] and the readout gradients."""
    return {**cells_lib.split_theta(cell, rec_grad_theta), **readout_grads}
