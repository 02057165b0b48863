"""Per-step time and memory of the immediate derivative for every cell, beside full RTRL.

    python -m experiments.benchmarks.rtrl_cells [--sizes=64,256 --steps=200 --repeats=3
        --full_rtrl_max_mb=256 --json=PATH]

For each cell of `rtrl.cells` and each n: the immediate derivative (tbptt with w = 1, the one-step
gradient with s_{t−1} held constant) and full RTRL (the factorised engine where the cell has the
form, else `jacobian_rtrl` on every parameter). Each timed program is one `jax.jit` of a
`jax.lax.scan` of `algo.step` over `--steps` steps (n_in = n_out = 1, float32, per-step gradients
summed so nothing is dead code), best of `--repeats` calls after a warm-up, round-robin across
programs. Memory from `jax.jit(algo.step).lower(...).compile().memory_analysis()` (temporaries and
the footprint = arguments + outputs + temporaries) and the algorithm state's bytes; full RTRL is
compiled from shapes only and run only where its state is under `--full_rtrl_max_mb`.

Floor: the step's FLOPs (XLA's cost analysis of the compiled step) over this machine's measured
float32 matmul rate (a 1024³ product in the same run): the time a step would take at peak. The
ratio printed is µs/step measured over that floor; the memory ratio is full RTRL's footprint over
the immediate derivative's (the immediate-derivative paper: 12.6 MB vs 12.9 GB at n = 1024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import rtrl
from experiments import results
from experiments.benchmarks import timing

F32 = jnp.float32
BIG_MATMUL = 1024


def _algorithms(cell) -> dict:
    return {
        "immediate": rtrl.algorithms.get("tbptt", cell, w=1),
        "full rtrl": rtrl.algorithms.get("rtrl", cell),
    }


def _scanned(algo, cell, steps):
    def run(params, key):
        xs = jax.random.normal(key, (steps, cell.n_in), F32)
        ys = jax.random.normal(jax.random.fold_in(key, 1), (steps, cell.n_out), F32)
        state = algo.init(key, params)

        def body(carry, inputs):
            state, total = carry
            state, out = algo.step(params, state, *inputs)
            return (state, jax.tree.map(jnp.add, total, out.grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (_, total), _ = jax.lax.scan(body, (state, zeros), (xs, ys))
        return total

    return jax.jit(run)


def _step_memory(algo, cell) -> dict:
    """Compiled memory of one jitted step and the state's bytes, from shapes only."""
    params = jax.eval_shape(lambda: cell.init(jax.random.key(0), F32))
    state = jax.eval_shape(lambda p: algo.init(jax.random.key(1), p), params)
    x = jax.ShapeDtypeStruct((cell.n_in,), F32)
    y = jax.ShapeDtypeStruct((cell.n_out,), F32)
    compiled = jax.jit(algo.step).lower(params, state, x, y).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    footprint = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    return {
        "state_bytes": int(
            sum(np.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(state))
        ),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "footprint_bytes": int(footprint),
        "flops": float(cost.get("flops", float("nan"))),
        "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
    }


def _matmul_rate(repeats: int) -> float:
    a = jnp.ones((BIG_MATMUL, BIG_MATMUL), F32)
    f = jax.jit(lambda a: a @ a)
    best, _ = timing.round_robin({"mm": (f, (a,))}, repeats)["mm"]
    return 2 * BIG_MATMUL**3 / best


def measure(cells, sizes, steps, repeats, full_max_mb) -> dict:
    rate = _matmul_rate(repeats)
    rows = []
    for name in cells:
        for n in sizes:
            cell = rtrl.cells.get(name, 1, n, 1)
            params = cell.init(jax.random.key(0), F32)
            calls, mems = {}, {}
            for label, algo in _algorithms(cell).items():
                mems[label] = _step_memory(algo, cell)
                if label == "full rtrl" and mems[label]["state_bytes"] > full_max_mb * 2**20:
                    continue
                calls[label] = (_scanned(algo, cell, steps), (params, jax.random.key(2)))
            times = timing.round_robin(calls, repeats)
            for label, mem in mems.items():
                seconds = times.get(label, (float("nan"),))[0] / steps
                floor = mem["flops"] / rate
                rows.append(
                    {
                        "cell": name,
                        "n": n,
                        "algorithm": label,
                        "us_per_step": 1e6 * seconds,
                        "floor_us": 1e6 * floor,
                        **mem,
                    }
                )
    return {"matmul_flops_per_s": rate, "rows": rows}


def table(out) -> str:
    by = {(r["cell"], r["n"], r["algorithm"]): r for r in out["rows"]}
    lines = [
        f"Float32 matmul rate here: {out['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s (1024³).\n",
        results.markdown_table(
            [
                "cell",
                "n",
                "params",
                "immediate µs/step (× FLOP floor)",
                "full RTRL µs/step",
                "immediate state",
                "full RTRL state",
                "immediate footprint",
                "full RTRL footprint",
                "footprint full / immediate",
            ],
            [
                [
                    cell,
                    str(n),
                    str(imm["params"]),
                    f"{imm['us_per_step']:.1f} ({imm['us_per_step'] / imm['floor_us']:.0f}×)",
                    "not run"
                    if not np.isfinite(full["us_per_step"])
                    else f"{full['us_per_step']:.0f}",
                    _mb(imm["state_bytes"]),
                    _mb(full["state_bytes"]),
                    _mb(imm["footprint_bytes"]),
                    _mb(full["footprint_bytes"]),
                    f"{full['footprint_bytes'] / imm['footprint_bytes']:.0f}×",
                ]
                for (cell, n, algo), imm in by.items()
                if algo == "immediate"
                for full in [by[(cell, n, "full rtrl")]]
            ],
        ),
    ]
    return "\n".join(lines)


def _mb(b) -> str:
    return f"{b / 2**20:.3g} MiB"


def _main():
    """Flags are defined here, at call time, so importing this module beside another benchmark
    (tests do) never defines a flag twice."""
    sizes = flags.DEFINE_list("sizes", ["64", "256"], "Hidden sizes n.")
    steps = flags.DEFINE_integer("steps", 200, "Time steps per scanned call.")
    repeats = flags.DEFINE_integer("repeats", 3, "Timed calls per program after one warm-up call.")
    full_max_mb = flags.DEFINE_float(
        "full_rtrl_max_mb", 256.0, "Run full RTRL only where its state is below this many MiB."
    )
    cells = flags.DEFINE_list("cells", list(rtrl.cells.NAMES), "Cells to time.")
    json_path = flags.DEFINE_string("json", None, "Also write every number to this JSON file.")

    def main(argv):
        del argv
        sizes_n = [int(n) for n in sizes.value]
        out = measure(cells.value, sizes_n, steps.value, repeats.value, full_max_mb.value)
        print(table(out))
        if json_path.value:
            results.write_json(json_path.value, out)

    app.run(main)


if __name__ == "__main__":
    _main()
