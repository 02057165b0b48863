"""The block GRU + MLP head cell: exact under full RTRL and tbptt(w = T) against jax.grad
(float64), a block-diagonal state Jacobian, a hand-computed two-step toy, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl.cells.block_gru_mlp import block_gru_mlp
from tests.rtrl.test_cells import _problem

F64 = jnp.float64
EXACT_RTOL = 1e-10  # an exact algorithm against jax.grad in float64
T = 8
SIZES = [(2, 4, 1, 2, 3), (1, 6, 2, 3, None)]  # (n_in, n_hidden, n_out, blocks, mlp_width)


def _rel_errors(got, want):
    return {k: float(jnp.max(jnp.abs(got[k] - want[k])) / jnp.max(jnp.abs(want[k]))) for k in want}


@pytest.mark.parametrize("n_in,n_hidden,n_out,blocks,mlp_width", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_full_rtrl_and_tbptt_equal_jax_grad(n_in, n_hidden, n_out, blocks, mlp_width, seed):
    cell = block_gru_mlp(n_in, n_hidden, n_out, blocks=blocks, mlp_width=mlp_width)
    params, xs, ys = _problem(cell, seed, length=T)
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    for algo in (rtrl.forward.jacobian_rtrl(cell), rtrl.algorithms.get("tbptt", cell, w=T)):
        got = jax.jit(lambda p, a=algo: rtrl.sequence_grads(a, p, xs, ys, None))(params)
        assert set(got) == set(want)
        errors = _rel_errors(got, want)
        assert max(errors.values()) <= EXACT_RTOL, (algo.name, errors)


def test_declares_the_head_as_output_params():
    cell = block_gru_mlp(2, 4, 1, blocks=2)
    params = cell.init(jax.random.key(0), F64)
    assert set(cell.output_params) == {"W_1", "b_1", "W_2", "b_2", "W_out", "b_out"}
    assert set(cell.output_params) < set(params)
    assert cell.bypass == "MLP output"
    assert params["W_rec"].shape == (2, 6, 2) and params["W_1"].shape == (4, 4)


@pytest.mark.parametrize("blocks,n_hidden", [(2, 4), (3, 6), (4, 4)])
def test_state_jacobian_is_block_diagonal(blocks, n_hidden):
    cell = block_gru_mlp(2, n_hidden, 1, blocks=blocks)
    params, xs, _ = _problem(cell, 5, length=T)
    h = jax.random.normal(jax.random.key(6), (n_hidden,), F64)
    J = np.asarray(jax.jacfwd(cell.transition, argnums=1)(params, h, xs[0]))  # [n, n]
    b = n_hidden // blocks
    same_block = np.kron(np.eye(blocks), np.ones((b, b))).astype(bool)
    assert np.all(J[~same_block] == 0.0)
    for j in range(blocks):
        assert np.abs(J[j * b : (j + 1) * b, j * b : (j + 1) * b]).max() > 1e-3


def _silu(v):
    return v / (1.0 + np.exp(-v))


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_two_steps_by_hand():
    """blocks = 1, b = 1: the LayerNorm is over the three gate preactivations (r, c, u) of the
    one block, which is the smallest size where it is not degenerate (3 values, 1 of freedom
    left after centring and scaling). n_in = 2, mlp_width = 2, n_out = 1."""
    cell = block_gru_mlp(2, 1, 1, blocks=1, mlp_width=2)
    W_in = np.array([[0.5, -0.2], [0.8, 0.3], [-0.4, 0.6]])  # rows r, c, u
    W_rec = np.array([0.2, -0.6, 0.4])
    gamma = np.array([1.2, 0.9, 1.1])
    bias = np.array([0.1, 0.05, -0.2])
    W_1, b_1 = np.array([[1.5], [-0.7]]), np.array([0.1, -0.3])
    W_2, b_2 = np.array([[0.4, -1.1], [0.9, 0.2]]), np.array([0.05, 0.0])
    W_out, b_out = np.array([[1.3, -0.5]]), np.array([-0.1])
    p = {
        "W_in": jnp.asarray(W_in[None], F64),
        "W_rec": jnp.asarray(W_rec[None, :, None], F64),
        "norm_scale": jnp.asarray(gamma[None], F64),
        "b": jnp.asarray(bias[None], F64),
        "W_1": jnp.asarray(W_1, F64),
        "b_1": jnp.asarray(b_1, F64),
        "W_2": jnp.asarray(W_2, F64),
        "b_2": jnp.asarray(b_2, F64),
        "W_out": jnp.asarray(W_out, F64),
        "b_out": jnp.asarray(b_out, F64),
    }
    xs = [np.array([1.0, 0.5]), np.array([-2.0, 0.3])]
    # Step 1 from h_0 = 0: a = W_in x = (0.4, 0.95, -0.1), mean 0.41667, var 0.18389,
    # LN(a) = (-0.0388, 1.2403, -1.2016), z = γ LN(a) + b = (0.0535, 1.1663, -1.5217),
    # r = 0.5134, c = tanh(0.5987) = 0.5362, u = σ(-2.5217) = 0.0743, h_1 = u c = 0.0399;
    # head: a_1 = (0.0863, -0.1373), a_2 = (0.1316, 0.0257), y_1 = 0.0582.
    h, ys = 0.0, []
    for x in xs:
        a = W_in @ x + W_rec * h
        normed = (a - a.mean()) / np.sqrt(((a - a.mean()) ** 2).mean() + 1e-3)
        z_r, z_c, z_u = gamma * normed + bias
        r = _sigmoid(z_r)
        c = np.tanh(r * z_c)
        u = _sigmoid(z_u - 1.0)
        h = u * c + (1.0 - u) * h
        a_1 = _silu(W_1[:, 0] * h + b_1)
        a_2 = _silu(W_2 @ a_1 + b_2)
        ys.append(W_out @ a_2 + b_out)
    np.testing.assert_allclose(ys[0], [0.0582], atol=1e-4)  # the comment's arithmetic
    carry = cell.initial_carry(F64)
    for x, y in zip(xs, ys, strict=True):
        carry, pred = cell.step(p, carry, jnp.asarray(x, F64))
        np.testing.assert_allclose(np.asarray(pred), y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(carry[0]), h, rtol=1e-12)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match=r"n_hidden = 6 is not divisible by blocks = 4"):
        block_gru_mlp(1, 6, 1, blocks=4)
    with pytest.raises(ValueError, match="blocks must be a positive integer"):
        block_gru_mlp(1, 6, 1, blocks=0)
    with pytest.raises(ValueError, match="mlp_width must be a positive integer"):
        block_gru_mlp(1, 6, 1, blocks=2, mlp_width=0)
    cell = block_gru_mlp(2, 4, 1, blocks=2)
    with pytest.raises(ValueError, match=r"x_t has shape \(3,\)"):
        cell.step(cell.init(jax.random.key(0)), cell.initial_carry(), jnp.zeros((3,)))
