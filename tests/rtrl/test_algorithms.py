"""Every credit-assignment algorithm against an independent oracle, in float64.

Oracles: `jax.grad` of the summed loss (BPTT), central finite differences, dense forward-mode
references written here with `jax.jacfwd` or plain NumPy, and Monte-Carlo means for the unbiased
estimators. Each jitted block computes several algorithms at once so the file compiles little.
"""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import masks

F64 = jnp.float64
T = 12  # sequence length for the exactness tests
EXACT_RTOL = 1e-10  # exact algorithm vs jax.grad, float64 (observed ~1e-15)
SAME_RTOL = 1e-12  # two implementations of the same arithmetic, float64
CELLS = ("vanilla", "lstm")
MASK_NAMES = ("ring_self", "random", "oracle", "anti_oracle", "dynamic")


# ----------------------------------------------------------------------------------------------
# helpers


def _problem(cell, seed, length=T, loss="mse"):
    """Params drawn like cell.init but with non-zero biases, inputs [length, n_in], targets.

    NumPy draws, so no test pays for compiling jax.random inside its jitted block.
    """
    rng = np.random.default_rng(seed)
    n, n_in, n_out, rows = cell.n_hidden, cell.n_in, cell.n_out, cell.n_rows
    params = {
        "W_in": rng.normal(size=(rows, n_in)) / np.sqrt(n_in),
        "W_rec": rng.normal(size=(rows, n)) / np.sqrt(n),
        "b": 0.3 * rng.normal(size=rows),
        "W_out": rng.normal(size=(n_out, n)) / np.sqrt(n),
        "b_out": 0.3 * rng.normal(size=n_out),
    }
    xs = rng.normal(size=(length, n_in))
    if loss == "xent":
        ys = np.eye(n_out)[rng.integers(0, n_out, size=length)]
    else:
        ys = rng.normal(size=(length, n_out))
    return jax.tree.map(lambda a: jnp.asarray(a, F64), (params, xs, ys))


def _stacked_problems(cell, seeds, **kwargs):
    """_problem for several seeds, stacked on a leading axis for jax.vmap."""
    problems = [_problem(cell, seed, **kwargs) for seed in seeds]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *problems)


def _rel_errors(got, ref):
    """{leaf: max |got − ref| / max |ref|}."""
    return {
        name: float(np.max(np.abs(np.asarray(got[name]) - np.asarray(ref[name]))))
        / float(np.max(np.abs(np.asarray(ref[name]))))
        for name in ref
    }


def _assert_rel_close(got, ref, rtol, what=""):
    errors = _rel_errors(got, ref)
    assert max(errors.values()) <= rtol, f"{what}: relative errors per leaf {errors}"


def _seed_slice(tree, i):
    return jax.tree.map(lambda leaf: leaf[i], tree)


def _grad_reference(cell, params, xs, ys, loss="mse"):
    return jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys, loss))(params)


def _dense_forward_reference(cell, params, xs, ys, keep):
    """Σ_t ∂L_t/∂θ (MSE) with M_t = keep ⊙ (∂s_t/∂s_{t−1} M_{t−1} + ∂s_t/∂Θ), keep [S, R].

    Written from the cell's step only: the carry is flattened to s [S] (vanilla h; LSTM [h; c]),
    Θ = [W_rec | W_in | b] [R, m], and both Jacobians come from jax.jacfwd. Returns the gradient
    dict and the stacked M [T, S, R, m]. keep = 1 everywhere is full RTRL.
    """
    n, n_in = cell.n_hidden, cell.n_in
    carry0 = cell.initial_carry(F64)
    s0, unravel = jax.flatten_util.ravel_pytree(carry0)

    def as_params(theta):
        return {**params, "W_rec": theta[:, :n], "W_in": theta[:, n : n + n_in], "b": theta[:, -1]}

    def transition(s_prev, theta, x):
        carry, _ = cell.step(as_params(theta), unravel(s_prev), x)
        return jax.flatten_util.ravel_pytree(carry)[0]

    def step_loss(s, readout, y):
        h = cell.hidden(unravel(s))
        pred = readout["W_out"] @ h + readout["b_out"]
        return jnp.mean((pred - y) ** 2)

    theta = jnp.concatenate([params["W_rec"], params["W_in"], params["b"][:, None]], axis=1)
    readout = {"W_out": params["W_out"], "b_out": params["b_out"]}

    def body(carry, inputs):
        s, M, g_theta, g_out = carry
        x, y = inputs
        J_s = jax.jacfwd(transition, argnums=0)(s, theta, x)  # [S, S]
        J_theta = jax.jacfwd(transition, argnums=1)(s, theta, x)  # [S, R, m]
        M = keep[:, :, None] * (jnp.einsum("st,tam->sam", J_s, M) + J_theta)
        s = transition(s, theta, x)
        dL_ds, dL_dout = jax.grad(step_loss, argnums=(0, 1))(s, readout, y)
        g_theta = g_theta + jnp.einsum("s,sam->am", dL_ds, M)
        return (s, M, g_theta, jax.tree.map(jnp.add, g_out, dL_dout)), M

    M0 = jnp.zeros((s0.size,) + theta.shape, F64)
    zeros = (jnp.zeros_like(theta), jax.tree.map(jnp.zeros_like, readout))
    (_, _, g_theta, g_out), Ms = jax.lax.scan(body, (s0, M0, *zeros), (xs, ys))
    grads = {
        "W_rec": g_theta[:, :n],
        "W_in": g_theta[:, n : n + n_in],
        "b": g_theta[:, -1],
        **g_out,
    }
    return grads, Ms


