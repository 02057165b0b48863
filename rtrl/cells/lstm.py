"""The LSTM without peepholes, gates (i, f, g, o) stacked on the rows of W_in, W_rec, b.

c_t = σ(z_f) c_{t-1} + σ(z_i) tanh(z_g), h_t = σ(z_o) tanh(c_t); the carry is (h, c). The
cell-state self-Jacobian ∂c_t/∂c_{t-1} = σ(z_f) is diagonal and lives in `core`, so every
algorithm keeps it exactly. The forget-gate bias starts at 1, the other biases at 0.
"""

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, factorised_cell


def lstm(n_in: int, n_hidden: int, n_out: int) -> Cell:
    n = n_hidden

    def core(z, s_prev):
        _, c_prev = s_prev
        i, f, g, o = jnp.split(z, 4)
        c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def bias_init(dtype):
        return jnp.zeros((4 * n,), dtype).at[n : 2 * n].set(1.0)

    return factorised_cell(
        "lstm",
        n_in,
        n_hidden,
        n_out,
        gates=4,
        core=core,
        hidden_leaf=0,
        zero_carry=lambda dtype=jnp.float32: (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)),
        bias_init=bias_init,
        # σ' for every row (the g rows are tanh; only the ranking within a row matters)
        row_gain=jax.vmap(jax.grad(jax.nn.sigmoid)),
    )
