"""The RWKV-4 time-mixing cell: full RTRL exact against jax.grad, a hand-computed two-step toy,
bad input, and the running-max WKV state against the naive recursion."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import cells
from rtrl.cells.rwkv import P_0, rwkv
from tests.rtrl.test_cells import _max_rel, _problem

F64 = jnp.float64
EXACT_RTOL = 1e-10  # an exact algorithm against jax.grad in float64
SAME_RTOL = 1e-12  # two implementations of the same arithmetic
SIZES = [(1, 3, 1), (3, 6, 2)]  # (n_in, n_hidden, n_out)


@pytest.mark.parametrize("n_in,n_hidden,n_out", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_full_rtrl_equals_jax_grad(n_in, n_hidden, n_out, seed):
    cell = rwkv(n_in, n_hidden, n_out)
    params, xs, ys = _problem(cell, seed)
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    algo = rtrl.forward.jacobian_rtrl(cell)
    got = jax.jit(lambda p: rtrl.sequence_grads(algo, p, xs, ys, None))(params)
    assert set(got) == set(want)
    assert _max_rel(got, want) <= EXACT_RTOL


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_two_steps_by_hand():
    cell = rwkv(1, 1, 1)
    p = {
        "W_k": jnp.asarray([[0.5]], F64),
        "W_v": jnp.asarray([[0.9]], F64),
        "W_r": jnp.asarray([[0.8]], F64),
        "W_o": jnp.asarray([[1.2]], F64),
        "mu_k": jnp.asarray([0.6], F64),
        "mu_v": jnp.asarray([0.3], F64),
        "mu_r": jnp.asarray([0.9], F64),
        "w_raw": jnp.asarray([-0.5], F64),
        "u": jnp.asarray([0.2], F64),
        "W_out": jnp.asarray([[1.5]], F64),
        "b_out": jnp.asarray([-0.1], F64),
    }
    # Step 1, x = 1, x_0 = 0: x' = μ x, k = 0.5·0.6 = 0.3, v = 0.9·0.3 = 0.27, r = 0.8·0.9 = 0.72.
    # The state is empty, wkv = e^{u+k} v / e^{u+k} = v: h_1 = 1.2 σ(0.72) 0.27 = 0.21792,
    # y_1 = 0.22689; a_1 = e^{0.3} 0.27 = 0.36446, b_1 = e^{0.3} = 1.34986.
    # Step 2, x = −2: x'^k = 0.6·(−2) + 0.4·1 = −0.8, k = −0.4; x'^v = 0.1, v = 0.09;
    # x'^r = −1.7, r = −1.36. wkv = (0.36446 + e^{−0.2} 0.09) / (1.34986 + e^{−0.2}) = 0.20204,
    # h_2 = 1.2 σ(−1.36) 0.20204 = 0.04952, y_2 = −0.02572; e^{−w} = e^{−e^{−0.5}} = 0.54524,
    # a_2 = 0.54524·0.36446 + e^{−0.4} 0.09 = 0.25905, b_2 = 0.54524·1.34986 + e^{−0.4} = 1.40632.
    a = b = x_prev = 0.0
    ys = []
    for x in (1.0, -2.0):
        k = 0.5 * (0.6 * x + 0.4 * x_prev)
        v = 0.9 * (0.3 * x + 0.7 * x_prev)
        r = 0.8 * (0.9 * x + 0.1 * x_prev)
        bonus = math.exp(0.2 + k)
        h = 1.2 * _sigmoid(r) * (a + bonus * v) / (b + bonus)
        decay = math.exp(-math.exp(-0.5))
        a, b, x_prev = decay * a + math.exp(k) * v, decay * b + math.exp(k), x
        ys.append(1.5 * h - 0.1)
    np.testing.assert_allclose(ys, [0.22688701029493, -0.02572253567357], rtol=1e-12)
    carry = cell.initial_carry(F64)
    for x, y in zip((1.0, -2.0), ys, strict=True):
        carry, pred = cell.step(p, carry, jnp.asarray([x], F64))
        np.testing.assert_allclose(float(pred[0]), y, rtol=SAME_RTOL)
    h_2, a_2, b_2, p_2, x_2 = (float(leaf[0]) for leaf in carry)
    # p_1 = k_1 = 0.3, p_2 = max(p_1 − w, k_2) = max(0.3 − e^{−0.5}, −0.4) = −0.30653 (the decay
    # branch of the running max; step 1 took the key branch).
    assert x_2 == -2.0
    assert p_2 == pytest.approx(0.3 - math.exp(-0.5), rel=SAME_RTOL)
    np.testing.assert_allclose(
        [h_2, a_2 * math.exp(p_2), b_2 * math.exp(p_2)], [h, a, b], SAME_RTOL
    )


def test_bad_input_is_refused_and_the_cell_is_stepwise_only():
    cell = rwkv(1, 4, 1)
    params = cell.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"x_t has shape \(2,\), the cell expects \(1,\)"):
        cell.step(params, cell.initial_carry(), jnp.zeros((2,)))
    algo = rtrl.forward.jacobian_rtrl(cell)
    with pytest.raises(ValueError, match=r"x_t has shape \(1, 1\)"):
        algo.step(params, algo.init(None, params), jnp.zeros((1, 1)), jnp.zeros((1,)))
    assert cell.capabilities == {cells.STEPWISE} and cell.n_rows == 0
    assert (cell.output_params, cell.bypass) == (("W_out", "b_out"), "")
    with pytest.raises(ValueError, match="capability 'factorised'"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2)


def _naive(params, xs):
    """The unstabilised recursion in NumPy, in xs' dtype: y_t [T, n_out] and (a_t, b_t) [T, n]."""
    P = {name: np.asarray(value, xs.dtype) for name, value in params.items()}
    a = b = np.zeros_like(P["u"])
    x_prev = np.zeros_like(xs[0])
    ys, states = [], []
    with np.errstate(over="ignore", invalid="ignore"):
        for x in xs:
            k, v, r = (
                P[W] @ (P[mu] * x + (1 - P[mu]) * x_prev)
                for W, mu in (("W_k", "mu_k"), ("W_v", "mu_v"), ("W_r", "mu_r"))
            )
            bonus = np.exp(P["u"] + k)
            h = P["W_o"] @ ((a + bonus * v) / (b + bonus) / (1 + np.exp(-r)))
            decay = np.exp(-np.exp(P["w_raw"]))
            a, b, x_prev = decay * a + np.exp(k) * v, decay * b + np.exp(k), x
            ys.append(P["W_out"] @ h + P["b_out"])
            states.append((a, b))
    return np.stack(ys), np.asarray(states)


