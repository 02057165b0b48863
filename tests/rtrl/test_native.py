"""The CPU kernel (rtrl.native) against NumPy and against the XLA programs it replaces, float64;
that it never deadlocks; and the fallbacks, which need no C++ compiler.

The kernel has two paths: the banded one (ring offsets -lo .. hi, k <= 8, n a multiple of 4,
rows in blocks of 4; one or two carry leaves) and the general one (any offsets, any n; one leaf);
the cases below take both, with the ring's wrap-around at both ends, traces (no offsets), a decay,
vmapped batches, float32, and the LSTM's two leaves. Tests that run the kernel use the `kernel`
fixture and skip where it cannot be built; the fallback tests (switched off, no compiler, no
jax.ffi, another backend) and differentiation through a step run everywhere.

The deadlock tests run at n = 128 (M has 2.1 M values, above the kernel's 2^20 threshold for
using helper threads, and 3 column tiles) in a subprocess under a timeout, so a hang fails the
test instead of CI. (On a one-core machine the pool has no helper to wait for and they pass
trivially.)
"""

import os
import pathlib
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import masks, native

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernel():
    if not native.available():
        pytest.skip("no C++ compiler or not a CPU backend: rtrl.native falls back to XLA")


requires_kernel = pytest.mark.usefixtures("kernel")


@pytest.fixture
def fresh_decision():
    """Make available() decide again (it builds and registers once per process), and again
    after the test, once the environment is restored."""
    native._registered.cache_clear()
    yield
    native._registered.cache_clear()


def _vanilla_pass(M, w, d, v, coef, offsets, decay):
    """The kernel with the vanilla cell's coefficients: A = d w, B = γ, E = d (one leaf)."""
    n = M.shape[0]
    A = d[:, None, None] * w[:, None, :]
    B = jnp.full((n, 1, 1), decay, M.dtype)
    return native.ring_pass(M, A, B, d[:, None, None], v, coef[:, None], offsets)


def _reference(M, w, d, v, coef, offsets, decay):
    """M_t = γ M + d ⊙ (Σ_s w[:, s] M[(i + o_s) mod n] + I), g = Σ_i coef_i M[i], in NumPy."""
    n, _, m = M.shape
    prop = np.zeros_like(M)
    for s, o in enumerate(offsets):
        prop += w[:, s, None, None] * np.roll(M, -o, axis=0)
    immediate = np.eye(n)[:, :, None] * v[None, None, :]
    return decay * M + d[:, None, None] * (prop + immediate), np.einsum("i,iam->am", coef, M)


KERNEL_CASES = [
    # (n, offsets): banded (n % 4 == 0, ring order) ...
    *[(8, masks.signed_ring_offsets(k)) for k in (1, 2, 3, 4, 5, 8)],
    (12, masks.signed_ring_offsets(7)),
    (5, []),  # traces, n not a multiple of 4: general path
    (8, []),  # traces, banded with the decay as the only weight
    # ... and general: n not a multiple of 4, offsets out of ring order, k > 8
    (7, masks.signed_ring_offsets(4)),
    (9, [1, -1, 2, -2]),
    (8, [0, 3]),
    (24, masks.signed_ring_offsets(10)),
    (4, masks.signed_ring_offsets(4)),  # n < 4 + lo: general path, every row wraps
]


@requires_kernel
@pytest.mark.parametrize("n,offsets", KERNEL_CASES)
@pytest.mark.parametrize("decay", [0.0, 0.7])
def test_kernel_equals_numpy(n, offsets, decay):
    m, batch = n + 3, 3
    rng = np.random.default_rng(n * 31 + len(offsets))
    arrays = [
        rng.normal(size=(batch, n, n, m)),
        rng.normal(size=(batch, n, len(offsets))),
        rng.normal(size=(batch, n)),
        rng.normal(size=(batch, m)),
        rng.normal(size=(batch, n)),
    ]
    got_M, got_g = jax.jit(jax.vmap(lambda *a: _vanilla_pass(*a, offsets, decay)))(*arrays)
    for b in range(batch):
        want_M, want_g = _reference(*(a[b] for a in arrays), offsets, decay)
        np.testing.assert_allclose(got_M[b], want_M, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_g[b], want_g, rtol=1e-12, atol=1e-12)
    # float32: same program, rounding only
    f32 = [jnp.asarray(a[0], jnp.float32) for a in arrays]
    got_M, got_g = jax.jit(lambda *a: _vanilla_pass(*a, offsets, decay))(*f32)
    assert got_M.dtype == jnp.float32
    want_M, want_g = _reference(*(a[0] for a in arrays), offsets, decay)
    np.testing.assert_allclose(got_M, want_M, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-4)


