"""The cell zoo: every cell exact under full RTRL (float64, against jax.grad and finite
differences), hand-computed two-step toys, the immediate derivative O(params), bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import cells

F64 = jnp.float64
EXACT_RTOL = 1e-10  # an exact algorithm against jax.grad in float64 (observed ~1e-15)
SAME_RTOL = 1e-12  # two implementations of the same arithmetic
SIZES = [(2, 3, 1), (3, 6, 2)]  # (n_in, n_hidden, n_out); RetNet's q, k need n_in >= 2 to
# carry gradients above rounding (with one input its GroupNorm leaves them ~1e-5)
T = 10


def _problem(cell, seed, length=T):
    """cell.init params plus a perturbation (non-zero biases), inputs and targets, float64."""
    key = jax.random.key(seed)
    params = cell.init(jax.random.fold_in(key, 0), F64)
    leaves, treedef = jax.tree.flatten(params)
    noise = [
        0.3 * jax.random.normal(jax.random.fold_in(key, 10 + i), leaf.shape, F64)
        for i, leaf in enumerate(leaves)
    ]
    params = jax.tree.unflatten(treedef, [a + b for a, b in zip(leaves, noise, strict=True)])
    xs = jax.random.normal(jax.random.fold_in(key, 1), (length, cell.n_in), F64)
    ys = jax.random.normal(jax.random.fold_in(key, 2), (length, cell.n_out), F64)
    return params, xs, ys


def _max_rel(got, want):
    return max(float(jnp.max(jnp.abs(got[k] - want[k])) / jnp.max(jnp.abs(want[k]))) for k in want)


@pytest.mark.parametrize("name", cells.NAMES)
@pytest.mark.parametrize("n_in,n_hidden,n_out", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_full_rtrl_equals_jax_grad(name, n_in, n_hidden, n_out, seed):
    cell = cells.get(name, n_in, n_hidden, n_out)
    params, xs, ys = _problem(cell, seed)
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    for algo in (rtrl.algorithms.get("rtrl", cell), rtrl.forward.jacobian_rtrl(cell)):
        got = jax.jit(lambda p, a=algo: rtrl.sequence_grads(a, p, xs, ys, None))(params)
        assert set(got) == set(want)
        assert _max_rel(got, want) <= EXACT_RTOL, (name, algo.name)


@pytest.mark.parametrize("name", [n for n in cells.NAMES if n != "vanilla"])
def test_full_rtrl_matches_central_finite_differences(name):
    """Central differences of Σ_t L_t for three entries of each parameter (h = 1e-6)."""
    cell = cells.get(name, 2, 4, 1)
    params, xs, ys = _problem(cell, 3, length=6)
    got = rtrl.sequence_grads(rtrl.algorithms.get("rtrl", cell), params, xs, ys, None)
    loss = jax.jit(lambda p: rtrl.sequence_loss(cell, p, xs, ys))
    h = 1e-6
    for leaf, value in params.items():
        for flat in (0, value.size // 2, value.size - 1):
            index = np.unravel_index(flat, value.shape)
            up = {**params, leaf: value.at[index].add(h)}
            down = {**params, leaf: value.at[index].add(-h)}
            fd = (float(loss(up)) - float(loss(down))) / (2 * h)
            assert abs(float(got[leaf][index]) - fd) <= 1e-6 * max(1.0, abs(fd)), (leaf, index)


@pytest.mark.parametrize(
    "name", [n for n in cells.NAMES if cells.FACTORISED in cells.get(n, 1, 2, 1).capabilities]
)
def test_generic_rtrl_equals_the_factorised_engine(name):
    cell = cells.get(name, 2, 5, 2)
    params, xs, ys = _problem(cell, 4)
    a = rtrl.sequence_grads(rtrl.forward.rtrl(cell), params, xs, ys, None)
    b = rtrl.sequence_grads(rtrl.forward.jacobian_rtrl(cell), params, xs, ys, None)
    assert _max_rel(b, a) <= SAME_RTOL


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_gru_two_steps_by_hand():
    cell = cells.get("gru", 1, 1, 1)
    p = {
        "W_in": jnp.asarray([[0.5], [-0.3], [0.8]], F64),  # r, u, c
        "W_rec": jnp.asarray([[0.2], [0.4], [-0.6]], F64),
        "b": jnp.asarray([0.1, -0.2, 0.05], F64),
        "b_hc": jnp.asarray([0.3], F64),
        "W_out": jnp.asarray([[1.5]], F64),
        "b_out": jnp.asarray([-0.1], F64),
    }
    h, ys = 0.0, []
    for x in (1.0, -2.0):
        r = _sigmoid(0.5 * x + 0.2 * h + 0.1)
        u = _sigmoid(-0.3 * x + 0.4 * h - 0.2)
        c = math.tanh(0.8 * x + 0.05 + r * (-0.6 * h + 0.3))
        h = (1 - u) * c + u * h
        ys.append(1.5 * h - 0.1)
    carry = cell.initial_carry(F64)
    for x, y in zip((1.0, -2.0), ys, strict=True):
        carry, pred = cell.step(p, carry, jnp.asarray([x], F64))
        np.testing.assert_allclose(float(pred[0]), y, rtol=1e-14)
    np.testing.assert_allclose(float(carry[0]), h, rtol=1e-14)


def test_ctrnn_two_steps_by_hand():
    alpha = cells.ctrnn.__defaults__[0]
    cell = cells.get("ctrnn", 1, 1, 1)
    p = {
        "W_in": jnp.asarray([[0.7]], F64),
        "W_rec": jnp.asarray([[-0.4]], F64),
        "b": jnp.asarray([0.2], F64),
        "W_out": jnp.asarray([[2.0]], F64),
        "b_out": jnp.asarray([0.5], F64),
    }
    h = 0.0
    carry = cell.initial_carry(F64)
    for x in (1.0, 0.5):
        h = (1 - alpha) * h + alpha * math.tanh(-0.4 * h + 0.7 * x + 0.2)
        carry, pred = cell.step(p, carry, jnp.asarray([x], F64))
        np.testing.assert_allclose(float(pred[0]), 2.0 * h + 0.5, rtol=1e-14)
    assert alpha == 0.1


def _step_temp_bytes(algo, cell, dtype=jnp.float32):
    params = cell.init(jax.random.key(0), dtype)
    state = algo.init(jax.random.key(1), params)
    x, y = jnp.zeros((cell.n_in,), dtype), jnp.zeros((cell.n_out,), dtype)
    compiled = jax.jit(algo.step).lower(params, state, x, y).compile()
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    return compiled.memory_analysis().temp_size_in_bytes, state_bytes, n_params


@pytest.mark.parametrize("name", cells.NAMES)
def test_the_immediate_derivative_is_o_params(name):
    """tbptt(w=1), the immediate derivative of every cell: its state is the carry, one input and
    one stored carry (O(n)), and a step's compiled temp memory grows like the parameter count
    (4× from n = 64 to 128), not like full RTRL's M (S·P, 8×)."""
    temps, params = [], []
    for n in (64, 128):
        cell = cells.get(name, 1, n, 1)
        temp, state_bytes, n_params = _step_temp_bytes(
            rtrl.algorithms.get("tbptt", cell, w=1), cell
        )
        carry = sum(leaf.size for leaf in jax.tree.leaves(cell.initial_carry()))
        assert state_bytes <= 4 * (2 * carry + cell.n_in + 1)
        temps.append(temp)
        params.append(n_params)
    assert temps[1] <= 1.3 * (params[1] / params[0]) * temps[0] + 4 * params[1], temps
    assert temps[1] <= 6.0 * params[1] * 4  # a few copies of the parameters at most
    for n in (64, 128):  # what the same measure shows for full RTRL: S·P sensitivities
        cell = cells.get(name, 1, n, 1)
        _, state_bytes, n_params = _step_temp_bytes(rtrl.forward.jacobian_rtrl(cell), cell)
        carry = sum(leaf.size for leaf in jax.tree.leaves(cell.initial_carry()))
        assert state_bytes == 4 * carry * (n_params + 1)


