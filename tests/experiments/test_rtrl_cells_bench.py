"""The cell benchmark's measurement on tiny sizes: its memory numbers are the states' sizes."""

import jax

import rtrl
from experiments.benchmarks import rtrl_cells


def test_cell_benchmark_measures_states_and_renders():
    out = rtrl_cells.measure(["vanilla", "gru"], [4], steps=3, repeats=1, full_max_mb=1.0)
    rows = {(r["cell"], r["algorithm"]): r for r in out["rows"]}
    for name in ("vanilla", "gru"):
        cell = rtrl.cells.get(name, 1, 4, 1)
        carry = sum(leaf.size for leaf in jax.tree.leaves(cell.initial_carry()))
        full = rows[(name, "full rtrl")]
        if name == "gru":  # jacobian_rtrl: M [S, P] and the carry
            assert full["state_bytes"] == 4 * carry * (full["params"] + 1)
        assert rows[(name, "immediate")]["state_bytes"] < full["state_bytes"]
        assert rows[(name, "immediate")]["us_per_step"] > 0
    assert "footprint full / immediate" in rtrl_cells.table(out)
