"""The vanilla tanh RNN: h_t = tanh(W_rec h_{t-1} + W_in x_t + b), y_t = W_out h_t + b_out."""

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, factorised_cell


def vanilla(n_in: int, n_hidden: int, n_out: int) -> Cell:
    """s = h, core(z) = tanh(z); one gate, biases 0."""
    return factorised_cell(
        "vanilla",
        n_in,
        n_hidden,
        n_out,
        gates=1,
        core=lambda z, s_prev: jnp.tanh(z),
        hidden_leaf=0,
        zero_carry=lambda dtype=jnp.float32: jnp.zeros((n_hidden,), dtype),
        bias_init=lambda dtype: jnp.zeros((n_hidden,), dtype),
        row_gain=jax.vmap(jax.grad(jnp.tanh)),
    )
