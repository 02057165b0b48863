"""Cells by capability, never by name: a cell whose h is not its first carry leaf gets exact
gradients and no kernel; a cell without the factorised form is refused with a clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import cells, native
from rtrl.cells.base import factorised_cell

N_IN, N, N_OUT, T = 2, 8, 1, 6


def _lstm_c_first(n_in, n, n_out):
    """The LSTM with its carry stored as (c, h): h is leaf 1. Any code that assumed 'not vanilla
    means (h, c)' would read c as h here."""

    def core(z, s_prev):
        c_prev, _ = s_prev
        i, f, g, o = jnp.split(z, 4)
        c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
        return c, jax.nn.sigmoid(o) * jnp.tanh(c)

    return factorised_cell(
        "lstm_c_first",
        n_in,
        n,
        n_out,
        gates=4,
        core=core,
        hidden_leaf=1,
        zero_carry=lambda dtype=jnp.float32: (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)),
        bias_init=lambda dtype: jnp.zeros((4 * n,), dtype).at[n : 2 * n].set(1.0),
        row_gain=jax.vmap(jax.grad(jax.nn.sigmoid)),
    )


def _problem(cell, seed=0):
    key = jax.random.key(seed)
    params = cell.init(jax.random.fold_in(key, 0), jnp.float64)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (T, N_IN), jnp.float64)
    ys = jax.random.normal(jax.random.fold_in(key, 2), (T, N_OUT), jnp.float64)
    return params, xs, ys


@pytest.mark.parametrize(
    "name,options", [("rtrl", {}), ("sparse_rtrl", {"k": N, "mask": "ring_self"})]
)
def test_exact_algorithms_follow_the_declared_hidden_leaf(name, options):
    cell = _lstm_c_first(N_IN, N, N_OUT)
    params, xs, ys = _problem(cell)
    got = rtrl.sequence_grads(rtrl.algorithms.get(name, cell, **options), params, xs, ys, None)
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    for leaf in want:
        np.testing.assert_allclose(got[leaf], want[leaf], rtol=1e-9, atol=1e-12, err_msg=leaf)


def test_traces_on_the_reordered_cell_equal_traces_on_the_lstm():
    """Same maths, other leaf order: traces (γ = 0.5) give the LSTM's gradients exactly."""
    reordered, lstm = _lstm_c_first(N_IN, N, N_OUT), cells.get("lstm", N_IN, N, N_OUT)
    params, xs, ys = _problem(lstm)
    a = rtrl.sequence_grads(rtrl.algorithms.get("traces", lstm, decay=0.5), params, xs, ys, None)
    b = rtrl.sequence_grads(
        rtrl.algorithms.get("traces", reordered, decay=0.5), params, xs, ys, None
    )
    for leaf in a:
        np.testing.assert_allclose(b[leaf], a[leaf], rtol=1e-12, atol=1e-14, err_msg=leaf)


def test_the_kernel_is_chosen_from_declared_structure():
    ring = (0, 1, -1, 2)
    assert native.supports(cells.get("vanilla", 1, 8, 1), (0, 3))
    assert native.supports(cells.get("lstm", 1, 8, 1), ring)
    assert not native.supports(cells.get("lstm", 1, 6, 1), ring)  # banded path: n % 4 == 0
    assert not native.supports(_lstm_c_first(1, 8, 1), ring)  # h is not leaf 0
    with pytest.raises(ValueError, match="native_kernel=True needs"):
        rtrl.algorithms.get("sparse_rtrl", _lstm_c_first(1, 8, 1), k=2, native_kernel=True)


def test_a_cell_without_the_factorised_form_is_refused_by_name_of_what_is_missing():
    cell = cells.get("vanilla", N_IN, N, N_OUT)._replace(
        name="opaque", capabilities=frozenset({cells.STEPWISE})
    )
    for name, options in [
        ("sparse_rtrl", {"k": 2}),
        ("traces", {}),
        ("snap1", {}),
        ("uoro", {}),
        ("kf_rtrl", {}),
    ]:
        with pytest.raises(ValueError, match=r"needs a cell with the capability 'factorised'"):
            rtrl.algorithms.get(name, cell, **options)
    params, xs, ys = _problem(cell)  # reverse mode and full rtrl need only the stepwise form
    want = jax.grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
    for algo in (rtrl.algorithms.get("tbptt", cell, w=T), rtrl.algorithms.get("rtrl", cell)):
        got = rtrl.sequence_grads(algo, params, xs, ys, None)
        np.testing.assert_allclose(got["W_rec"], want["W_rec"], rtol=1e-9)
    assert isinstance(
        rtrl.algorithms.get("rtrl", cell).init(None, params), rtrl.forward.JacobianState
    )


def test_masks_are_a_registry():
    assert set(rtrl.masks.MASKS) == {
        "ring",
        "ring_self",
        "random",
        "oracle",
        "anti_oracle",
        "dynamic",
        "fisher",
        "anti_fisher",
    }
    W = jnp.asarray([[0.1, -3.0, 2.0], [5.0, 0.0, -1.0]])
    np.testing.assert_array_equal(rtrl.masks.initial("oracle", None, W, 1), [[1], [0]])
    np.testing.assert_array_equal(rtrl.masks.initial("anti_oracle", None, W, 1), [[0], [1]])
    with pytest.raises(ValueError, match="unknown mask 'rng'"):
        rtrl.masks.check("rng", 1, 3)
