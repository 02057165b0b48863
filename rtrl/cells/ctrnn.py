"""The continuous-time RNN, Euler-discretised with step α = Δt/τ:

    h_t = (1 − α) h_{t-1} + α tanh(W_rec h_{t-1} + W_in x_t + b),   y_t = W_out h_t + b_out.

α is a fixed hyperparameter (the paper gives no value; ALPHA = 0.1, i.e. τ = 10 steps, ours).
The leak (1 − α) h_{t-1} is the cell's own diagonal state path, so it lives in `core` and every
forward-mode algorithm keeps it exactly (as the LSTM's cell-state path).
"""

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, factorised_cell

ALPHA = 0.1


def ctrnn(n_in: int, n_hidden: int, n_out: int, alpha: float = ALPHA) -> Cell:
    """s = h, core(z, h_{t-1}) = (1 − α) h_{t-1} + α tanh(z); one gate, biases 0."""
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha = Δt/τ must lie in (0, 1], got {alpha}")

    def core(z, h_prev):
        return (1.0 - alpha) * h_prev + alpha * jnp.tanh(z)

    return factorised_cell(
        "ctrnn",
        n_in,
        n_hidden,
        n_out,
        gates=1,
        core=core,
        hidden_leaf=0,
        zero_carry=lambda dtype=jnp.float32: jnp.zeros((n_hidden,), dtype),
        bias_init=lambda dtype: jnp.zeros((n_hidden,), dtype),
        row_gain=jax.vmap(jax.grad(lambda z: alpha * jnp.tanh(z))),
    )
