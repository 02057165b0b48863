"""The RetNet retention cell: full RTRL and tbptt(w = T) exact against jax.grad (float64), a
hand-computed two-step toy, the parallel form equal to the recurrent one, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl.cells.retnet import retention_parallel, retnet
from tests.rtrl.test_cells import EXACT_RTOL, F64, SAME_RTOL, T, _max_rel, _problem


# n_in >= 2: with one input, o_t^h is a scalar multiple of W_v^h, which GroupNorm divides out, so
# W_q and W_k get gradients only through its eps (~1e-5) and a relative test of them is weak.
@pytest.mark.parametrize("n_in,n_hidden,n_out,heads", [(2, 3, 1, 1), (3, 8, 2, 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_full_rtrl_and_tbptt_equal_jax_grad(n_in, n_hidden, n_out, heads, seed):
    cell = retnet(n_in, n_hidden, n_out, heads=heads)
    params, xs, ys = _problem(cell, seed)
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    for algo in (rtrl.forward.jacobian_rtrl(cell), rtrl.algorithms.get("tbptt", cell, w=T)):
        got = jax.jit(lambda p, a=algo: rtrl.sequence_grads(a, p, xs, ys, None))(params)
        assert set(got) == set(want)
        assert _max_rel(got, want) <= EXACT_RTOL, algo.name


def _swish(v):
    return v / (1.0 + math.exp(-v))


def _column(w):
    return jnp.asarray([[a] for a in w], F64)


def test_two_steps_by_hand():
    """heads = 1, d = 3 (for d = 2 GroupNorm gives ±1 up to eps), n_in = n_out = 1."""
    cell = retnet(1, 3, 1, heads=1)
    w_q, w_k, w_v, w_g = (0.5, -0.4, 0.9), (0.3, 0.8, -0.2), (-0.6, 0.2, 0.4), (0.7, -0.5, 0.1)
    w_o = ((0.9, -0.2, 0.3), (0.4, 1.1, -0.6), (-0.5, 0.2, 0.8))
    w_out, b_out = (1.3, -0.7, 0.4), 0.05
    p = {
        "W_q": _column(w_q),
        "W_k": _column(w_k),
        "W_v": _column(w_v),
        "W_G": _column(w_g),
        "W_O": jnp.asarray(w_o, F64),
        "W_out": jnp.asarray([w_out], F64),
        "b_out": jnp.asarray([b_out], F64),
    }
    gamma = 1.0 - 2.0**-5  # γ_0 = 31/32
    S = [[0.0] * 3 for _ in range(3)]
    carry = cell.initial_carry(F64)
    for x in (1.0, -2.0):
        q = [w * x for w in w_q]
        k = [w * x / math.sqrt(3.0) for w in w_k]  # keys scaled by 1/√d
        v = [w * x for w in w_v]
        S = [[gamma * S[i][j] + k[i] * v[j] for j in range(3)] for i in range(3)]
        o = [sum(q[i] * S[i][j] for i in range(3)) for j in range(3)]  # o = q S
        mean = sum(o) / 3
        var = sum((oj - mean) ** 2 for oj in o) / 3
        normed = [(oj - mean) / math.sqrt(var + 1e-6) for oj in o]
        gated = [_swish(w_g[j] * x) * normed[j] for j in range(3)]
        h = [sum(w_o[i][j] * gated[j] for j in range(3)) for i in range(3)]
        y = sum(w_out[i] * h[i] for i in range(3)) + b_out
        carry, pred = cell.step(p, carry, jnp.asarray([x], F64))
        np.testing.assert_allclose(float(pred[0]), y, rtol=SAME_RTOL)
        np.testing.assert_allclose(np.asarray(carry.S[0]), np.asarray(S), rtol=SAME_RTOL)
        np.testing.assert_allclose(np.asarray(cell.hidden(carry)), h, rtol=SAME_RTOL)


@pytest.mark.parametrize("heads,d", [(1, 3), (2, 4), (4, 3)])
def test_parallel_form_equals_recurrent_form(heads, d):
    cell = retnet(2, heads * d, 3, heads=heads)
    params, xs, _ = _problem(cell, heads, length=24)

    def body(carry, x):
        return cell.step(params, carry, x)

    _, recurrent = jax.lax.scan(body, cell.initial_carry(F64), xs)
    parallel = retention_parallel(params, xs, heads)
    assert parallel.shape == (24, 3)
    rel = float(jnp.max(jnp.abs(parallel - recurrent)) / jnp.max(jnp.abs(recurrent)))
    assert rel <= SAME_RTOL, rel


def test_float32_carry_stays_float32():
    cell = retnet(2, 12, 1)  # the default heads = 4, d = 3
    params = cell.init(jax.random.key(0))
    carry, y = cell.step(params, cell.initial_carry(), jnp.ones((2,), jnp.float32))
    assert carry.S.shape == (4, 3, 3) and carry.h.shape == (12,)
    assert {a.dtype for a in (*carry, y)} == {jnp.dtype(jnp.float32)}
    assert cell.output_params == ("W_out", "b_out") and cell.bypass == ""


def test_bad_input_is_refused_clearly():
    cell = retnet(1, 6, 1, heads=2)
    params = cell.init(jax.random.key(0), F64)
    with pytest.raises(ValueError, match=r"x_t has shape \(2,\)"):
        cell.step(params, cell.initial_carry(F64), jnp.zeros((2,), F64))
    with pytest.raises(ValueError, match="not divisible by heads = 4"):
        retnet(1, 6, 1, heads=4)
    with pytest.raises(ValueError, match="head size d"):
        retnet(1, 4, 1, heads=4)  # d = 1
    with pytest.raises(ValueError, match="heads >= 1"):
        retnet(1, 6, 1, heads=0)
    with pytest.raises(ValueError, match=r"expects \(T, 1\)"):
        retention_parallel(params, jnp.zeros((5, 2), F64), 2)
    with pytest.raises(ValueError, match="not divisible"):
        retention_parallel(params, jnp.zeros((5, 1), F64), 4)