# ----------------------------------------------------------------------------------------------
# 1. full RTRL == jax.grad (BPTT)


@pytest.mark.parametrize("cell_name", CELLS)
@pytest.mark.parametrize("n_hidden, n_in, n_out", [(3, 1, 1), (8, 3, 2), (16, 1, 2)])
def test_rtrl_equals_bptt(cell_name, n_hidden, n_in, n_out):
    cell = rtrl.cells.get(cell_name, n_in=n_in, n_hidden=n_hidden, n_out=n_out)
    algo = rtrl.algorithms.get("rtrl", cell)

    @jax.jit
    @jax.vmap
    def both(params, xs, ys):
        got = rtrl.sequence_grads(algo, params, xs, ys, None)
        return got, _grad_reference(cell, params, xs, ys)

    got, ref = both(*_stacked_problems(cell, seeds=(n_hidden, n_hidden + 1)))
    for seed in range(2):
        _assert_rel_close(_seed_slice(got, seed), _seed_slice(ref, seed), EXACT_RTOL, f"{seed=}")
        for leaf in jax.tree.leaves(_seed_slice(ref, seed)):
            assert float(jnp.max(jnp.abs(leaf))) > 1e-3  # every leaf carries signal


@pytest.mark.parametrize("cell_name", CELLS)
def test_rtrl_equals_bptt_xent_and_weighted_targets(cell_name):
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=5, n_out=3)
    # Weight 0 marks unscored steps; 0.5 checks that the weight scales the loss, not just masks.
    weights = jnp.asarray([0, 1, 0, 0.5, 1, 0, 0, 1, 0.5, 0, 1, 1], F64)

    problems = {loss: _problem(cell, 7, loss=loss) for loss in ("mse", "xent")}

    @jax.jit
    def all_cases(problems):
        out = {}
        for loss, (params, xs, ys) in problems.items():
            algo = rtrl.algorithms.get("rtrl", cell, loss=loss)
            for weighted in (False, True):
                targets = rtrl.Target(ys, weights) if weighted else ys
                got = rtrl.sequence_grads(algo, params, xs, targets, None)
                ref = jax.grad(rtrl.sequence_loss, argnums=1)(cell, params, xs, targets, loss)
                out[f"{loss}/{'weighted' if weighted else 'plain'}"] = (got, ref)
        return out

    results = all_cases(problems)
    for case, (got, ref) in results.items():
        _assert_rel_close(got, ref, EXACT_RTOL, case)
    # The weights matter: the weighted and unweighted gradients differ.
    diff = _rel_errors(results["xent/weighted"][0], results["xent/plain"][0])
    assert min(diff.values()) > 1e-3


# ----------------------------------------------------------------------------------------------
# 2. finite differences


