"""The GRU (Cho et al. 2014, in PyTorch's form: the reset gate inside the candidate's recurrent
term), gates (r, u, c) stacked on the rows of W_in [3n, n_in], W_rec [3n, n], b [3n]:

    r_t = σ(W_in,r x_t + W_rec,r h_{t-1} + b_r)
    u_t = σ(W_in,u x_t + W_rec,u h_{t-1} + b_u)
    c_t = tanh(W_in,c x_t + b_c + r_t ⊙ (W_rec,c h_{t-1} + b_hc))
    h_t = (1 − u_t) ⊙ c_t + u_t ⊙ h_{t-1},      y_t = W_out h_t + b_out.

r_t multiplies W_rec,c h_{t-1} apart from the input term, so the preactivation is not one
z = Θ v_t: the cell is stepwise only (tbptt, bptt and full rtrl; not sparse RTRL or traces). The
update gate's interpolation u_t ⊙ h_{t-1} is the linear path the immediate-derivative paper calls
the GRU's bypass. Initialisation as the suite's: W ~ N(0, 1/fan_in), biases 0.
"""

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, normal, readout, stepwise_cell


def gru(n_in: int, n_hidden: int, n_out: int) -> Cell:
    n = n_hidden

    def init(key, dtype=jnp.float32):
        k_rec, k_in, k_out = jax.random.split(key, 3)
        return {
            "W_in": normal(k_in, (3 * n, n_in), n_in, dtype),
            "W_rec": normal(k_rec, (3 * n, n), n, dtype),
            "b": jnp.zeros((3 * n,), dtype),
            "b_hc": jnp.zeros((n,), dtype),
            "W_out": normal(k_out, (n_out, n), n, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def transition(params, h_prev, x):
        a = params["W_in"] @ x + params["b"]  # [3n] input terms
        rec = params["W_rec"] @ h_prev  # [3n] recurrent terms
        r = jax.nn.sigmoid(a[:n] + rec[:n])
        u = jax.nn.sigmoid(a[n : 2 * n] + rec[n : 2 * n])
        c = jnp.tanh(a[2 * n :] + r * (rec[2 * n :] + params["b_hc"]))
        return (1.0 - u) * c + u * h_prev

    return stepwise_cell(
        "gru",
        n_in,
        n_hidden,
        n_out,
        init=init,
        initial_carry=lambda dtype=jnp.float32: jnp.zeros((n,), dtype),
        transition=transition,
        output=lambda params, h, x: readout(params, h),
        hidden=lambda h: h,
        bypass="update gate",
    )
