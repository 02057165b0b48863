"""A diagonal state-space layer (S4D, Gu, Gupta, Goel & Ré 2022) trained from scratch, H =
n_hidden channels, each with a complex diagonal state x ∈ C^N (N = state_size):

    u_t = W_in x_t + b_in                                      ([H])
    A = −exp(A_log_re) + i A_im,  B = B_re + i B_im,  C = C_re + i C_im      ([H, N] each)
    Δ = exp(log_dt)                                            ([H])
    Ā = exp(Δ A),  B̄ = (Ā − 1) / A · B                         (zero-order hold, [H, N])
    x_t = Ā ⊙ x_{t−1} + B̄ ⊙ u_t                                ([H, N], x_0 = 0)
    z_t = Re(Σ_n C_n x_t,n) + D ⊙ u_t                          ([H])
    y_t = W_out z_t + b_out                                    ([n_out])

equivalently z_t = Σ_{j=0}^{t} K_j ⊙ u_{t−j} + D ⊙ u_t with the kernel K_j = Re(Σ_n C_n Ā_n^j B̄_n).
S4D keeps N/2 states of each conjugate pair and writes 2 Re(·); here all N states are free and
the factor 2 is absorbed in C. Ā − 1 is evaluated as expm1(Δ A), exact for small Δ in float32.
The complex arithmetic is in jnp's complex dtype (complex128 for float64 parameters); every
parameter and every carry leaf is real, so jax.grad and jax.jacrev over them are exact.

Initialisation: S4D-Lin, A_log_re = log 0.5 and A_im[:, n] = π n (n = 0..N−1); log_dt ~
U[log 0.001, log 0.1] per channel; B = 1; C complex normal with E|C_n|² = 1/N (real and imaginary
parts N(0, 1/(2N))); D ~ N(0, 1) as in the S4 code; W_in ~ N(0, 1/n_in), W_out ~ N(0, 1/H),
b_in = b_out = 0.

C, D, W_out and b_out act only on the output path (z_t and y_t; nothing in x_t depends on them),
so they are the output parameters; D ⊙ u_t carries the input around the state ("D / output").
The carry is (z_t, Re x_t, Im x_t): `hidden` must be a selection of an [n_hidden] carry leaf, and
z_t, the layer's output of H channels, is that leaf (the state has H · N entries). Keeping z_t in
the carry means C and D enter `transition`, but no transition reads z_{t−1}, so their
sensitivities are only their immediate derivatives. Stepwise only (tbptt, bptt, full rtrl).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, Params, normal, readout, stepwise_cell

DT_MIN, DT_MAX = 0.001, 0.1


class S4Carry(NamedTuple):
    z: jax.Array  # [H] channel outputs Re(C x_t) + D u_t; first, so leaf 0
    x_re: jax.Array  # [H, N] real part of the diagonal state
    x_im: jax.Array  # [H, N] imaginary part


def discretise(params: Params) -> tuple[jax.Array, jax.Array]:
    """(Ā, B̄), complex [H, N] each: Ā = exp(Δ A), B̄ = (Ā − 1) / A · B (zero-order hold)."""
    A = -jnp.exp(params["A_log_re"]) + 1j * params["A_im"]
    dtA = jnp.exp(params["log_dt"])[:, None] * A
    return jnp.exp(dtA), jnp.expm1(dtA) / A * (params["B_re"] + 1j * params["B_im"])


def s4(n_in: int, n_hidden: int, n_out: int, state_size: int = 8) -> Cell:
    """The S4D layer of the module docstring with H = n_hidden channels and N = state_size.
    Carry S4Carry(z [H], x_re [H, N], x_im [H, N]); hidden(s) = z."""
    H, N = n_hidden, int(state_size)
    if N < 1:
        raise ValueError(f"s4 needs state_size >= 1, got {state_size}")

    def init(key, dtype=jnp.float32):
        k_in, k_dt, k_c_re, k_c_im, k_d, k_out = jax.random.split(key, 6)
        log_dt = jax.random.uniform(
            k_dt, (H,), dtype, minval=math.log(DT_MIN), maxval=math.log(DT_MAX)
        )
        return {
            "W_in": normal(k_in, (H, n_in), n_in, dtype),
            "b_in": jnp.zeros((H,), dtype),
            "log_dt": log_dt,
            "A_log_re": jnp.full((H, N), math.log(0.5), dtype),
            "A_im": jnp.broadcast_to(math.pi * jnp.arange(N, dtype=dtype), (H, N)),
            "B_re": jnp.ones((H, N), dtype),
            "B_im": jnp.zeros((H, N), dtype),
            "C_re": normal(k_c_re, (H, N), 2 * N, dtype),
            "C_im": normal(k_c_im, (H, N), 2 * N, dtype),
            "D": jax.random.normal(k_d, (H,), dtype),
            "W_out": normal(k_out, (n_out, H), H, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def initial_carry(dtype=jnp.float32):
        zeros = jnp.zeros((H, N), dtype)
        return S4Carry(jnp.zeros((H,), dtype), zeros, zeros)

    def transition(params, carry, x):
        u = params["W_in"] @ x + params["b_in"]
        A_bar, B_bar = discretise(params)
        state = A_bar * (carry.x_re + 1j * carry.x_im) + B_bar * u[:, None]
        C = params["C_re"] + 1j * params["C_im"]
        z = jnp.real(jnp.sum(C * state, axis=1)) + params["D"] * u
        return S4Carry(z, jnp.real(state), jnp.imag(state))

    return stepwise_cell(
        "s4",
        n_in,
        n_hidden,
        n_out,
        init=init,
        initial_carry=initial_carry,
        transition=transition,
        output=lambda params, carry, x: readout(params, carry.z),
        hidden=lambda carry: carry.z,
        output_params=("C_re", "C_im", "D", "W_out", "b_out"),
        bypass="D / output",
    )