@pytest.mark.parametrize("cell_name", CELLS)
def test_rtrl_matches_central_finite_differences(cell_name):
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=4, n_out=2)
    params, xs, ys = _problem(cell, 3, length=15)
    grads = jax.jit(rtrl.sequence_grads, static_argnums=0)(
        rtrl.algorithms.get("rtrl", cell), params, xs, ys, None
    )
    loss = jax.jit(lambda p: rtrl.sequence_loss(cell, p, xs, ys))
    eps = 1e-6  # truncation O(eps²) ~ 1e-12, round-off ~ 1e-16 / eps ~ 1e-10
    flat_params, unravel = jax.flatten_util.ravel_pytree(params)
    flat_grads, _ = jax.flatten_util.ravel_pytree(grads)
    for i in range(3):
        d = jnp.asarray(np.random.default_rng(100 + i).normal(size=flat_params.shape), F64)
        d = d / jnp.linalg.norm(d)
        up, down = loss(unravel(flat_params + eps * d)), loss(unravel(flat_params - eps * d))
        fd = (up - down) / (2 * eps)
        analytic = jnp.vdot(flat_grads, d)
        np.testing.assert_allclose(float(fd), float(analytic), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------
# 3. sparse RTRL: k = n is RTRL; gather and masked implementations agree


@pytest.mark.parametrize(
    "cell_name, full_k_masks",
    # In the masked impl k = n keeps every entry whatever the mask, so the LSTM (the slower
    # compile) checks k = n on a subset: fixed, random and per-step selections.
    [("vanilla", MASK_NAMES), ("lstm", ("ring_self", "random", "dynamic"))],
)
def test_sparse_rtrl_full_k_and_impls(cell_name, full_k_masks):
    n, k_small = 6, 2
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=n, n_out=2)

    @jax.jit
    def all_grads(params, xs, ys, key):
        out = {"rtrl": rtrl.sequence_grads(rtrl.algorithms.get("rtrl", cell), params, xs, ys, key)}
        for mask in MASK_NAMES:
            for impl in ("gather", "masked"):
                for k in (n, k_small) if mask in full_k_masks else (k_small,):
                    algo = rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask=mask, impl=impl)
                    out[f"{mask}/{impl}/{k}"] = rtrl.sequence_grads(algo, params, xs, ys, key)
        return out

    g = all_grads(*_problem(cell, 11, length=10), jax.random.key(11))
    for mask in full_k_masks:
        for impl in ("gather", "masked"):
            _assert_rel_close(g[f"{mask}/{impl}/{n}"], g["rtrl"], SAME_RTOL, f"k=n {mask} {impl}")
    for mask in MASK_NAMES:
        gather, masked = g[f"{mask}/gather/{k_small}"], g[f"{mask}/masked/{k_small}"]
        _assert_rel_close(gather, masked, SAME_RTOL, f"k={k_small} {mask}")
        # k < n really truncates: it is not RTRL.
        assert max(_rel_errors(gather, g["rtrl"]).values()) > 1e-4, mask


# ----------------------------------------------------------------------------------------------
# 4. immediate derivative: traces(0) == sparse_rtrl(k=0) == tbptt(w=1)


@pytest.mark.parametrize("cell_name", CELLS)
def test_traces_decay0_equals_sparse_k0_and_tbptt_w1(cell_name):
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=4, n_out=2)

    options = {"traces": {"decay": 0.0}, "sparse_rtrl": {"k": 0}, "tbptt": {"w": 1}}

    @jax.jit
    def all_grads(params, xs, ys):
        return {
            name: rtrl.sequence_grads(rtrl.algorithms.get(name, cell, **opts), params, xs, ys, None)
            for name, opts in options.items()
        }

    g = all_grads(*_problem(cell, 5))
    chex.assert_trees_all_close(g["traces"], g["sparse_rtrl"], rtol=0, atol=1e-13)
    if cell_name == "vanilla":
        _assert_rel_close(g["traces"], g["tbptt"], SAME_RTOL, "traces(0) vs tbptt(w=1)")
    else:
        # By design the LSTM's traces keep the exact diagonal cell-state path c_{t-1} -> c_t,
        # while tbptt(w=1) cuts the whole previous state: they must differ.
        diff = float(jnp.max(jnp.abs(g["traces"]["W_rec"] - g["tbptt"]["W_rec"])))
        assert diff > 1e-3 * float(jnp.max(jnp.abs(g["tbptt"]["W_rec"])))


# ----------------------------------------------------------------------------------------------
# 5. truncated BPTT


def _tbptt_reference(cell, params, xs, ys, w):
    """Σ_t ∂/∂θ L_t(s_t(θ; s_{t−w}, x_{t−w+1..t})), s_{t−w} from a zero-carry run (held fixed).

    Steps t < w start from s_0 (one unrolled window each); steps t ≥ w are a vmap over t of a
    length-w window from the stored carry s_{t−w}.
    """
    length = xs.shape[0]

    def run(p, s, window):
        def body(s, x):
            s, pred = cell.step(p, s, x)
            return s, pred

        return jax.lax.scan(body, s, window)[1][-1]  # the prediction at the window's end

    def mse(pred, y):
        return jnp.mean((pred - y) ** 2)

    def advance(s, x):
        s = cell.step(params, s, x)[0]
        return s, s

    carries = jax.lax.scan(advance, cell.initial_carry(F64), xs)[1]  # s_1 .. s_T
    starts = jax.tree.map(lambda leaf: leaf[: length - w], carries)  # s_{t−w} for t = w+1 .. T
    starts = jax.tree.map(  # prepend s_0 for t = w
        lambda zero, leaf: jnp.concatenate([zero[None], leaf]), cell.initial_carry(F64), starts
    )
    t_late = jnp.arange(w, length + 1)  # 1-based steps with a full window
    windows = jax.vmap(lambda t: jax.lax.dynamic_slice_in_dim(xs, t - w, w))(t_late)

    def total(p):
        early = sum(mse(run(p, cell.initial_carry(F64), xs[:t]), ys[t - 1]) for t in range(1, w))
        late = jax.vmap(lambda s, win, y: mse(run(p, s, win), y))(starts, windows, ys[t_late - 1])
        return early + jnp.sum(late)

    return jax.grad(total)(jax.lax.stop_gradient(params))