def _stabilised(cell, params, xs):
    """y_t [T, n_out] and the unscaled (a_t e^{p_t}, b_t e^{p_t}) [T, 2, n] from cell.step."""

    def body(carry, x):
        carry, y = cell.step(params, carry, x)
        _, a, b, p, _ = carry
        return carry, (y, jnp.stack([a, b]) * jnp.exp(p))

    ys, states = jax.lax.scan(body, cell.initial_carry(xs.dtype), xs)[1]
    return np.asarray(ys), np.asarray(states)


def test_the_running_max_equals_the_naive_recursion():
    cell = rwkv(3, 4, 2)
    params, xs, _ = _problem(cell, 5, length=12)
    ys, states = _stabilised(cell, params, xs)
    want_ys, want_states = _naive(params, np.asarray(xs))
    assert np.max(np.abs(ys - want_ys)) <= SAME_RTOL * np.max(np.abs(want_ys))
    for got, want in zip(states.transpose(1, 0, 2), want_states.transpose(1, 0, 2), strict=True):
        assert np.max(np.abs(got - want)) <= SAME_RTOL * np.max(np.abs(want))


def test_keys_near_100_stay_finite_in_float32():
    """k_t ≈ 100: e^{k} overflows float32 (past e^{88.7}), so the naive recursion gives inf/inf,
    while the running max keeps the cell finite, equal to the naive float64 recursion (finite
    there) to float32 accuracy, with a finite gradient."""
    n_in, T = 2, 8
    cell = rwkv(n_in, 4, 1)
    key = jax.random.key(0)
    params = cell.init(key)
    noise = jax.random.normal(jax.random.fold_in(key, 1), params["W_k"].shape, jnp.float32)
    params = {**params, "W_k": 100.0 / n_in + noise}
    xs = 1.0 + 0.05 * jax.random.normal(jax.random.fold_in(key, 2), (T, n_in), jnp.float32)
    k_2 = params["W_k"] @ (params["mu_k"] * xs[1] + (1.0 - params["mu_k"]) * xs[0])
    assert float(jnp.min(k_2)) > 80.0 and float(jnp.max(k_2)) < 120.0
    assert not np.all(np.isfinite(_naive(params, np.asarray(xs))[0]))
    ys, _ = _stabilised(cell, params, xs)
    assert np.all(np.isfinite(ys))
    want, _ = _naive(params, np.asarray(xs, np.float64))
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(ys, want, atol=1e-5 * np.max(np.abs(want)))
    targets = jnp.zeros((T, 1), jnp.float32)
    grads = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, targets))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_the_initial_running_max_contributes_exactly_nothing(dtype):
    """p_0 = −1e38: after step 1, p_1 = k_1, b_1 = 1 and a_1 = v_1 exactly (e^{p_0 − q} is 0, no
    inf − inf), and the one-step Jacobians with respect to parameters and carry are finite."""
    cell = rwkv(2, 3, 1)
    params = cell.init(jax.random.key(0), dtype)
    x = jnp.asarray([0.7, -1.3], dtype)
    carry = cell.initial_carry(dtype)
    np.testing.assert_array_equal(carry[3], np.full(3, P_0, dtype))
    h, a, b, p, x_prev = cell.transition(params, carry, x)
    k = params["W_k"] @ (params["mu_k"] * x)
    v = params["W_v"] @ (params["mu_v"] * x)
    np.testing.assert_array_equal(b, np.ones(3))
    np.testing.assert_allclose(p, k, rtol=1e-6)
    np.testing.assert_allclose(a, v, rtol=1e-6)
    jacobians = jax.jacrev(cell.transition, argnums=(0, 1))(params, carry, x)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(jacobians))