# traces keep only M's diagonal blocks and have no kernel pass (tests/rtrl/test_diagonal.py).
ALGO_CASES = [
    ("sparse_rtrl", {"k": 1, "mask": "ring_self"}),
    ("sparse_rtrl", {"k": 3, "mask": "ring_self"}),
    ("sparse_rtrl", {"k": 4, "mask": "ring_self"}),
]


@requires_kernel
@pytest.mark.parametrize(
    "cell_name,n", [("vanilla", 16), ("vanilla", 20), ("vanilla", 18), ("lstm", 16), ("lstm", 20)]
)  # banded, banded, general (k <= n / 4: the ring gather); LSTM: banded, two leaves
def test_algorithms_native_equal_xla(cell_name, n):
    """Gradient sums and final M of the kernel and of the XLA program, vmapped over 2 seeds."""
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=n, n_out=2)
    algos = {}
    for name, opts in ALGO_CASES:
        for use in (True, False):
            algos[(name, str(opts), use)] = rtrl.algorithms.get(
                name, cell, **opts, native_kernel=use
            )
    rng = np.random.default_rng(n)
    keys = jax.random.split(jax.random.key(n), 2)
    params = jax.vmap(cell.init)(keys)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    params["b"] = jnp.asarray(0.3 * rng.normal(size=params["b"].shape))
    xs = jnp.asarray(rng.normal(size=(2, 10, 2)))
    ys = jnp.asarray(rng.normal(size=(2, 10, 2)))

    @jax.jit
    def run(params, xs, ys):
        def one(algo, params, xs, ys):
            state = algo.init(None, params)
            total, _ = rtrl.algorithms.scan_grads(algo, params, state, xs, ys)

            def body(state, inputs):
                return algo.step(params, state, *inputs)[0], None

            final = jax.lax.scan(body, state, (xs, ys))[0]
            return total, final.M

        return {
            key: jax.vmap(lambda p, x, y, a=a: one(a, p, x, y))(params, xs, ys)
            for key, a in algos.items()
        }

    out = run(params, xs, ys)
    for name, opts in ALGO_CASES:
        (g_native, M_native), (g_xla, M_xla) = (
            out[(name, str(opts), True)],
            out[(name, str(opts), False)],
        )
        for a, b in zip(jax.tree.leaves(M_native), jax.tree.leaves(M_xla), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13, err_msg=name)
            assert float(jnp.max(jnp.abs(b))) > 1e-2  # a state that can disagree
        for leaf in g_xla:
            np.testing.assert_allclose(
                g_native[leaf], g_xla[leaf], rtol=1e-12, atol=1e-13, err_msg=f"{name} {leaf}"
            )


@requires_kernel
def test_step_updates_M_in_place():
    """The compiled scan holds one M buffer: no copy of M per step, one custom call."""
    n = 32
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=n, n_out=1)
    algo = rtrl.algorithms.get("sparse_rtrl", cell, k=4, native_kernel=True)
    params = cell.init(jax.random.key(0))
    xs = jnp.zeros((20, 1), jnp.float32)

    def run(params, state, xs):
        return rtrl.algorithms.scan_grads(algo, params, state, xs, xs)

    hlo = jax.jit(run).lower(params, algo.init(None, params), xs).compile().as_text()
    shape = f"f32[{n},{n},{n + 2}]"
    copies = [line for line in hlo.splitlines() if "copy(" in line and f"= {shape}" in line]
    assert hlo.count("credit_ring_pass") >= 1
    assert len(copies) <= 1, copies  # at most the copy of the initial state into the loop


