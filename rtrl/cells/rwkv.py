"""One RWKV-4 time-mixing block (Peng et al. 2023) as a recurrent cell, n = n_hidden channels:

    x^k_t = μ_k ⊙ x_t + (1 − μ_k) ⊙ x_{t-1}   (likewise x^v_t, x^r_t; token shift, [n_in])
    k_t = W_k x^k_t,  v_t = W_v x^v_t,  r_t = W_r x^r_t                       [n]
    wkv_t = (a_{t-1} + e^{u + k_t} ⊙ v_t) / (b_{t-1} + e^{u + k_t})           [n]
    a_t = e^{−w} ⊙ a_{t-1} + e^{k_t} ⊙ v_t,   b_t = e^{−w} ⊙ b_{t-1} + e^{k_t}   [n]
    h_t = W_o (σ(r_t) ⊙ wkv_t),               y_t = W_out h_t + b_out

with the per-channel decay w = exp(w_raw) > 0 and bonus u [n], a_0 = b_0 = 0, x_0 = 0. There is
no W_rec and the state is per channel (mixing happens only inside a step), so the cell is stepwise
only (tbptt, bptt, full rtrl). The WKV state is kept as RWKV-4's CUDA kernel keeps it: a and b
scaled by e^{−p} with a running max p [n] (so every exponential has a non-positive argument):

    q  = max(p_{t-1}, u + k_t)       wkv_t = (e^{p_{t-1}−q} a_{t-1} + e^{u+k_t−q} v_t)
                                             / (e^{p_{t-1}−q} b_{t-1} + e^{u+k_t−q})
    q' = max(p_{t-1} − w, k_t)       a_t = e^{p_{t-1}−w−q'} a_{t-1} + e^{k_t−q'} v_t,
                                     b_t = e^{p_{t-1}−w−q'} b_{t-1} + e^{k_t−q'},   p_t = q'

p_0 = −1e38 (the kernel's MIN_VALUE, finite in float32 and float64): step 1 then has q = u + k_1,
q' = k_1 and e^{p_0 − q} = e^{p_0 − w − q'} = 0 exactly, so a_0 = b_0 = 0 contribute 0 with zero
derivatives, and no inf − inf arises (p_0 − w stays finite). From step 1 on b_t ≥ 1 (one of the
two weights in each update is 1, as in the sLSTM's normaliser), so both denominators are ≥ 1.

The carry is (h, a, b, p, x_prev), each [n] but x_prev [n_in]; h is carried as well because
y_t = output(θ, s_t, x_t) must read h_t, which needs a_{t-1}, b_{t-1} and x_{t-1}, none of them
recoverable from s_t (∂h_t/∂h_{t-1} = 0).

Initialisation: W_k, W_v, W_r ~ N(0, 1/n_in), W_o, W_out ~ N(0, 1/n), b_out = 0, μ_k = μ_v =
μ_r = 0.5; w_raw and u as RWKV-4's first layer (RWKV-LM v4, `time_decay`, `time_first`):
w_raw_j = −5 + 8 (j / (n − 1))^0.7 (decays e^{−w} from e^{−e^{−5}} = 0.993 down to e^{−e^3} ≈ 2e-9),
u_j = log 0.3 + 0.5 ((j + 1) mod 3 − 1), j = 0 … n − 1.
"""

import math

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, normal, readout, stepwise_cell

P_0 = -1e38  # p_0, RWKV-4's MIN_VALUE


def rwkv(n_in: int, n_hidden: int, n_out: int) -> Cell:
    """The RWKV-4 time-mixing cell of the module docstring: carry (h, a, b, p, x_prev)."""
    n = n_hidden

    def init(key, dtype=jnp.float32):
        k_k, k_v, k_r, k_o, k_out = jax.random.split(key, 5)
        j = jnp.arange(n, dtype=dtype)
        return {
            "W_k": normal(k_k, (n, n_in), n_in, dtype),
            "W_v": normal(k_v, (n, n_in), n_in, dtype),
            "W_r": normal(k_r, (n, n_in), n_in, dtype),
            "W_o": normal(k_o, (n, n), n, dtype),
            "mu_k": jnp.full((n_in,), 0.5, dtype),
            "mu_v": jnp.full((n_in,), 0.5, dtype),
            "mu_r": jnp.full((n_in,), 0.5, dtype),
            "w_raw": -5.0 + 8.0 * jnp.linspace(0.0, 1.0, n, dtype=dtype) ** 0.7,
            "u": math.log(0.3) + 0.5 * ((j + 1) % 3 - 1),
            "W_out": normal(k_out, (n_out, n), n, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def initial_carry(dtype=jnp.float32):
        zeros = jnp.zeros((n,), dtype)
        return zeros, zeros, zeros, jnp.full((n,), P_0, dtype), jnp.zeros((n_in,), dtype)

    def transition(params, carry, x):
        _, a, b, p, x_prev = carry

        def shifted(mu):
            return mu * x + (1.0 - mu) * x_prev

        k = params["W_k"] @ shifted(params["mu_k"])
        v = params["W_v"] @ shifted(params["mu_v"])
        r = params["W_r"] @ shifted(params["mu_r"])
        w = jnp.exp(params["w_raw"])
        bonus = params["u"] + k
        q = jnp.maximum(p, bonus)
        old, new = jnp.exp(p - q), jnp.exp(bonus - q)
        wkv = (old * a + new * v) / (old * b + new)
        h = params["W_o"] @ (jax.nn.sigmoid(r) * wkv)
        q = jnp.maximum(p - w, k)
        old, new = jnp.exp(p - w - q), jnp.exp(k - q)
        return h, old * a + new * v, old * b + new, q, x

    return stepwise_cell(
        "rwkv",
        n_in,
        n_hidden,
        n_out,
        init=init,
        initial_carry=initial_carry,
        transition=transition,
        output=lambda params, carry, x: readout(params, carry[0]),
        hidden=lambda carry: carry[0],
        output_params=("W_out", "b_out"),
        bypass="",
    )
