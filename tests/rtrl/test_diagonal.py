"""traces and sparse_rtrl(k=0) store only M's diagonal blocks [n, G, m]: same gradients as the
full-M recursion, in O(n·G·m) memory and time per step (float64 unless stated).

Oracles: the full-M eligibility-trace recursion written here in JAX (`_full_m_traces`: M [n, R, m]
per carry leaf, the immediate term over all R rows, the core's jvp, + γ M_h; the step `traces` ran
before it stored only the diagonal blocks, rtrl.forward at commit b8a92fa), a plain NumPy
recursion for the vanilla RNN, and tbptt(w=1). On 4 cell/size cases × 40 steps the new step's
per-step gradients matched that commit's code (with and without the rtrl.native kernel) to
≤ 5e-16 relative; the tests below hold them to 1e-12.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import cells, forward

F64 = jnp.float64
T = 30
SAME = 1e-12  # two implementations of the same arithmetic, float64 (observed ≤ 5e-16)
DECAYS = (0.0, 0.5, 0.95)


def _problem(cell, seed, length=T, dtype=F64):
    """Params like cell.init with non-zero biases, inputs [length, n_in], targets."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), cell.init(jax.random.key(seed)))
    params["b"] = jnp.asarray(0.3 * rng.normal(size=cell.n_rows), dtype)
    xs = jnp.asarray(rng.normal(size=(length, cell.n_in)), dtype)
    ys = jnp.asarray(rng.normal(size=(length, cell.n_out)), dtype)
    return params, xs, ys


def _full_m_traces(cell, params, xs, ys, decay):
    """(per-step grads, each leaf [T, ...]; final M, leaves [n, R, m]) of eligibility traces on
    the whole M: ∂z_t/∂Θ = I_t (I_t[r, a, :] = δ_ra v_t, all R rows), M_t = core'(z_t, s_{t-1}) ·
    (I_t, M_{t-1}) + γ M_h,{t-1}, ∂L_t/∂Θ = Σ_i (∂L_t/∂h_{t,i}) M_h,t[i] (MSE)."""
    n, R = cell.n_hidden, cell.n_rows
    m = n + cell.n_in + 1
    theta = cells.theta(params)
    eye = jnp.arange(R)[:, None, None] == jnp.arange(R)[None, :, None]

    def body(state, inputs):
        carry, M = state
        x, y = inputs
        v = cells.inputs_vector(cell.hidden(carry), x)
        z = theta @ v
        new_carry = cell.core(z, carry)
        dz = jnp.where(eye, v[None, None, :], 0.0)  # I_t [R, R, m]
        new_M = cells.core_tangent(cell, z, carry, dz, M)
        new_M = cells.add_to_hidden(cell, new_M, decay * cell.hidden(M))
        h = cell.hidden(new_carry)
        dy = 2.0 * (cells.readout(params, h) - y) / y.shape[0]
        dh = params["W_out"].T @ dy
        g_theta = jnp.einsum("i,iam->am", dh, cell.hidden(new_M))
        grads = {**cells.split_theta(cell, g_theta), "W_out": jnp.outer(dy, h), "b_out": dy}
        return (new_carry, new_M), grads

    carry0 = cell.initial_carry(F64)
    M0 = jax.tree.map(lambda _: jnp.zeros((n, R, m), F64), carry0)
    (_, M), grads = jax.lax.scan(body, (carry0, M0), (xs, ys))
    return grads, M


def _per_step(algo, params, xs, ys):
    """(per-step grads, each leaf [T, ...]; final state) of `algo` over the sequence."""

    def body(state, inputs):
        state, out = algo.step(params, state, *inputs)
        return state, out.grads

    state, grads = jax.lax.scan(body, algo.init(None, params), (xs, ys))
    return grads, state


def _assert_close(got, want, what):
    for name in want:
        scale = float(np.max(np.abs(want[name])))
        np.testing.assert_allclose(
            got[name], want[name], rtol=SAME, atol=SAME * scale, err_msg=f"{what} {name}"
        )


def _diagonal_blocks(cell, M_full):
    """M[i, g n + i, :] of a full leaf [n, R, m] as [n, G, m], and the rest (diagonal zeroed)."""
    n, G = cell.n_hidden, cell.n_rows // cell.n_hidden
    rows = jnp.arange(G)[None, :] * n + jnp.arange(n)[:, None]  # [n, G]
    diag = M_full[jnp.arange(n)[:, None], rows]
    rest = M_full.at[jnp.arange(n)[:, None], rows].set(0.0)
    return diag, rest


# ----------------------------------------------------------------------------------------------
# exactness


ALGOS = [("traces", {"decay": d}) for d in DECAYS] + [("sparse_rtrl", {"k": 0})]