def test_stepwise_only_cells_are_refused_where_the_factorised_form_is_needed():
    cell = cells.get("gru", 1, 4, 1)
    for name, options in [("sparse_rtrl", {"k": 2}), ("traces", {}), ("snap1", {}), ("uoro", {})]:
        with pytest.raises(ValueError, match=r"capability 'factorised'.*rtrl \(full\)"):
            rtrl.algorithms.get(name, cell, **options)
    with pytest.raises(ValueError, match=r"x_t has shape \(2,\)"):
        cell.step(cell.init(jax.random.key(0)), cell.initial_carry(), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="alpha"):
        cells.ctrnn(1, 4, 1, alpha=1.5)
    opaque = cell._replace(name="opaque", capabilities=frozenset())
    with pytest.raises(ValueError, match="capability 'stepwise'"):
        rtrl.algorithms.get("rtrl", opaque)


def test_two_layer_sensitivity_blocks_are_the_jacobians_of_the_unrolled_state():
    """After T steps, full RTRL's M blocks equal jax.jacfwd of (h¹_T, h²_T) with respect to each
    layer's parameters: ∂h¹/∂θ¹, ∂h²/∂θ², and the cross-layer ∂h²/∂θ¹ (∂h¹/∂θ² = 0)."""
    from rtrl.cells import stacked

    n = 3
    cell = cells.get("vanilla_2layer", 2, n, 1)
    params, xs, ys = _problem(cell, 5, length=6)
    algo = rtrl.forward.jacobian_rtrl(cell)
    state = algo.init(None, params)
    for x, y in zip(xs, ys, strict=True):
        state, _ = algo.step(params, state, x, y)
    blocks = stacked.sensitivity_blocks(params, state.M, n)

    def final(p):
        carry = cell.initial_carry(F64)
        for x in xs:
            carry = cell.transition(p, carry, x)
        return carry

    jac = jax.jacfwd(final)(params)  # (dh¹, dh²), each {name: [n, *shape]}

    def block(layer_out, layer):
        return np.concatenate([np.asarray(jac[layer_out][p]).reshape(n, -1) for p in layer], 1)

    one, two = stacked.LAYERS
    np.testing.assert_allclose(blocks["layer 1"], block(0, one), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(blocks["layer 2"], block(1, two), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        blocks["cross-layer (∂h²/∂θ¹)"], block(1, one), rtol=1e-12, atol=1e-14
    )
    assert np.abs(block(0, two)).max() == 0.0


def test_two_layer_two_steps_by_hand():
    cell = cells.get("vanilla_2layer", 1, 1, 1)
    p = {
        "W_in1": jnp.asarray([[0.6]], F64),
        "W_rec1": jnp.asarray([[-0.3]], F64),
        "b1": jnp.asarray([0.1], F64),
        "W_in2": jnp.asarray([[1.2]], F64),
        "W_rec2": jnp.asarray([[0.5]], F64),
        "b2": jnp.asarray([-0.2], F64),
        "W_out": jnp.asarray([[2.0]], F64),
        "b_out": jnp.asarray([0.3], F64),
    }
    h1 = h2 = 0.0
    carry = cell.initial_carry(F64)
    for x in (1.0, -0.5):
        h1 = math.tanh(-0.3 * h1 + 0.6 * x + 0.1)
        h2 = math.tanh(0.5 * h2 + 1.2 * h1 - 0.2)  # layer 2 reads the current h1
        carry, pred = cell.step(p, carry, jnp.asarray([x], F64))
        np.testing.assert_allclose(float(pred[0]), 2.0 * h2 + 0.3, rtol=1e-14)


def test_lora_adapts_the_merged_weights():
    """W_p + B_p A_p is the weight the adapted cell uses: with B_p A_p put into the base's W_p by
    hand, the base cell gives the same outputs."""
    cell = cells.get("lstm_lora4", 2, 5, 1)
    base = cells.get("lstm", 2, 5, 1)
    params, xs, _ = _problem(cell, 9, length=4)
    merged = {k: v for k, v in params.items() if not cells.is_adapter(k)}
    for p in ("W_rec", "W_in"):
        merged[p] = params[p] + params[f"{p}_B"] @ params[f"{p}_A"]
    c1, c2 = cell.initial_carry(F64), base.initial_carry(F64)
    for x in xs:
        c1, y1 = cell.step(params, c1, x)
        c2, y2 = base.step(merged, c2, x)
        np.testing.assert_allclose(y1, y2, rtol=1e-13)
    with pytest.raises(ValueError, match="rank"):
        cells.lora(base, rank=0)