def test_bad_input():
    M = jnp.zeros((6, 6, 8))
    A, B, E = jnp.zeros((6, 1, 2)), jnp.zeros((6, 1, 1)), jnp.zeros((6, 1, 1))
    v, c = jnp.zeros(8), jnp.zeros((6, 1))
    with pytest.raises(ValueError, match="one or two leaves"):
        native.ring_pass(jnp.zeros((6, 9, 8)), A, B, E, v, c, [0, 1])
    with pytest.raises(ValueError, match="do not match"):
        native.ring_pass(M, jnp.zeros((6, 1, 3)), B, E, v, c, [0, 1])
    with pytest.raises(ValueError, match="do not match"):
        native.ring_pass((M, M), A, B, E, v, c, [0, 1])  # two leaves need L = 2 coefficients
    with pytest.raises(ValueError, match="distinct"):
        native.ring_pass(M, A, B, E, v, c, [1, 7])  # 7 = 1 mod 6
    with pytest.raises(ValueError, match="distinct"):
        native.ring_pass(M, A, B, E, v, c, [0, 6])  # out of (-n, n)
    with pytest.raises(ValueError, match="float32 and float64"):
        native.ring_pass(M.astype(jnp.int32), A, B, E, v, c, [0, 1])
    A2, B2, E2 = jnp.zeros((6, 2, 2)), jnp.zeros((6, 2, 2)), jnp.zeros((6, 2, 1))
    c2 = c.repeat(2, 1)
    with pytest.raises(ValueError, match="n a multiple of 4"):
        native.ring_pass((M, M), A2, B2, E2, v, c2, [0, 1])
    lstm = rtrl.cells.get("lstm", n_in=1, n_hidden=10, n_out=1)
    with pytest.raises(ValueError, match="native_kernel=True needs"):
        rtrl.algorithms.get("sparse_rtrl", lstm, k=2, native_kernel=True)  # n % 4 != 0
    vanilla = rtrl.cells.get("vanilla", n_in=1, n_hidden=8, n_out=1)
    with pytest.raises(ValueError, match="native_kernel=True needs"):
        rtrl.algorithms.get("sparse_rtrl", vanilla, k=2, mask="random", native_kernel=True)


def test_switch_off_and_build_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("CREDIT_NATIVE", "0")
    assert not native.available()
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=8, n_out=1)
    with pytest.raises(ValueError, match="native_kernel=True needs"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2, native_kernel=True)
    monkeypatch.setenv("CREDIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(RuntimeError, match="install g\\+\\+ or set \\$CXX"):
        native.build()
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(RuntimeError, match="building ring_pass.cc failed"):
        native.build()
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def _sparse_and_traces(cell, native_kernel):
    return [
        rtrl.algorithms.get("sparse_rtrl", cell, k=4, native_kernel=native_kernel),
        rtrl.algorithms.get("traces", cell, decay=0.5, native_kernel=native_kernel),
    ]


def _grads_and_hlo(algo, cell):
    """Summed gradients of a 6-step sequence (jitted) and the lowered program's text."""
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (6, cell.n_in), jnp.float64)
    ys = jnp.sin(xs[:, : cell.n_out])

    def run(params):
        return rtrl.sequence_grads(algo, params, xs, ys, None)

    return jax.jit(run)(params), jax.jit(run).lower(params).as_text()


def test_no_compiler_falls_back_to_xla(monkeypatch, tmp_path, fresh_decision):
    """Without a C++ compiler: one warning that says why, then the XLA program, same gradients."""
    monkeypatch.setenv("CREDIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.warns(UserWarning, match="using the XLA program.*no C\\+\\+ compiler"):
        assert not native.available()
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=8, n_out=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the decision is made once: no second warning
        for default, xla in zip(
            _sparse_and_traces(cell, None), _sparse_and_traces(cell, False), strict=True
        ):
            (got, hlo), (want, _) = _grads_and_hlo(default, cell), _grads_and_hlo(xla, cell)
            assert "credit_ring_pass" not in hlo
            for leaf in want:
                np.testing.assert_array_equal(got[leaf], want[leaf])
    with pytest.raises(ValueError, match="native_kernel=True needs"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2, native_kernel=True)
    assert list(tmp_path.iterdir()) == []


def _ffi_call_without_vmap_method(target, result_shape_dtypes, **options):
    if "vmap_method" in options:
        raise TypeError("ffi_call() got an unexpected keyword argument 'vmap_method'")
    raise AssertionError("unreachable")


@pytest.mark.parametrize("missing", ["jax.ffi", "jax.ffi.register_ffi_target", "vmap_method"])
def test_missing_ffi_api_falls_back_to_xla(monkeypatch, missing, fresh_decision):
    """A jax without the jax.ffi API the kernel uses (older than 0.5.0, or an ffi_call that lacks
    an option): a warning naming it and the XLA program, never an error. None of them builds."""
    monkeypatch.setattr(native, "build", _never_build)
    if missing == "jax.ffi":
        monkeypatch.delattr(jax, "ffi")
        match = f"no jax.ffi module; the kernel needs jax >= {native.JAX_MIN}"
    elif missing == "jax.ffi.register_ffi_target":
        monkeypatch.delattr(jax.ffi, "register_ffi_target")
        match = "no jax.ffi.register_ffi_target; the kernel needs jax >= "
    else:
        monkeypatch.setattr(jax.ffi, "ffi_call", _ffi_call_without_vmap_method)
        match = "TypeError: .*vmap_method"
    with pytest.warns(UserWarning, match=match):
        assert not native.available()
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=8, n_out=1)
    got, hlo = _grads_and_hlo(rtrl.algorithms.get("sparse_rtrl", cell, k=4), cell)
    assert "credit_ring_pass" not in hlo and np.isfinite(got["W_rec"]).all()


