"""The CPU kernel (rtrl.native) against NumPy and against the XLA programs it replaces, float64.

The kernel has two paths: the banded one (ring offsets -lo .. hi, k <= 8, n a multiple of 4,
rows in blocks of 4; one or two carry leaves) and the general one (any offsets, any n; one leaf);
the cases below take both, with the ring's wrap-around at both ends, traces (no offsets), a decay,
vmapped batches, float32, and the LSTM's two leaves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import masks, native

pytestmark = pytest.mark.skipif(
    not native.available(), reason="no C++ compiler: rtrl.native falls back to XLA"
)


def _vanilla_sweep(M, w, d, v, coef, offsets, decay):
    """The kernel with the vanilla cell's coefficients: A = d w, B = γ, E = d (one leaf)."""
    n = M.shape[0]
    A = d[:, None, None] * w[:, None, :]
    B = jnp.full((n, 1, 1), decay, M.dtype)
    return native.ring_sweep(M, A, B, d[:, None, None], v, coef[:, None], offsets)


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
    got_M, got_g = jax.jit(jax.vmap(lambda *a: _vanilla_sweep(*a, offsets, decay)))(*arrays)
    for b in range(batch):
        want_M, want_g = _reference(*(a[b] for a in arrays), offsets, decay)
        np.testing.assert_allclose(got_M[b], want_M, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_g[b], want_g, rtol=1e-12, atol=1e-12)
    # float32: same program, rounding only
    f32 = [jnp.asarray(a[0], jnp.float32) for a in arrays]
    got_M, got_g = jax.jit(lambda *a: _vanilla_sweep(*a, offsets, decay))(*f32)
    assert got_M.dtype == jnp.float32
    want_M, want_g = _reference(*(a[0] for a in arrays), offsets, decay)
    np.testing.assert_allclose(got_M, want_M, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-4)


ALGO_CASES = [
    ("sparse_rtrl", {"k": 1}),
    ("sparse_rtrl", {"k": 3}),
    ("sparse_rtrl", {"k": 4}),
    ("traces", {"decay": 0.0}),
    ("traces", {"decay": 0.9}),
]


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
    assert hlo.count("credit_ring_sweep") >= 1
    assert len(copies) <= 1, copies  # at most the copy of the initial state into the loop


def test_bad_input():
    M = jnp.zeros((6, 6, 8))
    A, B, E = jnp.zeros((6, 1, 2)), jnp.zeros((6, 1, 1)), jnp.zeros((6, 1, 1))
    v, c = jnp.zeros(8), jnp.zeros((6, 1))
    with pytest.raises(ValueError, match="one or two leaves"):
        native.ring_sweep(jnp.zeros((6, 9, 8)), A, B, E, v, c, [0, 1])
    with pytest.raises(ValueError, match="do not match"):
        native.ring_sweep(M, jnp.zeros((6, 1, 3)), B, E, v, c, [0, 1])
    with pytest.raises(ValueError, match="do not match"):
        native.ring_sweep((M, M), A, B, E, v, c, [0, 1])  # two leaves need L = 2 coefficients
    with pytest.raises(ValueError, match="distinct"):
        native.ring_sweep(M, A, B, E, v, c, [1, 7])  # 7 = 1 mod 6
    with pytest.raises(ValueError, match="distinct"):
        native.ring_sweep(M, A, B, E, v, c, [0, 6])  # out of (-n, n)
    with pytest.raises(ValueError, match="float32 and float64"):
        native.ring_sweep(M.astype(jnp.int32), A, B, E, v, c, [0, 1])
    A2, B2, E2 = jnp.zeros((6, 2, 2)), jnp.zeros((6, 2, 2)), jnp.zeros((6, 2, 1))
    c2 = c.repeat(2, 1)
    with pytest.raises(ValueError, match="n a multiple of 4"):
        native.ring_sweep((M, M), A2, B2, E2, v, c2, [0, 1])
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
        rtrl.algorithms.get("traces", cell, native_kernel=True)
    monkeypatch.setenv("CREDIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(RuntimeError, match="install g\\+\\+ or set \\$CXX"):
        native.build()
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(RuntimeError, match="building ring_sweep.cc failed"):
        native.build()
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
