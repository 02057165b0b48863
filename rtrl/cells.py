"""Recurrent cells with explicit parameters, written so that forward-mode credit can see inside.

Every cell shares one factorisation, which the online algorithms rely on:

    z_t = W_rec h_{t-1} + W_in x_t + b          (R rows: R = n for the vanilla RNN, 4n for the LSTM)
    s_t = core(z_t, s_{t-1})                    elementwise per neuron (no mixing across neurons)
    h_t = hidden(s_t),   y_t = W_out h_t + b_out

All mixing between neurons goes through W_rec h_{t-1}, so the Jacobian propagation term of RTRL is
`W_rec @ M_h` and "k of n paths per neuron" means keeping k columns of each row of W_rec there.
The recurrent parameters are grouped row-wise as Θ = [W_rec | W_in | b] (R × m, m = n + n_in + 1)
and z_t = Θ v_t with v_t = [h_{t-1}; x_t; 1].

Vanilla: s = h, core(z) = tanh(z).
LSTM (gate order i, f, g, o): c_t = σ(z_f) c_{t-1} + σ(z_i) tanh(z_g), h_t = σ(z_o) tanh(c_t); the
carry is (h, c). The cell-state self-Jacobian ∂c_t/∂c_{t-1} = σ(z_f) is diagonal and lives in
`core`, so every algorithm keeps it exactly.

Initialisation (the paper leaves it implicit): W_rec ~ N(0, 1/n), W_in ~ N(0, 1/n_in),
W_out ~ N(0, 1/n), biases 0 except the LSTM forget-gate bias, which is 1.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = Any  # h: [n] (vanilla) or (h, c): ([n], [n]) (LSTM)


class Cell(NamedTuple):
    name: str
    n_in: int
    n_hidden: int
    n_out: int
    n_rows: int  # R, rows of W_rec / W_in / b
    init: Callable[..., Params]  # (key, dtype=float32) -> params
    initial_carry: Callable[..., Carry]  # (dtype=float32) -> zero carry, unbatched
    step: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]  # one step: (carry, y)
    core: Callable[[jax.Array, Carry], Carry]  # (z [R], s_{t-1}) -> s_t, elementwise per neuron
    hidden: Callable[[Carry], jax.Array]  # s -> h [n]; a selection, so it also maps sensitivities


RECURRENT = ("W_rec", "W_in", "b")
READOUT = ("W_out", "b_out")


def preactivation(params: Params, h_prev: jax.Array, x: jax.Array) -> jax.Array:
    """z = W_rec h_{t-1} + W_in x_t + b, shape [R]."""
    return params["W_rec"] @ h_prev + params["W_in"] @ x + params["b"]


def readout(params: Params, h: jax.Array) -> jax.Array:
    """y = W_out h + b_out, shape [n_out]."""
    return params["W_out"] @ h + params["b_out"]


def _normal(key, shape, fan_in, dtype):
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(fan_in, dtype))


def _make(name, n_in, n_hidden, n_out, gates, core, hidden, zero_carry, bias_init):
    rows = gates * n_hidden

    def init(key, dtype=jnp.float32):
        k_rec, k_in, k_out = jax.random.split(key, 3)
        return {
            "W_in": _normal(k_in, (rows, n_in), n_in, dtype),
            "W_rec": _normal(k_rec, (rows, n_hidden), n_hidden, dtype),
            "b": bias_init(dtype),
            "W_out": _normal(k_out, (n_out, n_hidden), n_hidden, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def step(params, carry, x):
        _check_input(x, n_in)
        carry = core(preactivation(params, hidden(carry), x), carry)
        return carry, readout(params, hidden(carry))

    return Cell(name, n_in, n_hidden, n_out, rows, init, zero_carry, step, core, hidden)


def _check_input(x, n_in):
    if x.shape != (n_in,):
        raise ValueError(
            f"x_t has shape {x.shape}, the cell expects ({n_in},); cells are unbatched, "
            "vmap over a batch or seed axis"
        )


def vanilla(n_in: int, n_hidden: int, n_out: int) -> Cell:
    """h_t = tanh(W_rec h_{t-1} + W_in x_t + b), y_t = W_out h_t + b_out."""
    return _make(
        "vanilla",
        n_in,
        n_hidden,
        n_out,
        gates=1,
        core=lambda z, s_prev: jnp.tanh(z),
        hidden=lambda s: s,
        zero_carry=lambda dtype=jnp.float32: jnp.zeros((n_hidden,), dtype),
        bias_init=lambda dtype: jnp.zeros((n_hidden,), dtype),
    )


def lstm(n_in: int, n_hidden: int, n_out: int) -> Cell:
    """LSTM without peepholes, gates (i, f, g, o) stacked on the rows of W_in, W_rec, b."""
    n = n_hidden

    def core(z, s_prev):
        _, c_prev = s_prev
        i, f, g, o = jnp.split(z, 4)
        c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def bias_init(dtype):
        return jnp.zeros((4 * n,), dtype).at[n : 2 * n].set(1.0)

    return _make(
        "lstm",
        n_in,
        n_hidden,
        n_out,
        gates=4,
        core=core,
        hidden=lambda s: s[0],
        zero_carry=lambda dtype=jnp.float32: (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)),
        bias_init=bias_init,
    )


_REGISTRY = {"vanilla": vanilla, "lstm": lstm}


def get(name: str, n_in: int, n_hidden: int, n_out: int) -> Cell:
    """Look up a cell by name ("vanilla" or "lstm")."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown cell {name!r}; known cells: {sorted(_REGISTRY)}")
    for label, value in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if int(value) < 1:
            raise ValueError(f"{label} must be a positive integer, got {value}")
    return _REGISTRY[name](int(n_in), int(n_hidden), int(n_out))


def theta(params: Params) -> jax.Array:
    """Θ = [W_rec | W_in | b], shape [R, m]."""
    return jnp.concatenate([params["W_rec"], params["W_in"], params["b"][:, None]], axis=1)


def split_theta(cell: Cell, g: jax.Array) -> Params:
    """Inverse of `theta` for a gradient of shape [R, m]."""
    n = cell.n_hidden
    return {"W_rec": g[:, :n], "W_in": g[:, n : n + cell.n_in], "b": g[:, n + cell.n_in]}


def inputs_vector(h_prev: jax.Array, x: jax.Array) -> jax.Array:
    """v_t = [h_{t-1}; x_t; 1], shape [m]."""
    return jnp.concatenate([h_prev, x, jnp.ones((1,), h_prev.dtype)])


def core_tangent(cell: Cell, z: jax.Array, carry: Carry, dz: jax.Array, dcarry: Carry) -> Carry:
    """Tangent of s = core(z, s_prev) at (z, carry) for tangents batched on two trailing axes:
    dz [len(z), A, C], dcarry leaves [len(carry leaf), A, C] -> leaves like dcarry. The core is
    elementwise per neuron, so z and carry may be any block of neurons (z gate-major)."""

    def one(dz_col, dcarry_col):
        return jax.jvp(cell.core, (z, carry), (dz_col, dcarry_col))[1]

    return jax.vmap(jax.vmap(one, in_axes=1, out_axes=1), in_axes=2, out_axes=2)(dz, dcarry)