@pytest.mark.parametrize("cell_name", CELLS)
def test_tbptt_against_references(cell_name):
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=4, n_out=2)
    length = 10

    @jax.jit
    def all_grads(params, xs, ys):
        def seq(name, **opts):
            return rtrl.sequence_grads(
                rtrl.algorithms.get(name, cell, **opts), params, xs, ys, None
            )

        return {
            "w=T+3": seq("tbptt", w=length + 3),  # bptt(length=T) below is tbptt(w=T)
            "bptt": seq("bptt", length=length),
            "grad": _grad_reference(cell, params, xs, ys),
            "w=3": seq("tbptt", w=3),
            "ref w=3": _tbptt_reference(cell, params, xs, ys, 3),
        }

    g = all_grads(*_problem(cell, 9, length=length))
    for name in ("w=T+3", "bptt"):
        _assert_rel_close(g[name], g["grad"], EXACT_RTOL, name)
    _assert_rel_close(g["w=3"], g["ref w=3"], EXACT_RTOL, "tbptt(w=3)")
    assert max(_rel_errors(g["w=3"], g["grad"]).values()) > 1e-4  # truncation is visible


# ----------------------------------------------------------------------------------------------
# 6. sparse RTRL sensitivities against a dense NumPy recursion


def test_ring_mask_contents():
    idx = np.asarray(masks.ring(5, 5, 3))
    # neuron i keeps offsets 0, +1, −1: {i, i+1, i−1 mod 5}
    expected = [[0, 1, 4], [1, 2, 0], [2, 3, 1], [3, 4, 2], [4, 0, 3]]
    np.testing.assert_array_equal(idx, expected)
    # LSTM rows: row r belongs to neuron r mod n, so gate rows repeat the neuron's selection.
    np.testing.assert_array_equal(np.asarray(masks.ring(10, 5, 3)), expected + expected)


@pytest.mark.parametrize("n,native_kernel", [(7, None), (13, None), (12, None), (12, False)])
def test_sparse_rtrl_vanilla_sensitivity_equals_dense_masked_recursion(n, native_kernel):
    """n = 7 (k > n / 4) runs the masked matmul; on a CPU with a compiler, n = 13 takes the native
    kernel's general path, n = 12 its banded path; native_kernel=False the XLA program."""
    n_in, k = 2, 3
    cell = rtrl.cells.get("vanilla", n_in=n_in, n_hidden=n, n_out=1)
    params, xs, ys = _problem(cell, 13, length=8)
    algo = rtrl.algorithms.get(
        "sparse_rtrl", cell, k=k, mask="ring_self", native_kernel=native_kernel
    )

    @jax.jit
    def run(params, xs, ys):
        def body(state, inputs):
            state, _ = algo.step(params, state, *inputs)
            return state, state.M

        return jax.lax.scan(body, algo.init(None, params), (xs, ys))[1]

    Ms = np.asarray(run(params, xs, ys))  # [T, n, n, m]

    W_rec, W_in, b = (np.asarray(params[name]) for name in ("W_rec", "W_in", "b"))
    mask = np.zeros((n, n))
    mask[np.arange(n)[:, None], np.asarray(masks.ring(n, n, k))] = 1.0
    m = n + n_in + 1
    h = np.zeros(n)
    M = np.zeros((n, n, m))
    for t, x in enumerate(np.asarray(xs)):
        v = np.concatenate([h, x, [1.0]])
        immediate = np.eye(n)[:, :, None] * v  # I_t[i, a, :] = δ_ia v_t
        h = np.tanh(W_rec @ h + W_in @ x + b)
        M = (1 - h**2)[:, None, None] * (np.einsum("ij,jam->iam", mask * W_rec, M) + immediate)
        np.testing.assert_allclose(Ms[t], M, rtol=0, atol=1e-12 * np.max(np.abs(M)))


