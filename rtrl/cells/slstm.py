"""xLSTM's scalar LSTM (sLSTM, Beck et al. 2024) with one head (a full W_rec), exponential input
and forget gates and the stabiliser state m, gates (i, f, z, o) stacked gate-major on the rows of
W_in [4n, n_in], W_rec [4n, n], b [4n]:

    (z_i, z_f, z_z, z_o) = W_rec h_{t-1} + W_in x_t + b                      each [n]
    m_t = max(z_f + m_{t-1}, z_i)                                             stabiliser [n]
    i'_t = exp(z_i − m_t),   f'_t = exp(z_f + m_{t-1} − m_t)                  in (0, 1] [n]
    c_t = f'_t ⊙ c_{t-1} + i'_t ⊙ tanh(z_z),   n_t = f'_t ⊙ n_{t-1} + i'_t     [n]
    h_t = σ(z_o) ⊙ c_t / n_t,                  y_t = W_out h_t + b_out

The carry is (h, c, n, m), h the hidden leaf 0. These are the paper's exponential gates exp(z_i),
exp(z_f) with c and n both scaled by exp(−m_t): by induction c_t = c̃_t e^{−m_t} and
n_t = ñ_t e^{−m_t} for the unstabilised c̃_t = e^{z_f} c̃_{t-1} + e^{z_i} tanh(z_z),
ñ_t = e^{z_f} ñ_{t-1} + e^{z_i} (c̃_0 = ñ_0 = 0), so h_t = σ(z_o) c̃_t / ñ_t whatever the m_t,
and every exponential has a non-positive argument (no overflow).

Zero carry: h_0 = c_0 = n_0 = 0 and m_0 = M_0 = −1e30, a finite stand-in for the log-scale of an
empty sum (−∞). With c_0 = n_0 = 0 the value of m_0 does not reach h (above), and so far below any
preactivation it makes m_1 = z_i, i'_1 = 1 and f'_1 = exp(z_f − 1e30 − z_i) = 0 exactly, in
float32 and float64, with zero derivatives (no inf·0): n_1 = 1. From then on every step has
i'_t = 1 (then n_t ≥ 1) or f'_t = 1 (then n_t ≥ n_{t-1}), so n_t ≥ 1 by induction and c_t / n_t
(a weighted mean of the tanh(z_z) seen, so |h_t| ≤ 1) never divides by a small number. m_0 = 0
would also give n_1 = i'_1 > 0 in exact arithmetic, but i'_1 = exp(z_i − max(z_f, z_i))
underflows to 0 in float32 once z_f − z_i exceeds about 100, and h_1 = 0/0. (xLSTM's reference
pointwise step gets m_1 = z_i by testing n_{t-1} == 0, and puts log σ(z_f) where we have z_f.)

Initialisation as the suite's (W ~ N(0, 1/fan_in), b_out = 0), biases 0 except the forget gate's:
b_f = log σ(linspace(3, 6, n)) ∈ [−0.049, −0.0025], i.e. the forget factor e^{b_f} at zero input
is σ(3) … σ(6) = 0.953 … 0.998, near 1 and spread over neurons like xLSTM's initialisation of its
sigmoid forget gate. (b_f = 3 would suit σ(z_f); under exp(z_f) it is a factor e³ ≈ 20 per step,
so the weight of old inputs grows and h fixes on the first ones.)
"""

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, factorised_cell

M_0 = -1e30  # m_0, see the module docstring
FORGET_BIAS_RANGE = (3.0, 6.0)  # b_f = log σ(linspace(3, 6, n))


def slstm(n_in: int, n_hidden: int, n_out: int) -> Cell:
    """The sLSTM of the module docstring: carry (h, c, n, m), each [n_hidden]."""
    n = n_hidden

    def core(z, s_prev):
        _, c_prev, n_prev, m_prev = s_prev
        z_i, z_f, z_z, z_o = jnp.split(z, 4)
        m = jnp.maximum(z_f + m_prev, z_i)
        i = jnp.exp(z_i - m)
        f = jnp.exp(z_f + m_prev - m)
        c = f * c_prev + i * jnp.tanh(z_z)
        normaliser = f * n_prev + i
        return jax.nn.sigmoid(z_o) * c / normaliser, c, normaliser, m

    def zero_carry(dtype=jnp.float32):
        zeros = jnp.zeros((n,), dtype)
        return zeros, zeros, zeros, jnp.full((n,), M_0, dtype)

    def bias_init(dtype):
        forget = jax.nn.log_sigmoid(jnp.linspace(*FORGET_BIAS_RANGE, n, dtype=dtype))
        return jnp.zeros((4 * n,), dtype).at[n : 2 * n].set(forget)

    def row_gain(z):
        """|φ'| per row [4n]: 1 on the i and f rows (∂ log e^{z} / ∂z; the stabilised gates'
        own derivative depends on m_{t-1}, which row_gain does not see), tanh'(z_z) on the z
        rows, σ'(z_o) on the o rows."""
        z_z, z_o = z[2 * n : 3 * n], z[3 * n :]
        return jnp.concatenate(
            [
                jnp.ones((2 * n,), z.dtype),
                1.0 - jnp.tanh(z_z) ** 2,
                jax.nn.sigmoid(z_o) * (1.0 - jax.nn.sigmoid(z_o)),
            ]
        )

    return factorised_cell(
        "slstm",
        n_in,
        n_hidden,
        n_out,
        gates=4,
        core=core,
        hidden_leaf=0,
        zero_carry=zero_carry,
        bias_init=bias_init,
        row_gain=row_gain,
    )