@pytest.mark.parametrize("cell_name,n", [("vanilla", 7), ("lstm", 5)])
def test_equals_full_m_recursion(cell_name, n):
    """Per-step gradients and the final sensitivities equal the full-M recursion's; the full M's
    entries outside the stored blocks stay exactly zero (which is why they need not be stored)."""
    cell = cells.get(cell_name, n_in=2, n_hidden=n, n_out=2)
    params, xs, ys = _problem(cell, n)

    @jax.jit
    def run(params, xs, ys):
        out = {}
        for name, opts in ALGOS:
            decay = opts.get("decay", 0.0)
            algo = rtrl.algorithms.get(name, cell, **opts)
            out[(name, decay)] = (
                _per_step(algo, params, xs, ys),
                _full_m_traces(cell, params, xs, ys, decay),
            )
        return out

    for (name, decay), ((grads, state), (ref_grads, ref_M)) in run(params, xs, ys).items():
        what = f"{cell_name} {name} γ={decay}"
        assert isinstance(state, forward.DiagonalState)
        _assert_close(grads, ref_grads, what)
        assert float(np.max(np.abs(ref_grads["W_rec"]))) > 1e-2  # a gradient that can disagree
        for got, full in zip(jax.tree.leaves(state.M), jax.tree.leaves(ref_M), strict=True):
            diag, rest = _diagonal_blocks(cell, full)
            assert got.shape == (n, cell.n_rows // n, n + 3)
            np.testing.assert_allclose(got, diag, rtol=SAME, atol=SAME * float(np.max(abs(diag))))
            assert float(jnp.max(jnp.abs(rest))) == 0.0, what


@pytest.mark.parametrize("decay", DECAYS)
def test_vanilla_equals_numpy_recursion(decay):
    """The eligibility trace in NumPy: e_t [n, m] (row i: ∂h_{t,i}/∂Θ[i, :]),

    h_t = tanh(W_rec h_{t-1} + W_in x_t + b),  v_t = [h_{t-1}; x_t; 1]
    e_t = γ e_{t-1} + (1 − h_t²) v_tᵀ,        ∂L_t/∂Θ[i, :] = (W_outᵀ ∂L_t/∂y_t)_i e_t[i]
    """
    n, n_in, n_out = 6, 2, 3
    cell = cells.get("vanilla", n_in=n_in, n_hidden=n, n_out=n_out)
    params, xs, ys = _problem(cell, 11)
    algo = rtrl.algorithms.get("traces", cell, decay=decay)
    grads, state = jax.jit(lambda p, x, y: _per_step(algo, p, x, y))(params, xs, ys)

    W_rec, W_in, b, W_out, b_out = (np.asarray(params[k]) for k in cells.RECURRENT + cells.READOUT)
    h, e = np.zeros(n), np.zeros((n, n + n_in + 1))
    for t, (x, y) in enumerate(zip(np.asarray(xs), np.asarray(ys), strict=True)):
        v = np.concatenate([h, x, [1.0]])
        h = np.tanh(W_rec @ h + W_in @ x + b)
        e = decay * e + (1.0 - h**2)[:, None] * v[None, :]
        dh = W_out.T @ (2.0 * (W_out @ h + b_out - y) / n_out)
        g = dh[:, None] * e
        want = {"W_rec": g[:, :n], "W_in": g[:, n : n + n_in], "b": g[:, -1]}
        _assert_close({k: grads[k][t] for k in want}, want, f"γ={decay} t={t}")
    np.testing.assert_allclose(state.M[:, 0, :], e, rtol=SAME, atol=SAME * np.max(np.abs(e)))


def test_decay0_equals_sparse_k0_equals_tbptt_w1():
    """The immediate derivative three ways (vanilla RNN): traces(γ = 0), sparse_rtrl(k = 0) and
    truncated BPTT with a window of one step. For the LSTM traces(0) == sparse_rtrl(0) still
    (one program); tbptt(w=1) differs there by design (test_algorithms)."""
    options = {"traces": {"decay": 0.0}, "sparse_rtrl": {"k": 0}, "tbptt": {"w": 1}}
    for cell_name in ("vanilla", "lstm"):
        cell = cells.get(cell_name, n_in=2, n_hidden=5, n_out=2)
        params, xs, ys = _problem(cell, 3)
        algos = {name: rtrl.algorithms.get(name, cell, **o) for name, o in options.items()}
        g = jax.jit(
            lambda p, x, y, algos=algos: {
                name: rtrl.sequence_grads(a, p, x, y, None) for name, a in algos.items()
            }
        )(params, xs, ys)
        for leaf in g["traces"]:
            np.testing.assert_array_equal(g["sparse_rtrl"][leaf], g["traces"][leaf])
        if cell_name == "vanilla":
            _assert_close(g["traces"], g["tbptt"], "traces(0) vs tbptt(w=1)")


@pytest.mark.parametrize("cell_name", ["vanilla", "lstm"])
def test_grad_through_a_step_equals_the_full_m_recursion(cell_name):
    """jax.grad of a function of several steps (through the gradients the steps return) is that
    of the full-M recursion: the diagonal step differentiates like the step it replaces."""
    cell = cells.get(cell_name, n_in=2, n_hidden=4, n_out=2)
    params, xs, ys = _problem(cell, 7, length=5)
    algo = rtrl.algorithms.get("traces", cell, decay=0.5)

    def objective(params, grads_of):
        return sum(jnp.sum(jnp.sin(g)) for g in jax.tree.leaves(grads_of(params)))

    got = jax.jit(jax.grad(lambda p: objective(p, lambda q: _per_step(algo, q, xs, ys)[0])))(params)
    want = jax.jit(
        jax.grad(lambda p: objective(p, lambda q: _full_m_traces(cell, q, xs, ys, 0.5)[0]))
    )(params)
    _assert_close(got, want, f"{cell_name} d/dθ")
    assert float(np.max(np.abs(want["W_rec"]))) > 1e-2


# ----------------------------------------------------------------------------------------------
# state, memory, the native_kernel option


def _compiled_step(name, opts, cell_name, n, dtype=jnp.float32):
    """(cell, state shapes, compiled step) for n_in = n_out = 1, from shapes (nothing allocated)."""
    cell = cells.get(cell_name, n_in=1, n_hidden=n, n_out=1)
    algo = rtrl.algorithms.get(name, cell, **opts)
    params = jax.eval_shape(lambda key: cell.init(key, dtype), jax.random.key(0))
    state = jax.eval_shape(lambda p: algo.init(jax.random.key(0), p), params)
    x = jax.ShapeDtypeStruct((1,), dtype)
    return cell, state, jax.jit(algo.step).lower(params, state, x, x).compile()


def _largest_array(hlo: str) -> int:
    """Elements of the largest array any instruction of an HLO module has."""
    dims = re.findall(r"\b(?:f|s|u|bf|pred)\d*\[([\d,]*)\]", hlo)
    return max(int(np.prod([int(d) for d in ds.split(",") if d])) for ds in dims)


def _nbytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,opts", [("traces", {"decay": 0.95}), ("sparse_rtrl", {"k": 0})])
def test_state_is_the_diagonal_blocks(name, opts):
    """At n = 1024 (vanilla, n_in = 1) the state is n·(n + n_in + 1) values of M plus the carry:
    4.2 MB in float32 (the full M would be 4.3 GB); the LSTM stores [n, 4, m] per leaf."""
    n = 1024
    cell = cells.get("vanilla", n_in=1, n_hidden=n, n_out=1)
    algo = rtrl.algorithms.get(name, cell, **opts)
    params = jax.eval_shape(lambda key: cell.init(key, jnp.float32), jax.random.key(0))
    state = jax.eval_shape(lambda p: algo.init(None, p), params)
    assert isinstance(state, forward.DiagonalState)
    assert state.M.shape == (n, 1, n + 2)
    assert _nbytes(state) == 4 * (n * (n + 2) + n)  # 4,206,592 B
    lstm = cells.get("lstm", n_in=1, n_hidden=8, n_out=1)
    algo = rtrl.algorithms.get(name, lstm, **opts)
    state = jax.eval_shape(lambda p: algo.init(None, p), lstm.init(jax.random.key(0)))
    assert [leaf.shape for leaf in jax.tree.leaves(state.M)] == [(8, 4, 10), (8, 4, 10)]


@pytest.mark.parametrize("cell_name", ["vanilla", "lstm"])
@pytest.mark.parametrize("name,opts", [("traces", {"decay": 0.95}), ("sparse_rtrl", {"k": 0})])
def test_step_never_forms_a_full_m_and_memory_grows_quadratically(cell_name, name, opts):
    """No array in the compiled step is as large as one full-M leaf [n, R, m] (the largest is
    [R, G, m], the core's tangents: G² n m), and the step's compiled footprint (arguments,
    outputs and temporaries, memory_analysis) grows ~4× from n to 2n (n·m), not ~8×."""
    footprint = {}
    for n in (64, 128):
        cell, state, compiled = _compiled_step(name, opts, cell_name, n)
        G, m = cell.n_rows // n, n + 2
        largest = _largest_array(compiled.as_text())
        assert largest <= G * G * n * m < n * cell.n_rows * m, (n, largest)
        memory = compiled.memory_analysis()
        assert memory.temp_size_in_bytes <= 4 * G * n * m * 4  # a few [n, G, m] float32 leaves
        footprint[n] = (
            memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        )
    assert 3.0 < footprint[128] / footprint[64] < 5.0, footprint


def test_native_kernel_option():
    """There is no kernel pass over a diagonal M: None and False compile the same program, True
    is refused with a message that says why (for any cell, on any backend)."""
    cell = cells.get("vanilla", n_in=1, n_hidden=8, n_out=1)
    for name, opts in [("traces", {"decay": 0.5}), ("sparse_rtrl", {"k": 0})]:
        with pytest.raises(ValueError, match="stores only M's diagonal blocks"):
            rtrl.algorithms.get(name, cell, **opts, native_kernel=True)
        params = cell.init(jax.random.key(0))
        x = jnp.ones((1,))
        texts = []
        for use in (None, False):
            algo = rtrl.algorithms.get(name, cell, **opts, native_kernel=use)
            lowered = jax.jit(algo.step).lower(params, algo.init(None, params), x, x)
            texts.append(lowered.as_text())
        assert texts[0] == texts[1], name
        assert "credit_ring_pass" not in texts[0]