# ----------------------------------------------------------------------------------------------
# 7. oracle / anti-oracle mask schedule


def _sorted_top(scores, k):
    """Per row, the sorted column indices of the k largest scores."""
    return np.sort(np.argsort(-scores, axis=1)[:, :k], axis=1)


def test_oracle_selection_schedule():
    n, k = 6, 2
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=n, n_out=1)
    params_a = _problem(cell, 0)[0]
    params_b = {**params_a, "W_rec": _problem(cell, 1)[0]["W_rec"]}
    W_a, W_b = np.abs(np.asarray(params_a["W_rec"])), np.abs(np.asarray(params_b["W_rec"]))
    assert not np.array_equal(_sorted_top(W_a, k), _sorted_top(W_b, k))  # a change is visible
    x, y = jnp.ones((1,), F64), jnp.zeros((1,), F64)

    @jax.jit
    def selections(params_a, params_b):
        out = {}
        for mask in ("oracle", "anti_oracle"):
            algo = rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask=mask)
            state0 = algo.init(None, params_a)
            state1, _ = algo.step(params_a, state0, x, y)  # step 0: selection from params_a
            state2, _ = algo.step(params_b, state1, x, y)  # step 1: W_rec changed
            out[mask] = (state1.idx, state2.idx)
        return out

    for mask, (after_step0, after_step1) in selections(params_a, params_b).items():
        sign = 1.0 if mask == "oracle" else -1.0  # anti_oracle: the k smallest |W_rec|
        np.testing.assert_array_equal(np.sort(after_step0, axis=1), _sorted_top(sign * W_a, k))
        np.testing.assert_array_equal(np.sort(after_step1, axis=1), _sorted_top(sign * W_a, k))

    idx_a = masks.top_k(jnp.asarray(W_a), k)
    gain = jnp.ones((n,), F64)
    for step, expected in ((1, W_a), (199, W_a), (200, W_b), (201, W_a), (400, W_b)):
        idx = masks.refresh("oracle", idx_a, step, params_b["W_rec"], gain, k, period=200)
        np.testing.assert_array_equal(np.sort(idx, axis=1), _sorted_top(expected, k), err_msg=step)


# ----------------------------------------------------------------------------------------------
# 8. SnAp-1 against masked dense RTRL


def test_snap1_vanilla_sensitivity_and_grads_equal_masked_dense():
    n = 5
    cell = rtrl.cells.get("vanilla", n_in=2, n_hidden=n, n_out=2)
    params, xs, ys = _problem(cell, 17, length=10)
    algo = rtrl.algorithms.get("snap1", cell)
    keep = jnp.eye(n, dtype=F64)  # M[i, a] with a ≠ i is zeroed

    @jax.jit
    def run(params, xs, ys):
        def body(state, inputs):
            state, out = algo.step(params, state, *inputs)
            return state, (state.M, out.grads)

        _, (Ms, grads) = jax.lax.scan(body, algo.init(None, params), (xs, ys))
        ref_grads, ref_Ms = _dense_forward_reference(cell, params, xs, ys, keep)
        return Ms, jax.tree.map(lambda g: g.sum(0), grads), ref_Ms, ref_grads

    Ms, grads, ref_Ms, ref_grads = run(params, xs, ys)
    diag = ref_Ms[:, jnp.arange(n), jnp.arange(n)]  # [T, n, m]: the entries SnAp-1 stores
    scale = float(jnp.max(jnp.abs(diag)))
    np.testing.assert_allclose(Ms[:, :, 0], diag, rtol=0, atol=SAME_RTOL * scale)
    _assert_rel_close(grads, ref_grads, SAME_RTOL, "snap1 vanilla")


def test_snap1_lstm_grads_equal_masked_dense():
    n = 4
    cell = rtrl.cells.get("lstm", n_in=2, n_hidden=n, n_out=2)
    params, xs, ys = _problem(cell, 19, length=10)
    # carry s = [h; c] (2n); Θ rows of neuron i are i, n+i, 2n+i, 3n+i.
    keep = (jnp.arange(2 * n)[:, None] % n == jnp.arange(4 * n)[None, :] % n).astype(F64)

    @jax.jit
    def both(params, xs, ys):
        got = rtrl.sequence_grads(rtrl.algorithms.get("snap1", cell), params, xs, ys, None)
        full = _dense_forward_reference(cell, params, xs, ys, jnp.ones_like(keep))[0]
        return got, _dense_forward_reference(cell, params, xs, ys, keep)[0], full

    got, ref, full = both(params, xs, ys)
    _assert_rel_close(got, ref, SAME_RTOL, "snap1 lstm")
    _assert_rel_close(full, _grad_reference(cell, params, xs, ys), EXACT_RTOL, "dense oracle")
    assert max(_rel_errors(got, full).values()) > 1e-4  # the SnAp-1 pattern is a truncation


