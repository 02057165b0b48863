"""A two-layer vanilla RNN, the immediate-derivative paper's depth probe (§7: per-layer Jacobians
near-isotropic, condition 1.7 and 2.5; the cross-layer one 3773):

    h¹_t = tanh(W_rec1 h¹_{t−1} + W_in1 x_t + b1)
    h²_t = tanh(W_rec2 h²_{t−1} + W_in2 h¹_t + b2),      y_t = W_out h²_t + b_out

n = n_hidden units per layer; carry (h¹, h²). Layer 2 reads the current h¹_t, so the transition
mixes layers inside a step and the cell is stepwise only (tbptt, bptt, full rtrl). tbptt(w=1)
is the immediate derivative: it differentiates through h¹_t → h²_t within the step and holds
s_{t−1} constant. Initialisation as the suite's: W ~ N(0, 1/fan_in), biases 0.
"""

import jax
import jax.numpy as jnp
import numpy as np

from rtrl.cells.base import Cell, normal, readout, stepwise_cell

LAYERS = (("W_rec1", "W_in1", "b1"), ("W_rec2", "W_in2", "b2"))  # layer ℓ's parameters θ^ℓ


def vanilla_2layer(n_in: int, n_hidden: int, n_out: int) -> Cell:
    n = n_hidden

    def init(key, dtype=jnp.float32):
        keys = jax.random.split(key, 5)
        return {
            "W_in1": normal(keys[0], (n, n_in), n_in, dtype),
            "W_rec1": normal(keys[1], (n, n), n, dtype),
            "b1": jnp.zeros((n,), dtype),
            "W_in2": normal(keys[2], (n, n), n, dtype),
            "W_rec2": normal(keys[3], (n, n), n, dtype),
            "b2": jnp.zeros((n,), dtype),
            "W_out": normal(keys[4], (n_out, n), n, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def transition(params, carry, x):
        h1, h2 = carry
        h1 = jnp.tanh(params["W_rec1"] @ h1 + params["W_in1"] @ x + params["b1"])
        h2 = jnp.tanh(params["W_rec2"] @ h2 + params["W_in2"] @ h1 + params["b2"])
        return h1, h2

    return stepwise_cell(
        "vanilla_2layer",
        n_in,
        n_hidden,
        n_out,
        init=init,
        initial_carry=lambda dtype=jnp.float32: (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)),
        transition=transition,
        output=lambda params, carry, x: readout(params, carry[1]),
        hidden=lambda carry: carry[1],
    )


def sensitivity_blocks(params: dict, M: jax.Array, n: int) -> dict:
    """The blocks of full RTRL's M = ∂(h¹, h²)/∂θ ([2n, P], `forward.jacobian_rtrl`'s order:
    carry rows h¹ then h², columns `ravel_pytree(params)`): layer 1 ∂h¹/∂θ¹, layer 2 ∂h²/∂θ²
    and the cross-layer block ∂h²/∂θ¹, each [n, |θ^ℓ|]."""
    start, offsets = 0, {}  # each leaf's column range in M, from static shapes (ravel order)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        offsets[path[0].key] = np.arange(start, start + leaf.size)
        start += leaf.size
    cols = [np.concatenate([offsets[p] for p in layer]) for layer in LAYERS]
    return {
        "layer 1": M[:n, cols[0]],
        "layer 2": M[n:, cols[1]],
        "cross-layer (∂h²/∂θ¹)": M[n:, cols[0]],
    }
