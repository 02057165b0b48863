"""The S4D cell: full RTRL and tbptt(w = T) exact against jax.grad (float64) and central
differences, a hand-computed two-step toy, the recurrence equal to the convolution kernel, bad
input."""

import cmath
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl.cells.s4 import s4
from tests.rtrl.test_cells import EXACT_RTOL, F64, SAME_RTOL, T, _max_rel, _problem


def _run(cell, params, xs):
    def body(carry, x):
        carry, y = cell.step(params, carry, x)
        return carry, (carry.z, y)

    return jax.lax.scan(body, cell.initial_carry(F64), xs)[1]


@pytest.mark.parametrize("n_in,n_hidden,n_out,state_size", [(1, 2, 1, 2), (3, 4, 2, 3)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dt_scale", [1.0, 20.0])  # 20: Δ ~ 0.02..2, so A and B matter within T
def test_full_rtrl_and_tbptt_equal_jax_grad(n_in, n_hidden, n_out, state_size, seed, dt_scale):
    cell = s4(n_in, n_hidden, n_out, state_size=state_size)
    params, xs, ys = _problem(cell, seed)
    params["log_dt"] = params["log_dt"] + math.log(dt_scale)
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    for algo in (rtrl.forward.jacobian_rtrl(cell), rtrl.algorithms.get("tbptt", cell, w=T)):
        got = jax.jit(lambda p, a=algo: rtrl.sequence_grads(a, p, xs, ys, None))(params)
        assert set(got) == set(want)
        assert _max_rel(got, want) <= EXACT_RTOL, algo.name


def test_gradient_through_the_complex_arithmetic_matches_central_differences():
    """jax.grad through jnp's complex ops against central differences (h = 1e-6), T = 6."""
    cell = s4(2, 2, 1, state_size=2)
    params, xs, ys = _problem(cell, 3, length=6)
    params["log_dt"] = params["log_dt"] + math.log(20.0)  # Δ ~ 0.02..2, so A and B matter
    got = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    loss = jax.jit(lambda p: rtrl.sequence_loss(cell, p, xs, ys))
    h = 1e-6
    for leaf, value in params.items():
        for flat in (0, value.size - 1):
            index = np.unravel_index(flat, value.shape)
            up = {**params, leaf: value.at[index].add(h)}
            down = {**params, leaf: value.at[index].add(-h)}
            fd = (float(loss(up)) - float(loss(down))) / (2 * h)
            assert abs(float(got[leaf][index]) - fd) <= 1e-6 * max(1.0, abs(fd)), (leaf, index)


def test_two_steps_by_hand():
    """H = N = 1, n_in = n_out = 1, with A_im ≠ 0 and B_im ≠ 0 so the state is complex."""
    cell = s4(1, 1, 1, state_size=1)
    p = {
        "W_in": jnp.asarray([[0.8]], F64),
        "b_in": jnp.asarray([0.1], F64),
        "log_dt": jnp.asarray([math.log(0.5)], F64),
        "A_log_re": jnp.asarray([[math.log(0.5)]], F64),
        "A_im": jnp.asarray([[0.7]], F64),
        "B_re": jnp.asarray([[1.0]], F64),
        "B_im": jnp.asarray([[0.3]], F64),
        "C_re": jnp.asarray([[0.6]], F64),
        "C_im": jnp.asarray([[-0.4]], F64),
        "D": jnp.asarray([0.25], F64),
        "W_out": jnp.asarray([[1.5]], F64),
        "b_out": jnp.asarray([-0.2], F64),
    }
    A = -0.5 + 0.7j  # −exp(log 0.5) + i 0.7
    A_bar = cmath.exp(0.5 * A)  # Δ = 0.5
    B_bar = (A_bar - 1) / A * (1.0 + 0.3j)
    state = 0j
    carry = cell.initial_carry(F64)
    for x in (1.0, -2.0):
        u = 0.8 * x + 0.1
        state = A_bar * state + B_bar * u
        z = ((0.6 - 0.4j) * state).real + 0.25 * u
        carry, pred = cell.step(p, carry, jnp.asarray([x], F64))
        np.testing.assert_allclose(float(pred[0]), 1.5 * z - 0.2, rtol=SAME_RTOL)
        np.testing.assert_allclose(float(carry.z[0]), z, rtol=SAME_RTOL)
        np.testing.assert_allclose(float(carry.x_re[0, 0]), state.real, rtol=SAME_RTOL)
        np.testing.assert_allclose(float(carry.x_im[0, 0]), state.imag, rtol=SAME_RTOL)


@pytest.mark.parametrize("seed,dt_scale", [(0, 1.0), (1, 20.0)])
def test_recurrence_equals_the_convolution_kernel(seed, dt_scale):
    """z_t − D u_t = Σ_{j=0}^{t} K_j u_{t−j}, K_j = Re(Σ_n C_n Ā_n^j B̄_n), Ā and B̄ in numpy."""
    cell = s4(2, 3, 1, state_size=4)
    params, xs, _ = _problem(cell, seed, length=30)
    params["log_dt"] = params["log_dt"] + math.log(dt_scale)
    p = {k: np.asarray(v) for k, v in params.items()}
    A = -np.exp(p["A_log_re"]) + 1j * p["A_im"]
    A_bar = np.exp(np.exp(p["log_dt"])[:, None] * A)
    B_bar = (A_bar - 1) / A * (p["B_re"] + 1j * p["B_im"])
    C = p["C_re"] + 1j * p["C_im"]
    lags = np.arange(30)
    K = np.real(np.einsum("hn,jhn->jh", C * B_bar, A_bar[None] ** lags[:, None, None]))  # [T, H]
    u = np.asarray(xs) @ p["W_in"].T + p["b_in"]  # [T, H]
    conv = np.stack([np.sum(K[: t + 1][::-1] * u[: t + 1], axis=0) for t in range(30)])
    z, _ = _run(cell, params, xs)
    got = np.asarray(z) - p["D"] * u
    rel = np.max(np.abs(got - conv)) / np.max(np.abs(conv))
    assert rel <= SAME_RTOL, rel


def test_init_follows_s4d_lin_and_float32_stays_float32():
    cell = s4(2, 5, 1, state_size=3)
    params = cell.init(jax.random.key(0))
    np.testing.assert_allclose(params["A_log_re"], math.log(0.5), rtol=1e-6)
    np.testing.assert_allclose(params["A_im"], np.tile(math.pi * np.arange(3), (5, 1)), rtol=1e-6)
    dt = np.exp(np.asarray(params["log_dt"]))
    assert np.all((dt >= 0.001 * (1 - 1e-6)) & (dt <= 0.1 * (1 + 1e-6)))
    carry, y = cell.step(params, cell.initial_carry(), jnp.ones((2,), jnp.float32))
    assert carry.z.shape == (5,) and carry.x_re.shape == (5, 3)
    assert {a.dtype for a in (*carry, y)} == {jnp.dtype(jnp.float32)}
    assert cell.output_params == ("C_re", "C_im", "D", "W_out", "b_out")
    assert cell.bypass == "D / output"


def test_bad_input_is_refused_clearly():
    cell = s4(1, 2, 1, state_size=2)
    params = cell.init(jax.random.key(0), F64)
    with pytest.raises(ValueError, match=r"x_t has shape \(3,\)"):
        cell.step(params, cell.initial_carry(F64), jnp.zeros((3,), F64))
    with pytest.raises(ValueError, match="state_size >= 1"):
        s4(1, 2, 1, state_size=0)