# ----------------------------------------------------------------------------------------------
# 9. unbiased estimators: Monte-Carlo mean over keys


@pytest.fixture(scope="module")
def small_problem():
    cell = rtrl.cells.get("vanilla", n_in=2, n_hidden=4, n_out=1)
    params, xs, ys = _problem(cell, 21, length=6)
    exact = rtrl.sequence_grads(rtrl.algorithms.get("rtrl", cell), params, xs, ys, None)
    return cell, params, xs, ys, exact


@pytest.mark.parametrize("name", ["uoro", "kf_rtrl"])
def test_estimator_is_unbiased(small_problem, name):
    cell, params, xs, ys, exact = small_problem
    n_samples = 4000
    algo = rtrl.algorithms.get(name, cell)
    samples = jax.jit(jax.vmap(lambda key: rtrl.sequence_grads(algo, params, xs, ys, key)))(
        jax.random.split(jax.random.key(1234), n_samples)
    )
    recurrent = ("W_rec", "W_in", "b")
    mean = {k: np.asarray(samples[k]).mean(0) for k in recurrent}
    se = {k: np.asarray(samples[k]).std(0, ddof=1) / np.sqrt(n_samples) for k in recurrent}
    z = max(float(np.max(np.abs(mean[k] - exact[k]) / se[k])) for k in recurrent)
    # 28 components, Gaussian |z| > 5 has probability ~6e-7 each; observed max |z| ≈ 2.
    assert z < 5.0, z
    # Relative error of the mean over all recurrent components: ‖mean − g‖ / ‖g‖ < 0.1
    # (observed ≈ 0.01–0.05 at N = 4000).
    err = np.sqrt(sum(np.sum((mean[k] - exact[k]) ** 2) for k in recurrent))
    norm = np.sqrt(sum(np.sum(np.asarray(exact[k]) ** 2) for k in recurrent))
    assert err / norm < 0.1, err / norm
    # The readout gradients are exact for every sample.
    readout = {k: samples[k] for k in ("W_out", "b_out")}
    exact_readout = {k: jnp.broadcast_to(exact[k], samples[k].shape) for k in readout}
    chex.assert_trees_all_close(readout, exact_readout, rtol=0, atol=1e-12)

    # Control: the biased immediate derivative fails the same criterion, so the test has power.
    traces = rtrl.sequence_grads(rtrl.algorithms.get("traces", cell), params, xs, ys, None)
    z_control = max(float(np.max(np.abs(traces[k] - exact[k]) / se[k])) for k in recurrent)
    assert z_control > 5.0, z_control


# ----------------------------------------------------------------------------------------------
# 10. bad input


REQUIRED = {"sparse_rtrl": {"k": 1}, "traces": {}, "tbptt": {"w": 2}, "bptt": {"length": 3}}


def test_registry_rejects_bad_names_and_options():
    cell = rtrl.cells.get("vanilla", n_in=2, n_hidden=3, n_out=1)
    with pytest.raises(ValueError, match="known algorithms") as err:
        rtrl.algorithms.get("rtrl2", cell)
    assert all(name in str(err.value) for name in rtrl.algorithms.NAMES)
    with pytest.raises(ValueError, match="k must satisfy"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=4)  # k > n = 3
    with pytest.raises(ValueError, match="k must satisfy"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=-1)
    with pytest.raises(ValueError, match="unknown mask"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2, mask="diagonal")
    with pytest.raises(ValueError, match="unknown impl"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2, impl="sparse")
    with pytest.raises(ValueError, match="does not take"):
        rtrl.algorithms.get("rtrl", cell, k=3)
    with pytest.raises(ValueError, match="needs option"):
        rtrl.algorithms.get("tbptt", cell)
    with pytest.raises(ValueError, match="needs option"):
        rtrl.algorithms.get("sparse_rtrl", cell)
    for decay in (-0.1, 1.5):
        with pytest.raises(ValueError, match="decay"):
            rtrl.algorithms.get("traces", cell, decay=decay)
    with pytest.raises(ValueError, match="w must be"):
        rtrl.algorithms.get("tbptt", cell, w=0)
    with pytest.raises(ValueError, match="unknown cell"):
        rtrl.cells.get("grus", n_in=1, n_hidden=2, n_out=1)
    for name in rtrl.algorithms.NAMES:
        with pytest.raises(ValueError, match="unknown loss"):
            rtrl.algorithms.get(name, cell, loss="hinge", **REQUIRED.get(name, {}))
    with pytest.raises(ValueError, match="unknown loss"):
        rtrl.sequence_loss(
            cell, _problem(cell, 0)[0], jnp.ones((2, 2)), jnp.ones((2, 1)), loss="l1"
        )