def _never_build():
    raise AssertionError("rtrl.native built the kernel where it must not")


def test_other_backend_never_builds_or_warns(monkeypatch, capsys, fresh_decision):
    """On a GPU or TPU default backend: no compiler run, no warning, no output, the XLA program."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(native, "build", _never_build)
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=8, n_out=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.available()
        for algo in _sparse_and_traces(cell, None):
            assert "credit_ring_pass" not in _grads_and_hlo(algo, cell)[1]
    with pytest.raises(ValueError, match="a CPU backend"):
        rtrl.algorithms.get("sparse_rtrl", cell, k=2, native_kernel=True)
    assert capsys.readouterr() == ("", "")


@requires_kernel
def test_first_build_prints_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CREDIT_CACHE", str(tmp_path))
    path = native.build()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert native.SOURCE.name in err[0] and "about" in err[0] and str(path) in err[0]
    assert native.build() == path and capsys.readouterr() == ("", "")  # cached: silent


GRAD_CASES = [
    ("vanilla", 16, "sparse_rtrl", {"k": 4, "mask": "ring_self"}),  # banded path
    ("vanilla", 18, "sparse_rtrl", {"k": 4, "mask": "ring_self"}),  # general path
    ("vanilla", 16, "sparse_rtrl", {"k": 4, "mask": "ring"}),  # the paper's ring: general path
    ("lstm", 16, "sparse_rtrl", {"k": 3, "mask": "ring_self"}),  # two leaves
]


@pytest.mark.parametrize("cell_name,n,name,opts", GRAD_CASES)
def test_grad_through_step(cell_name, n, name, opts):
    """jax.grad of a function of a step (through M in and out, the gradients and the parameters)
    with the default native_kernel equals jax.grad with native_kernel=False (the XLA program),
    float64. Where the kernel is available the primal program must still use it."""
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=n, n_out=2)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
    x, y = jnp.array([0.7, -0.4]), jnp.array([0.3, 0.1])

    def grads(native_kernel):
        algo = rtrl.algorithms.get(name, cell, **opts, native_kernel=native_kernel)
        state = algo.init(jax.random.key(1), params)
        state = jax.jit(algo.step)(params, state, x, y)[0]  # a non-zero M to go through

        def objective(params, M):
            s, out = algo.step(params, state._replace(M=M), 0.5 * x, y)
            grad_sq = sum(jnp.sum(g**2) for g in jax.tree.leaves(out.grads))
            return grad_sq + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(s.M))

        primal_hlo = jax.jit(objective).lower(params, state.M).as_text()
        return jax.jit(jax.grad(objective, argnums=(0, 1)))(params, state.M), primal_hlo

    (got, hlo), (want, _) = grads(None), grads(False)
    assert ("credit_ring_pass" in hlo) == native.available()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(want)) > 1e-2


# The deadlock checks, run in a fresh process (see the module docstring). Each mode checks its
# results against the same computation made with no concurrency, and prints "ok".
_CONCURRENT = textwrap.dedent(
    """
    import sys, threading
    import jax, jax.numpy as jnp, numpy as np
    import rtrl
    from rtrl import masks, native

    mode, n = sys.argv[1], 128
    cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=n, n_out=1)
    sparse = rtrl.algorithms.get("sparse_rtrl", cell, k=4, native_kernel=True)
    sparse2 = rtrl.algorithms.get("sparse_rtrl", cell, k=2, native_kernel=True)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (10, 1))
    ys = jnp.sin(xs)

    def grads(algo):
        return lambda p: rtrl.sequence_grads(algo, p, xs, ys, None)

    def in_threads(fn, args, want, repeats):
        errors = []

        def work():
            try:
                for _ in range(repeats):
                    got = jax.block_until_ready(fn(*args))
                    jax.tree.map(np.testing.assert_array_equal, got, want)
            except Exception as error:
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

    if mode == "threads":  # two Python threads, each running jitted kernel programs
        for algo in (sparse, sparse2):
            f = jax.jit(grads(algo))
            in_threads(f, (params,), f(params), 4)
        want = jax.jit(grads(rtrl.algorithms.get("sparse_rtrl", cell, k=4, native_kernel=False)))
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
            jax.jit(grads(sparse))(params), want(params),
        )
    elif mode == "calls":  # five independent kernel calls in one jitted program
        m, offsets = n + 2, masks.signed_ring_offsets(4)
        rng = np.random.default_rng(0)
        Ms = [jnp.asarray(rng.normal(size=(n, n, m)), jnp.float32) for _ in range(5)]
        A = jnp.asarray(0.3 * rng.normal(size=(n, 1, 4)), jnp.float32)
        B, E = jnp.full((n, 1, 1), 0.5), jnp.ones((n, 1, 1))
        v, c = jnp.ones(m), jnp.ones((n, 1))
        one = jax.jit(lambda M, A: native.ring_pass(M, A, B, E, v, c, offsets))
        want = [one(M, A * i) for i, M in enumerate(Ms)]
        five = jax.jit(
            lambda Ms: [native.ring_pass(M, A * i, B, E, v, c, offsets) for i, M in enumerate(Ms)]
        )
        for _ in range(10):
            jax.tree.map(np.testing.assert_array_equal, five(Ms), want)
    elif mode == "vmap":  # vmapped seeds (one batched call per step), from two threads
        seeds = jax.vmap(cell.init)(jax.random.split(jax.random.key(2), 3))
        f = jax.jit(jax.vmap(grads(sparse)))
        want = f(seeds)
        in_threads(f, (seeds,), want, 3)
        for s in range(3):
            one = jax.jit(grads(sparse))(jax.tree.map(lambda a: a[s], seeds))
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a[s], b, rtol=1e-5, atol=1e-6), want, one
            )
    print("ok")
    """
)
DEADLOCK_SECONDS = 90  # a passing run takes about 5 s on 2 cores


@requires_kernel
@pytest.mark.parametrize("mode", ["threads", "calls", "vmap"])
def test_concurrent_kernel_calls_never_deadlock(mode):
    """Concurrent calls on the helper path: each completes, and gives the results it gives alone."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CONCURRENT, mode],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLOCK_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{mode}: concurrent kernel calls did not finish in {DEADLOCK_SECONDS} s")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@requires_kernel
@pytest.mark.parametrize("cell_name", ["vanilla", "lstm"])
def test_paper_ring_takes_the_banded_kernel_with_a_zero_self_weight(cell_name):
    """The paper's ring (±1, ±2) goes to the kernel as offsets (0, 1, -1, 2, -2) with the self
    weight 0: the same gradients as the XLA program (float64), and the kernel is in the HLO."""
    cell = rtrl.cells.get(cell_name, n_in=2, n_hidden=16, n_out=2)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (12, 2), jnp.float64)
    ys = jax.random.normal(jax.random.key(2), (12, 2), jnp.float64)
    out = {}
    for use in (None, False):
        algo = rtrl.algorithms.get("sparse_rtrl", cell, k=4, mask="ring", native_kernel=use)
        fn = jax.jit(lambda p, algo=algo: rtrl.sequence_grads(algo, p, xs, ys, None))
        out[use] = fn(params)
        hlo = fn.lower(params).as_text()
        assert ("credit_ring_pass" in hlo) == (use is None)
    for name in out[None]:
        np.testing.assert_allclose(out[None][name], out[False][name], rtol=1e-12, atol=1e-14)
