"""What a recurrent cell is, and what it declares so that algorithms never ask for its name.

Every cell of the factorised family shares one form, which the forward-mode algorithms rely on:

    z_t = W_rec h_{t-1} + W_in x_t + b          (R = G n rows, gate-major: row g n + i is gate g
    s_t = core(z_t, s_{t-1})                     of neuron i), elementwise per neuron (no mixing)
    h_t = hidden(s_t),   y_t = W_out h_t + b_out

All mixing between neurons goes through W_rec h_{t-1}, so the Jacobian propagation term of RTRL is
`W_rec @ M_h` and "k of n paths per neuron" means keeping k columns of each row of W_rec there.
The recurrent parameters are grouped row-wise as Θ = [W_rec | W_in | b] (R × m, m = n + n_in + 1)
and z_t = Θ v_t with v_t = [h_{t-1}; x_t; 1].

Every cell, factorised or not, is also stepwise: s_t = transition(θ, s_{t-1}, x_t) and
y_t = output(θ, s_t, x_t) (x_t there for an input-to-output bypass such as S4's D u_t), which is
all that the reverse-mode algorithms and the generic full RTRL (`rtrl.forward.rtrl` on a cell
without the factorised form: the sensitivity M = ∂s_t/∂θ of every parameter, from Jacobians of
`transition`) need.

A cell declares (fields of `Cell`):
    gates        G, rows per neuron (R = G n).
    hidden_leaf  which leaf of the carry (in jax.tree.leaves order) is h; `hidden` selects it.
    row_gain     z [R] -> [R], the size of each row's activation derivative |φ'_r(z_r)|, which
                 scales row r of the one-step Jacobian (the per-step Jacobian mask ranks by it).
    output_params  names of the parameters that act only on y_t (the readout; S4's D; an MLP
                 head), the "output" group of the recurrent-vs-output gradient-norm ratio.
    bypass       "" or what carries y_t around the nonlinear state update (the immediate-
                 derivative paper's Table 3 column: "update gate", "D / output", "MLP output").
    capabilities what algorithms may assume: FACTORISED (the form above) for every forward-mode
                 and stochastic algorithm; STEPWISE (transition / output) for tbptt, bptt and
                 full rtrl, which is all a cell without the factorised form serves.
Algorithms call `require(cell, FACTORISED, who)`, which refuses clearly what they cannot do.
Adding a cell is one module building a `Cell` (see vanilla.py) plus a line in the registry.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = Any  # a pytree of [n] leaves, e.g. h (vanilla) or (h, c) (LSTM)

FACTORISED = "factorised"
STEPWISE = "stepwise"
CAPABILITIES = {
    FACTORISED: "z = W_rec h + W_in x + b feeding a per-neuron elementwise core, h a carry leaf",
    STEPWISE: "s_t = transition(θ, s_{t-1}, x_t), y_t = output(θ, s_t, x_t)",
}


class Cell(NamedTuple):
    name: str
    n_in: int
    n_hidden: int
    n_out: int
    n_rows: int  # R = gates · n_hidden, rows of W_rec / W_in / b
    init: Callable[..., Params]  # (key, dtype=float32) -> params
    initial_carry: Callable[..., Carry]  # (dtype=float32) -> zero carry, unbatched
    step: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]  # one step: (carry, y)
    core: Callable[[jax.Array, Carry], Carry]  # (z [R], s_{t-1}) -> s_t, elementwise per neuron
    hidden: Callable[[Carry], jax.Array]  # s -> h [n]; a selection, so it also maps sensitivities
    gates: int = 1  # G
    hidden_leaf: int = 0  # index of h among jax.tree.leaves(carry)
    row_gain: Callable[[jax.Array], jax.Array] | None = None  # z [R] -> |φ'_r(z_r)| [R]
    capabilities: frozenset = frozenset({FACTORISED, STEPWISE})
    transition: Callable | None = None  # (params, s_{t-1}, x_t) -> s_t
    output: Callable | None = None  # (params, s_t, x_t) -> y_t [n_out]
    output_params: tuple = ("W_out", "b_out")  # the parameters on the output path (no state)
    bypass: str = ""  # the path from input or state to y_t that skips the nonlinear update


RECURRENT = ("W_rec", "W_in", "b")
READOUT = ("W_out", "b_out")


def require(cell: Cell, capability: str, who: str) -> None:
    """Raises a ValueError naming what `who` needs when the cell does not declare `capability`."""
    if capability not in cell.capabilities:
        raise ValueError(
            f"{who} needs a cell with the capability {capability!r} "
            f"({CAPABILITIES[capability]}); cell {cell.name!r} declares "
            f"{sorted(cell.capabilities)}."
            + (
                " tbptt, bptt and rtrl (full) need only its stepwise form."
                if capability != STEPWISE and STEPWISE in cell.capabilities
                else ""
            )
        )


def param_dtype(params: Params):
    """The floating dtype of a parameter pytree (its first leaf's)."""
    return jax.tree.leaves(params)[0].dtype


def check_input(n_in: int, x) -> None:
    if x.shape != (n_in,):
        raise ValueError(
            f"x_t has shape {x.shape}, the cell expects ({n_in},); cells are unbatched, "
            "vmap over a batch or seed axis"
        )


def stepper(n_in, transition, output):
    """`Cell.step` from the stepwise form: s_t = transition(θ, s_{t-1}, x_t), y_t = output(θ, s_t,
    x_t), with the input's shape checked."""

    def step(params, carry, x):
        check_input(n_in, x)
        carry = transition(params, carry, x)
        return carry, output(params, carry, x)

    return step


def stepwise_cell(
    name,
    n_in,
    n_hidden,
    n_out,
    *,
    init,
    initial_carry,
    transition,
    output,
    hidden,
    output_params=("W_out", "b_out"),
    bypass="",
) -> Cell:
    """A cell of the stepwise form only (no factorised core): `hidden(s) -> [n_hidden]` is the
    state the diagnostics read; n_rows = 0 (there are no Θ rows)."""

    step = stepper(n_in, transition, output)

    return Cell(
        name,
        n_in,
        n_hidden,
        n_out,
        0,
        init,
        initial_carry,
        step,
        None,
        hidden,
        capabilities=frozenset({STEPWISE}),
        transition=transition,
        output=output,
        output_params=tuple(output_params),
        bypass=bypass,
    )


def carry_leaves(cell: Cell) -> int:
    """L, the number of leaves of the cell's carry (1 for the vanilla RNN, 2 for the LSTM)."""
    return len(jax.tree.leaves(jax.eval_shape(cell.initial_carry)))


def add_to_hidden(cell: Cell, tree, value):
    """`tree` (shaped like the carry) with `value` added to its hidden leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    leaves[cell.hidden_leaf] = leaves[cell.hidden_leaf] + value
    return jax.tree.unflatten(treedef, leaves)


def preactivation(params: Params, h_prev: jax.Array, x: jax.Array) -> jax.Array:
    """z = W_rec h_{t-1} + W_in x_t + b, shape [R]."""
    return params["W_rec"] @ h_prev + params["W_in"] @ x + params["b"]


def readout(params: Params, h: jax.Array) -> jax.Array:
    """y = W_out h + b_out, shape [n_out]."""
    return params["W_out"] @ h + params["b_out"]


def normal(key, shape, fan_in, dtype):
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(fan_in, dtype))


def factorised_cell(
    name, n_in, n_hidden, n_out, *, gates, core, hidden_leaf, zero_carry, bias_init, row_gain
) -> Cell:
    """A cell of the factorised form with the suite's initialisation: W_rec ~ N(0, 1/n),
    W_in ~ N(0, 1/n_in), W_out ~ N(0, 1/n), b_out = 0, b from bias_init(dtype)."""
    rows = gates * n_hidden

    def init(key, dtype=jnp.float32):
        k_rec, k_in, k_out = jax.random.split(key, 3)
        return {
            "W_in": normal(k_in, (rows, n_in), n_in, dtype),
            "W_rec": normal(k_rec, (rows, n_hidden), n_hidden, dtype),
            "b": bias_init(dtype),
            "W_out": normal(k_out, (n_out, n_hidden), n_hidden, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def hidden(carry):
        return jax.tree.leaves(carry)[hidden_leaf]

    def transition(params, carry, x):
        return core(preactivation(params, hidden(carry), x), carry)

    def output(params, carry, x):
        return readout(params, hidden(carry))

    step = stepper(n_in, transition, output)

    return Cell(
        name,
        n_in,
        n_hidden,
        n_out,
        rows,
        init,
        zero_carry,
        step,
        core,
        hidden,
        gates,
        hidden_leaf,
        row_gain,
        transition=transition,
        output=output,
    )


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