@pytest.mark.parametrize("name", rtrl.algorithms.NAMES)
def test_step_rejects_wrong_shapes(name):
    cell = rtrl.cells.get("vanilla", n_in=2, n_hidden=3, n_out=1)
    algo = rtrl.algorithms.get(name, cell, **REQUIRED.get(name, {}))
    params = _problem(cell, 0)[0]
    state = algo.init(jax.random.key(1), params)
    x, y = jnp.ones((2,), F64), jnp.ones((1,), F64)
    with pytest.raises(ValueError, match="x_t"):
        algo.step(params, state, jnp.ones((3,), F64), y)
    with pytest.raises(ValueError, match="x_t"):
        algo.step(params, state, jnp.ones((4, 2), F64), y)  # a batch axis
    with pytest.raises(ValueError, match="y_t"):
        algo.step(params, state, x, jnp.ones((2,), F64))
    with pytest.raises(ValueError, match="weight"):
        algo.step(params, state, x, rtrl.Target(y, jnp.ones((1,), F64)))


# ----------------------------------------------------------------------------------------------
# 11. vmap over seeds


def test_vmap_over_seeds_equals_sequential():
    cell = rtrl.cells.get("vanilla", n_in=2, n_hidden=4, n_out=2)
    algo = rtrl.algorithms.get("rtrl", cell)

    @jax.jit
    def run(key):
        # Everything from the key, as a seed-vmapped run does: init, then the sequence.
        k_init, k_data = jax.random.split(key)
        params = cell.init(k_init, F64)
        data = jax.random.normal(k_data, (T, cell.n_in + cell.n_out), F64)
        xs, ys = data[:, : cell.n_in], data[:, cell.n_in :]
        return rtrl.sequence_grads(algo, params, xs, ys, key)

    keys = jax.random.split(jax.random.key(23), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    for i, key in enumerate(keys):
        chex.assert_trees_all_close(_seed_slice(batched, i), run(key), rtol=0, atol=1e-12)
    assert max(_rel_errors(_seed_slice(batched, 0), _seed_slice(batched, 1)).values()) > 1e-2


def test_paper_ring_keeps_neighbours_on_both_sides_and_never_itself():
    """The paper's ring: ±1 .. ±k/2 (k = 1 propagates nothing); ring_self: 0, +1, −1, ..."""
    np.testing.assert_array_equal(
        masks.initial("ring", None, jnp.zeros((5, 5)), 4)[0], [1, 4, 2, 3]
    )
    assert masks.paths("ring", 1, 8) == 0 and masks.paths("ring", 5, 8) == 4
    assert masks.paths("ring", 8, 8) == 7 and masks.paths("ring", 64, 8) == 7  # all but self
    assert masks.neighbour_ring_offsets(8, 8) == [1, -1, 2, -2, 3, -3, 4]
    cell = rtrl.cells.get("vanilla", 2, 8, 1)
    key = jax.random.key(3)
    params = cell.init(key, jnp.float64)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (6, 2), jnp.float64)
    ys = jax.random.normal(jax.random.fold_in(key, 2), (6, 1), jnp.float64)
    k1 = rtrl.sequence_grads(rtrl.algorithms.get("sparse_rtrl", cell, k=1), params, xs, ys, None)
    k0 = rtrl.sequence_grads(rtrl.algorithms.get("sparse_rtrl", cell, k=0), params, xs, ys, None)
    for name in k0:
        np.testing.assert_array_equal(k1[name], k0[name])
    # k = 4: the same gradient as the masked dense recursion with W_rec[i, i±1], W_rec[i, i±2]
    gather = rtrl.algorithms.get("sparse_rtrl", cell, k=4, impl="gather")
    masked = rtrl.algorithms.get("sparse_rtrl", cell, k=4, impl="masked")
    a = rtrl.sequence_grads(gather, params, xs, ys, jax.random.key(0))
    b = rtrl.sequence_grads(masked, params, xs, ys, jax.random.key(0))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# Selection after a dense phase (sparse_rtrl dense_until, the fisher masks)


def _step_grads(algo, params, xs, ys, state):
    """Per-step gradients [T, ...] and the final state, params fixed (no optimizer)."""

    def body(state, inputs):
        state, out = algo.step(params, state, *inputs)
        return state, out.grads

    return jax.lax.scan(body, state, (xs, ys))


