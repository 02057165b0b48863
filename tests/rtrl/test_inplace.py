"""The blocked in-place pass (rtrl.inplace) against the whole-tensor update, float64.

At the study's sizes the pass runs for ring-sparse RTRL at n >= 128 (LSTM: n >= 64; traces keep
only M's diagonal blocks and take no pass); here BLOCK_BYTES is lowered so that it runs at n = 24
with blocks of 2, 3, 4 and 6 neurons, including the ring's wrap-around at both ends. The vanilla
cell is built with native_kernel=False: on a CPU it would otherwise take the `rtrl.native` kernel
(tested against this same XLA program in test_native.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtrl
from rtrl import inplace

N, N_IN, N_OUT, T = 24, 2, 3, 9  # n >= 4k, so ring k = 4 takes the gather path
CASES = [
    ("sparse_rtrl", {"k": 1, "mask": "ring_self"}),
    ("sparse_rtrl", {"k": 3, "mask": "ring_self"}),
    ("sparse_rtrl", {"k": 4, "mask": "ring_self"}),
]


def _get(name, cell, opts):
    return rtrl.algorithms.get(name, cell, **opts, native_kernel=False)


def _row_bytes(cell):
    return cell.n_rows * (N + N_IN + 1) * 4


@pytest.mark.parametrize("cell_name", ["vanilla", "lstm"])
def test_pass_equals_whole_tensor_update(cell_name, monkeypatch):
    cell = rtrl.cells.get(cell_name, n_in=N_IN, n_hidden=N, n_out=N_OUT)
    calls = {"n": 0}
    real = inplace.update_and_contract

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(inplace, "update_and_contract", counting)
    algos = {}
    for name, opts in CASES:
        monkeypatch.setattr(inplace, "BLOCK_BYTES", 1 << 40)  # one block: whole-tensor path
        algos[(name, str(opts), "whole")] = _get(name, cell, opts)
        for block in (2, 3, 4, 6):
            monkeypatch.setattr(inplace, "BLOCK_BYTES", block * _row_bytes(cell))
            algos[(name, str(opts), str(block))] = _get(name, cell, opts)

    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), cell.init(jax.random.key(5)))
    params = {**params, "b": jnp.asarray(0.3 * rng.normal(size=cell.n_rows))}
    xs = jnp.asarray(rng.normal(size=(T, N_IN)))
    ys = jnp.asarray(rng.normal(size=(T, N_OUT)))

    @jax.jit
    def all_grads(params, xs, ys):
        return {
            key: rtrl.sequence_grads(a, params, xs, ys, jax.random.key(0))
            for key, a in algos.items()
        }

    grads = all_grads(params, xs, ys)
    assert calls["n"] == len(CASES) * 4  # every blocked algorithm took the pass (one trace each)
    for name, opts in CASES:
        ref = grads[(name, str(opts), "whole")]
        for block in (2, 3, 4, 6):
            got = grads[(name, str(opts), str(block))]
            for leaf in ref:
                np.testing.assert_allclose(
                    got[leaf], ref[leaf], rtol=1e-12, atol=1e-14, err_msg=f"{name} {opts} B={block}"
                )
        assert float(jnp.max(jnp.abs(ref["W_rec"]))) > 1e-3  # a gradient that can disagree


def test_block_rows_choice():
    row = 264 * 1024
    assert inplace.block_rows(256, row, reach=2) == 8  # 8 rows ≈ 2 MiB ≤ 4 MiB < 16 rows
    assert inplace.block_rows(64, 17 * 1024, reach=2) is None  # M fits one block: no pass
    assert inplace.block_rows(12, 10**9, reach=2) is None  # no block small enough
    sixth = inplace.BLOCK_BYTES // 6
    assert inplace.block_rows(12, sixth, reach=2) == 6  # largest divisor of n that fits
    assert inplace.block_rows(12, sixth, reach=7) is None  # a block must reach the neighbours
