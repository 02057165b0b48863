"""DreamerV3's block-diagonal GRU (Hafner et al. 2023, the RSSM's deterministic core) feeding a
two-layer SiLU MLP head. h_t [n] is split into K = `blocks` blocks of b = n / K units,
h_t = [h_t^1; …; h_t^K] (block-major, h^j = h[j b : (j + 1) b]). Block j sees the full input and
only its own block of the state:

    z_t^j = γ^j ⊙ LN(W_in^j x_t + W_rec^j h_{t-1}^j) + b^j         [3b], rows (r, c, u)
    LN(a) = (a − mean(a)) / sqrt(var(a) + ε)                        over the 3b entries of a
    r_t^j = σ(z_r),   c_t^j = tanh(r_t^j ⊙ z_c),   u_t^j = σ(z_u − 1)
    h_t^j = u_t^j ⊙ c_t^j + (1 − u_t^j) ⊙ h_{t-1}^j

with W_in [K, 3b, n_in], W_rec [K, 3b, b], γ = norm_scale [K, 3b], b [K, 3b], ε = 1e-3. As in
DreamerV3 the update gate u multiplies the candidate (the opposite of `gru`'s convention), the
reset gate multiplies the whole candidate preactivation (input term included), and the −1 keeps
u ≈ σ(−1) ≈ 0.27 at the start, so h leans towards its past. The norm is a LayerNorm over each
block's three gates together, the block-local form of DreamerV3's LayerNorm over all 3n gate
preactivations: normalising over all blocks at once would couple them through the mean and
variance and the state Jacobian ∂h_t/∂h_{t-1} would no longer be block-diagonal. Its affine part
is kept (learned scale γ and shift b, the shift standing in for the gate bias, as in DreamerV3
where the linear layer before a norm has no bias): the norm fixes each block's preactivation
scale, so without γ the gates' sharpness could not be learned.

The head, "two-layer" meaning two hidden SiLU layers of width w = mlp_width (default n) and a
linear readout:

    a_1 = silu(W_1 h_t + b_1),   a_2 = silu(W_2 a_1 + b_2),   y_t = W_out a_2 + b_out

W_1 [w, n], W_2 [w, w], W_out [n_out, w]. The head holds no state, so it is the cell's
`output_params` and the "MLP output" bypass. The gates mix the state inside a block, so the cell
is stepwise only (tbptt, bptt and full rtrl). Initialisation as the suite's, W ~ N(0, 1/fan_in)
(W_rec^j: fan-in b), biases 0, γ = 1.
"""

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, normal, stepwise_cell

_EPS = 1e-3  # DreamerV3's LayerNorm epsilon (on the variance)
_UPDATE_BIAS = -1.0

HEAD_PARAMS = ("W_1", "b_1", "W_2", "b_2", "W_out", "b_out")


BLOCKS = 8


def block_gru_mlp(
    n_in: int, n_hidden: int, n_out: int, blocks: int | None = None, mlp_width: int | None = None
) -> Cell:
    """The block GRU + SiLU MLP head of the module docstring: carry h [n_hidden], y [n_out].
    blocks: default the largest divisor of n_hidden up to BLOCKS (8, DreamerV3's count)."""
    if blocks is None:
        blocks = max(d for d in range(1, BLOCKS + 1) if n_hidden % d == 0)
    if int(blocks) < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks}")
    if n_hidden % blocks:
        raise ValueError(
            f"n_hidden = {n_hidden} is not divisible by blocks = {blocks}; the block GRU needs "
            "n_hidden = blocks · b"
        )
    width = n_hidden if mlp_width is None else int(mlp_width)
    if width < 1:
        raise ValueError(f"mlp_width must be a positive integer, got {mlp_width}")
    K, b = int(blocks), n_hidden // blocks

    def init(key, dtype=jnp.float32):
        k_in, k_rec, k_1, k_2, k_out = jax.random.split(key, 5)
        return {
            "W_in": normal(k_in, (K, 3 * b, n_in), n_in, dtype),
            "W_rec": normal(k_rec, (K, 3 * b, b), b, dtype),
            "norm_scale": jnp.ones((K, 3 * b), dtype),
            "b": jnp.zeros((K, 3 * b), dtype),
            "W_1": normal(k_1, (width, n_hidden), n_hidden, dtype),
            "b_1": jnp.zeros((width,), dtype),
            "W_2": normal(k_2, (width, width), width, dtype),
            "b_2": jnp.zeros((width,), dtype),
            "W_out": normal(k_out, (n_out, width), width, dtype),
            "b_out": jnp.zeros((n_out,), dtype),
        }

    def transition(params, h_prev, x):
        h_blocks = h_prev.reshape(K, b)
        a = params["W_in"] @ x + jnp.einsum("kgi,ki->kg", params["W_rec"], h_blocks)  # [K, 3b]
        centred = a - a.mean(axis=1, keepdims=True)
        normed = centred / jnp.sqrt((centred**2).mean(axis=1, keepdims=True) + _EPS)
        z = params["norm_scale"] * normed + params["b"]
        z_r, z_c, z_u = z[:, :b], z[:, b : 2 * b], z[:, 2 * b :]
        r = jax.nn.sigmoid(z_r)
        c = jnp.tanh(r * z_c)
        u = jax.nn.sigmoid(z_u + _UPDATE_BIAS)
        return (u * c + (1.0 - u) * h_blocks).reshape(n_hidden)

    def output(params, h, x):
        a_1 = jax.nn.silu(params["W_1"] @ h + params["b_1"])
        a_2 = jax.nn.silu(params["W_2"] @ a_1 + params["b_2"])
        return params["W_out"] @ a_2 + params["b_out"]

    return stepwise_cell(
        "block_gru_mlp",
        n_in,
        n_hidden,
        n_out,
        init=init,
        initial_carry=lambda dtype=jnp.float32: jnp.zeros((n_hidden,), dtype),
        transition=transition,
        output=output,
        hidden=lambda h: h,
        output_params=HEAD_PARAMS,
        bypass="MLP output",
    )