@pytest.mark.parametrize("cell_name", CELLS)
def test_dense_phase_then_fisher_selection(cell_name):
    """t < T₀: exactly full RTRL, Fisher F_j = Σ_t Σ_g ‖g_Θ[g n + j]‖² of its gradients; from T₀
    every row keeps the top-k (fisher) / bottom-k (anti_fisher) neurons of F and the steps equal
    plain sparse RTRL continued from the dense state with that selection."""
    n, k, t0 = 6, 2, 5
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=n, n_out=2)
    params, xs, ys = _problem(cell, 7)
    full = rtrl.algorithms.get("rtrl", cell)

    @jax.jit
    def run(params, xs, ys):
        ref_state, ref = _step_grads(full, params, xs, ys, full.init(None, params))
        out = {}
        for mask in ("fisher", "anti_fisher"):
            algo = rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask=mask, dense_until=t0)
            init = algo.init(jax.random.key(0), params)
            head_state, head = _step_grads(algo, params, xs[:t0], ys[:t0], init)
            # the reference continuation: sparse RTRL with a fixed selection (random's refresh
            # never changes idx), from the dense state, given the Fisher selection
            plain = rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask="random")
            selected = masks.MASKS[mask].scored(head_state.score, cell.n_rows, k)
            start = head_state._replace(idx=selected, score=jnp.zeros((0,), F64))
            _, cont = _step_grads(plain, params, xs[t0:], ys[t0:], start)
            final, whole = _step_grads(algo, params, xs, ys, init)
            out[mask] = (head_state.score, final.idx, whole, cont)
        return ref, out

    ref, out = run(params, xs, ys)
    rows = jnp.concatenate([ref["W_rec"], ref["W_in"], ref["b"][..., None]], axis=-1)  # [T, R, m]
    fisher = np.asarray((rows[:t0] ** 2).sum(axis=(0, 2)).reshape(-1, n).sum(axis=0))  # [n]
    assert fisher.max() / fisher.min() > 1.01  # the scores separate neurons (a real ranking)
    for mask, (score, idx, whole, cont) in out.items():
        np.testing.assert_allclose(score, fisher, rtol=SAME_RTOL)
        sign = 1.0 if mask == "fisher" else -1.0
        chosen = np.sort(np.argsort(-sign * fisher)[:k])
        np.testing.assert_array_equal(
            np.sort(np.asarray(idx), axis=1), np.tile(chosen, (cell.n_rows, 1))
        )
        head = _seed_slice(whole, slice(0, t0))
        _assert_rel_close(head, _seed_slice(ref, slice(0, t0)), SAME_RTOL, f"{mask}: dense phase")
        _assert_rel_close(_seed_slice(whole, slice(t0, None)), cont, SAME_RTOL, f"{mask}: after")
        after = _rel_errors(_seed_slice(whole, slice(t0, None)), _seed_slice(ref, slice(t0, None)))
        assert max(after.values()) > 1e-3, (
            f"{mask}: k={k} of {n} paths should differ from full RTRL"
        )


def test_dense_phase_then_no_path_is_the_immediate_derivative():
    """k = 0 after a dense phase (M kept whole): from T₀ on the vanilla RNN's gradients are the
    immediate derivative's, traces(decay=0) on the same parameters."""
    n, t0 = 5, 4
    cell = rtrl.cells.get("vanilla", n_in=2, n_hidden=n, n_out=1)
    params, xs, ys = _problem(cell, 3)
    algo = rtrl.algorithms.get("sparse_rtrl", cell, k=0, mask="random", dense_until=t0)
    immediate = rtrl.algorithms.get("traces", cell, decay=0.0)
    full = rtrl.algorithms.get("rtrl", cell)

    @jax.jit
    def grads(params):
        key = jax.random.key(0)
        return [
            _step_grads(a, params, xs, ys, a.init(key, params))[1] for a in (algo, immediate, full)
        ]

    g, g_imm, g_full = grads(params)
    after, before = slice(t0, None), slice(0, t0)
    _assert_rel_close(_seed_slice(g, after), _seed_slice(g_imm, after), SAME_RTOL, "after T0")
    _assert_rel_close(_seed_slice(g, before), _seed_slice(g_full, before), SAME_RTOL, "before T0")
    diff = _rel_errors(_seed_slice(g, before), _seed_slice(g_imm, before))
    assert max(diff.values()) > 1e-3  # the dense phase is not the immediate derivative


def test_fisher_masks_need_a_dense_phase():
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=6, n_out=1)
    with pytest.raises(ValueError, match="dense_until"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2, mask="fisher")
    with pytest.raises(ValueError, match="dense_until must be >= 0"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2, mask="random", dense_until=-1)
