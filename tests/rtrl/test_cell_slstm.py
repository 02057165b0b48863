"""The sLSTM cell: full RTRL (generic, factorised, sparse with every path) exact against jax.grad,
a hand-computed two-step toy, bad input, and the stabiliser m against the naive exponential
gates."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl.cells.slstm import M_0, slstm
from tests.rtrl.test_cells import _max_rel, _problem

F64 = jnp.float64
EXACT_RTOL = 1e-10  # an exact algorithm against jax.grad in float64
SAME_RTOL = 1e-12  # two implementations of the same arithmetic
SIZES = [(1, 3, 1), (3, 6, 2)]  # (n_in, n_hidden, n_out)


@pytest.mark.parametrize("n_in,n_hidden,n_out", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_full_rtrl_equals_jax_grad(n_in, n_hidden, n_out, seed):
    cell = slstm(n_in, n_hidden, n_out)
    params, xs, ys = _problem(cell, seed)
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    algos = (
        rtrl.forward.jacobian_rtrl(cell),
        rtrl.forward.rtrl(cell),
        rtrl.algorithms.get("sparse_rtrl", cell, k=n_hidden, mask="ring_self"),
    )
    for algo in algos:
        got = jax.jit(lambda p, a=algo: rtrl.sequence_grads(a, p, xs, ys, None))(params)
        assert set(got) == set(want)
        assert _max_rel(got, want) <= EXACT_RTOL, algo.name


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_two_steps_by_hand():
    cell = slstm(1, 1, 1)
    p = {
        "W_in": jnp.asarray([[0.5], [-0.3], [0.8], [0.2]], F64),  # i, f, z, o
        "W_rec": jnp.asarray([[0.2], [0.4], [-0.6], [0.7]], F64),
        "b": jnp.asarray([0.1, 0.3, -0.05, 0.2], F64),
        "W_out": jnp.asarray([[1.5]], F64),
        "b_out": jnp.asarray([-0.1], F64),
    }
    # Step 1, x = 1, h_0 = 0: z = (0.6, 0, 0.75, 0.4). m_0 = −1e30, so m_1 = max(0 − 1e30, 0.6)
    # = 0.6, i' = e^0 = 1, f' = e^{−1e30} = 0: c_1 = tanh 0.75 = 0.6351, n_1 = 1,
    # h_1 = σ(0.4) · 0.6351 = 0.5987 · 0.6351 = 0.3802.
    # Step 2, x = −2: z_i = −1 + 0.2 h_1 + 0.1 = −0.8240, z_f = 0.6 + 0.4 h_1 + 0.3 = 1.0521,
    # so z_f + m_1 = 1.6521 > z_i: m_2 = 1.6521, f' = 1, i' = e^{−0.8240 − 1.6521} = 0.0841,
    # c_2 = c_1 + i' tanh(z_z), n_2 = 1 + i' = 1.0841 (the forget branch of the max).
    h, c, n, m, ys = 0.0, 0.0, 0.0, M_0, []
    for x in (1.0, -2.0):
        z_i = 0.5 * x + 0.2 * h + 0.1
        z_f = -0.3 * x + 0.4 * h + 0.3
        z_z = 0.8 * x - 0.6 * h - 0.05
        z_o = 0.2 * x + 0.7 * h + 0.2
        m_new = max(z_f + m, z_i)
        i, f = math.exp(z_i - m_new), math.exp(z_f + m - m_new)
        c, n, m = f * c + i * math.tanh(z_z), f * n + i, m_new
        h = _sigmoid(z_o) * c / n
        ys.append(1.5 * h - 0.1)
    assert m == pytest.approx(1.6521, abs=1e-4) and n == pytest.approx(1.0841, abs=1e-4)
    carry = cell.initial_carry(F64)
    for x, y in zip((1.0, -2.0), ys, strict=True):
        carry, pred = cell.step(p, carry, jnp.asarray([x], F64))
        np.testing.assert_allclose(float(pred[0]), y, rtol=SAME_RTOL)
    np.testing.assert_allclose([float(leaf[0]) for leaf in carry], [h, c, n, m], rtol=SAME_RTOL)


def test_bad_input_is_refused():
    cell = slstm(1, 4, 1)
    params = cell.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"x_t has shape \(2,\), the cell expects \(1,\)"):
        cell.step(params, cell.initial_carry(), jnp.zeros((2,)))
    algo = rtrl.forward.rtrl(cell)
    with pytest.raises(ValueError, match=r"x_t has shape \(1, 1\)"):
        algo.step(params, algo.init(None, params), jnp.zeros((1, 1)), jnp.zeros((1,)))


def _naive(zs):
    """h_t from the unstabilised gates exp(z_i), exp(z_f) (zs [T, 4n]), in zs' dtype."""
    c = n = np.zeros(zs.shape[1] // 4, zs.dtype)
    hs = []
    with np.errstate(over="ignore", invalid="ignore"):
        for z in zs:
            z_i, z_f, z_z, z_o = np.split(z, 4)
            c = np.exp(z_f) * c + np.exp(z_i) * np.tanh(z_z)
            n = np.exp(z_f) * n + np.exp(z_i)
            hs.append(c / n / (1 + np.exp(-z_o)))
    return np.stack(hs)


def _stabilised(cell, zs):
    """h_t from cell.core driven by the preactivations zs [T, 4n], from the zero carry."""
    zs = jnp.asarray(zs)

    def body(carry, z):
        carry = cell.core(z, carry)
        return carry, carry[0]

    return np.asarray(jax.lax.scan(body, cell.initial_carry(zs.dtype), zs)[1])


def test_the_stabiliser_keeps_large_preactivations_finite_and_h_unchanged():
    """Gate preactivations up to ±100 over 6 steps: the naive exp(z) overflows float32 (e^89 is
    past its range) while the stabilised state stays finite with |h| ≤ 1; in float64, where the
    naive state is finite (log-weights ≤ 600 < 709), both give the same h (h does not depend on
    m), and the stabilised float32 h agrees with them to float32 accuracy."""
    cell = slstm(1, 4, 1)
    rng = np.random.default_rng(0)
    zs = np.concatenate(
        [rng.uniform(-100, 100, (6, 8)), rng.normal(0, 2, (6, 8))], axis=1
    )  # (i, f) then (z, o)
    zs[0, :4] = 95.0  # every z_i at step 1 past float32's exp range
    naive32 = _naive(zs.astype(np.float32))
    assert not np.all(np.isfinite(naive32))
    h32 = _stabilised(cell, zs.astype(np.float32))
    assert np.all(np.isfinite(h32)) and np.max(np.abs(h32)) <= 1.0
    naive64, h64 = _naive(zs), _stabilised(cell, zs)
    assert np.all(np.isfinite(naive64))
    assert np.max(np.abs(h64 - naive64)) <= SAME_RTOL * np.max(np.abs(naive64))
    np.testing.assert_allclose(h32, h64, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_the_initial_stabiliser_makes_step_one_exact(dtype):
    """m_0 = −1e30 gives m_1 = z_i, n_1 = 1 and h_1 = σ(z_o) tanh(z_z) with finite derivatives
    even for z_f − z_i = 200, where m_0 = 0 underflows n_1 = e^{z_i − z_f} to 0 in float32."""
    cell = slstm(1, 1, 1)
    z = jnp.asarray([-100.0, 100.0, 0.7, -0.3], dtype)  # i, f, z, o
    carry = cell.initial_carry(dtype)
    h, c, n, m = cell.core(z, carry)
    assert (float(n[0]), float(m[0])) == (1.0, -100.0)
    np.testing.assert_allclose(float(h[0]), _sigmoid(-0.3) * math.tanh(0.7), rtol=1e-6)
    grads = jax.jacrev(lambda z, s: cell.core(z, s)[0], argnums=(0, 1))(z, carry)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    if dtype == jnp.float32:
        at_zero = (*carry[:3], jnp.zeros((1,), dtype))
        assert float(cell.core(z, at_zero)[2][0]) == 0.0  # n_1 underflows: h_1 = 0/0


def test_large_preactivations_train_in_float32():
    """The loss and its gradient stay finite in float32 with W_in scaled by 100 and W_rec by 30
    (gate preactivations up to |z| ≈ 500 here, m_t up to ≈ 230)."""
    cell = slstm(2, 4, 1)
    params = cell.init(jax.random.key(0))
    params = {**params, "W_in": 100.0 * params["W_in"], "W_rec": 30.0 * params["W_rec"]}
    xs = jax.random.normal(jax.random.key(1), (8, 2), jnp.float32)
    ys = jnp.ones((8, 1), jnp.float32)
    loss, grads = jax.value_and_grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())
