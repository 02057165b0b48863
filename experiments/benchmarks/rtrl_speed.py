"""Steps/s of the rtrl package's online algorithms on a vanilla RNN, against floors of this machine.

    python -m experiments.benchmarks.rtrl_speed [--sizes=32,64,128,256 --lstm_sizes=64,128
        --diagonal_sizes=256,512,1024 --steps=200 --repeats=3 --seeds=5 --k=4 --numpy_steps=50
        --numpy_seconds=20 --json=PATH]

Vanilla RNN, n_in = n_out = 1, float32, MSE on a random input/target stream. For each n the timed
program is one `jax.jit` of a `jax.lax.scan` of `algo.step` (forward + gradient, the per-step
gradients summed so nothing is dead code; no optimizer) over `--steps` steps, best of
`--repeats` calls after a warm-up call. Each algorithm is also run for `--seeds` seeds as one
`jax.vmap` of the same scanned function (one trace, checked with a counter in the traced
function); single and vmapped programs are timed round-robin so machine noise hits them alike.

Rows: rtrl; sparse_rtrl (k, ring mask) as shipped (impl auto: on a CPU with a C++ compiler the
rtrl.native kernel, one in-place pass over M), the same with native_kernel=False ("XLA program":
the in-place blocked pass of rtrl.inplace where M exceeds one 4 MiB block, n >= 128 here, else the
whole-tensor update), with impl="masked", and a naive gather written here (one [n, k, P] gather of
M's rows, then an einsum) to show why the shipped gather differs; traces (decay 0.95; it keeps only
M's diagonal blocks [n, G, m], so it has no kernel, no XLA-program twin and no M-touch floor);
uoro; "bptt", which is NOT the online tbptt
algorithm but the one-shot whole-sequence gradient jax.grad(rtrl.sequence_loss) over the same
stream (steps/s = steps / time); and a textbook NumPy full RTRL (batch 1) for scale. A second
table times the LSTM (`--lstm_sizes`): rtrl, sparse_rtrl as shipped and as the XLA program,
traces, with bptt, and checks that the kernel and the XLA program agree.

A third table (`--diagonal_sizes`, vanilla, one seed) is the memory of traces (decay 0.95) and
sparse_rtrl k=0, which store M's diagonal blocks only ([n, 1, m], n·m values), beside full
RTRL's M [n, n, m]: µs/step (timed like the rows above), the bytes of M and of the whole state
(jax.eval_shape of init), and the jitted step's compiled temporaries and footprint (arguments +
outputs + temporaries, `memory_analysis()` of `jax.jit(algo.step)` compiled from shapes alone).
Full RTRL is compiled the same way but never run or allocated (at n = 1024 its M is 4.3 GB);
its M column is the formula n·R·m·4. The verdicts check that traces' state is n·(n + n_in + 1)
float32 values plus the carry and that its footprint grows ~4× per doubling of n (< 6×; a
stored full M would grow 8×).

Floors, measured in the same run:
- J·M matmul: a scanned [n, n] @ [n, n·m] float32 product (m = n + n_in + 1), the shape of full
  RTRL's propagation term, whose FLOPs per step 2·n·n·(n·m) are full RTRL's leading cost; plus a
  1024³ matmul for the machine's peak.
- M touch: a scanned M ← γ M + M_imm over M [n, n, m] float32 with the immediate term made in
  registers from per-step vectors, i.e. reading and writing M once per step, the least any
  algorithm that keeps a dense M (sparse_rtrl) can do.

Targets (printed as verdicts): vmap(seeds) / (seeds × single) ≤ 1; rtrl ≥ 70 % of the J·M matmul
rate for n ≥ 64; sparse_rtrl k=4 ≤ 2× the M-touch floor and ≥ 4× faster than rtrl at n = 256.

Runtime (2 CPU cores): about 50 s for `--sizes=32,64 --steps=50 --repeats=1` (measured on a
loaded machine). The defaults are dominated by n = 256, where rtrl and the masked sparse_rtrl run
the full J·M product (8.6 GFLOP per step) for 200 steps, 5 seeds vmapped, warm-up + 3 repeats:
an estimated 15–25 min, not yet measured on an idle machine. The diagonal table at the default
256, 512, 1024 adds about 10 s.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import rtrl
from experiments import results
from experiments.benchmarks import timing
from rtrl import forward

_SIZES = flags.DEFINE_list("sizes", ["32", "64", "128", "256"], "Hidden sizes n.")
_LSTM_SIZES = flags.DEFINE_list(
    "lstm_sizes", ["64", "128"], "LSTM hidden sizes (rtrl, sparse_rtrl and traces rows only)."
)
_DIAGONAL_SIZES = flags.DEFINE_list(
    "diagonal_sizes",
    ["256", "512", "1024"],
    "Sizes of the memory table of traces / sparse_rtrl k=0 (diagonal M) beside full RTRL.",
)
_STEPS = flags.DEFINE_integer("steps", 200, "Time steps per scanned call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per program after one warm-up call.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds in the vmapped program.")
_K = flags.DEFINE_integer("k", 4, "sparse_rtrl paths kept per row.")
_DECAY = flags.DEFINE_float("decay", 0.95, "traces decay γ (also used by the M-touch floor).")
_NUMPY_STEPS = flags.DEFINE_integer("numpy_steps", 50, "Steps of the NumPy reference.")
_NUMPY_SECONDS = flags.DEFINE_float(
    "numpy_seconds", 20.0, "Stop the NumPy reference after this long (it reports what it ran)."
)
_JSON = flags.DEFINE_string("json", None, "Also write every number to this JSON file.")

N_IN = N_OUT = 1
F32 = jnp.float32  # every array here, also when a caller has enabled x64
BIG_MATMUL = 1024
RTRL = "rtrl"
SPARSE = "sparse_rtrl"
SPARSE_MASKED = "sparse_rtrl masked"
SPARSE_NAIVE = "sparse_rtrl naive gather"
SPARSE_XLA = "sparse_rtrl XLA program"
TRACES = "traces"
SPARSE_K0 = "sparse_rtrl k=0"
UORO = "uoro"
BPTT = "bptt (jax.grad, whole sequence)"
NUMPY = "numpy rtrl (textbook)"
MATMUL_FLOOR = "J·M matmul"
TOUCH_FLOOR = "M touch"
# Which floor each row is held against; rows not named here have none.
FLOOR_OF = {
    RTRL: MATMUL_FLOOR,
    SPARSE: TOUCH_FLOOR,
    SPARSE_MASKED: TOUCH_FLOOR,
    SPARSE_NAIVE: TOUCH_FLOOR,
    SPARSE_XLA: TOUCH_FLOOR,
}
# Relative tolerance of the float32 agreement checks over a few hundred steps.
CHECK_RTOL = 1e-3


def jm_flops_per_step(n: int, n_in: int = N_IN) -> int:
    """FLOPs of full RTRL's propagation product J·M = W_rec [n, n] @ M [n, n·m]: 2·n·n·(n·m)."""
    m = n + n_in + 1
    return 2 * n * n * (n * m)


def m_bytes(n: int, n_in: int = N_IN, itemsize: int = 4) -> int:
    """Size of the sensitivity tensor M [n, n, m] (m = n + n_in + 1)."""
    return n * n * (n + n_in + 1) * itemsize


def _naive_gather(W_rec, M_h, idx):
    """P[r] = Σ_s W_rec[r, idx[r, s]] M_h[idx[r, s]] as ONE gather M_h[idx] [R, k, P], then an
    einsum: the gathered copy is k times the size of M and is written then read back, and the
    einsum is a batch of R tiny (1 × k) @ (k × P) products, where the shipped gather sums k
    row-gathers in one fused loop over M."""
    w = jnp.take_along_axis(W_rec, idx, axis=1)  # [R, k]
    return jnp.einsum("rk,rkp->rp", w, M_h[idx])


def algorithms(cell, k: int, decay: float) -> dict:
    """{row label: Algorithm} of the online algorithms timed here (bptt is handled apart)."""
    algos = {
        RTRL: rtrl.algorithms.get("rtrl", cell),
        SPARSE: rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask="ring"),
        SPARSE_XLA: rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask="ring", native_kernel=False),
        SPARSE_MASKED: rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask="ring", impl="masked"),
        # The library's shared sensitivity step with only the propagation term swapped, so the
        # row differs from the shipped sparse_rtrl in that term alone.
        SPARSE_NAIVE: forward.sensitivity_algorithm(
            cell,
            "mse",
            SPARSE_NAIVE,
            _naive_gather,
            forward.gathered_adjoint,
            select=True,
            k=k,
            mask="ring",
        ),
        TRACES: rtrl.algorithms.get("traces", cell, decay=decay),
        UORO: rtrl.algorithms.get("uoro", cell),
    }
    return algos


def lstm_algorithms(cell, k: int, decay: float) -> dict:
    """The LSTM rows: rtrl, sparse_rtrl as shipped and as the XLA program, traces."""
    return {
        RTRL: rtrl.algorithms.get("rtrl", cell),
        SPARSE: rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask="ring"),
        SPARSE_XLA: rtrl.algorithms.get("sparse_rtrl", cell, k=k, mask="ring", native_kernel=False),
        TRACES: rtrl.algorithms.get("traces", cell, decay=decay),
    }


def scanned_grads(algo, compilations: dict, label: str):
    """run(params, state, xs [T, n_in], ys [T, n_out]) -> (Σ_t grads_t, Σ_t L_t), one scan of
    algo.step. Each trace adds one to compilations[label]."""

    def run(params, state, xs, ys):
        compilations[label] = compilations.get(label, 0) + 1
        total, losses = rtrl.algorithms.scan_grads(algo, params, state, xs, ys)
        return total, jnp.sum(losses)

    return run


def whole_sequence_bptt(cell, compilations: dict, label: str):
    """run(params, xs, ys) -> (∂(Σ_t L_t)/∂θ, Σ_t L_t) by jax.grad of rtrl.sequence_loss."""

    def run(params, xs, ys):
        compilations[label] = compilations.get(label, 0) + 1
        loss, grads = jax.value_and_grad(lambda p: rtrl.sequence_loss(cell, p, xs, ys))(params)
        return grads, loss

    return run


def problem(cell, seeds: int, steps: int):
    """Per-seed params, state keys and streams, each with a leading [seeds] axis."""
    keys = jax.random.split(jax.random.key(0), seeds)
    parts = jax.vmap(lambda key: jax.random.split(key, 4))(keys)
    params = jax.vmap(cell.init)(parts[:, 0])
    xs = jax.vmap(lambda key: jax.random.normal(key, (steps, N_IN), F32))(parts[:, 1])
    ys = jax.vmap(lambda key: jax.random.normal(key, (steps, N_OUT), F32))(parts[:, 2])
    return params, parts[:, 3], xs, ys


def _first(tree):
    return jax.tree.map(lambda leaf: leaf[0], tree)


def _rel_err(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    num = sum(float(jnp.sum(jnp.square(x - y))) for x, y in pairs)
    den = sum(float(jnp.sum(jnp.square(y))) for y in jax.tree.leaves(b))
    return (num / max(den, 1e-30)) ** 0.5


ROWS_OF_CELL = {"vanilla": algorithms, "lstm": lstm_algorithms}  # the rows each table times


def time_algorithms(
    n: int, steps: int, seeds: int, k: int, decay: float, repeats: int, cell_name="vanilla"
):
    """Rows {label: {...}} for every algorithm at size n, grad totals of seed 0, trace counts."""
    cell = rtrl.cells.get(cell_name, n_in=N_IN, n_hidden=n, n_out=N_OUT)
    params, state_keys, xs, ys = problem(cell, seeds, steps)
    compilations: dict = {}
    rows, grads = {}, {}
    for label, algo in ROWS_OF_CELL[cell_name](cell, k, decay).items():
        states = jax.vmap(algo.init)(state_keys, params)
        single = jax.jit(scanned_grads(algo, compilations, f"{label} / single"))
        batched = jax.jit(jax.vmap(scanned_grads(algo, compilations, f"{label} / vmap")))
        one = (_first(params), _first(states), xs[0], ys[0])
        timed = timing.round_robin(
            {"single": (single, one), "vmap": (batched, (params, states, xs, ys))}, repeats
        )
        rows[label] = _row(timed, steps, seeds)
        grads[label] = single(*one)[0]
        print(f"  {cell_name} n={n} {label}: {rows[label]['us_per_step']:.1f} µs/step", flush=True)
    single = jax.jit(whole_sequence_bptt(cell, compilations, f"{BPTT} / single"))
    batched = jax.jit(jax.vmap(whole_sequence_bptt(cell, compilations, f"{BPTT} / vmap")))
    one = (_first(params), xs[0], ys[0])
    calls = {"single": (single, one), "vmap": (batched, (params, xs, ys))}
    timed = timing.round_robin(calls, repeats)
    rows[BPTT] = _row(timed, steps, seeds)
    grads[BPTT] = single(*one)[0]
    print(f"  {cell_name} n={n} {BPTT}: {rows[BPTT]['us_per_step']:.1f} µs/step", flush=True)
    retraced = {label: count for label, count in compilations.items() if count != 1}
    if retraced:
        raise RuntimeError(f"n={n}: jitted programs traced more than once: {retraced}")
    return rows, grads, compilations, (cell, _first(params), xs[0], ys[0])


def _row(timed: dict, steps: int, seeds: int) -> dict:
    (single, single_median), (vmap, vmap_median) = timed["single"], timed["vmap"]
    return {
        "seconds_single": single,
        "seconds_single_median": single_median,
        "seconds_vmap": vmap,
        "seconds_vmap_median": vmap_median,
        "steps_per_s_single": steps / single,
        "steps_per_s_per_seed_vmap": steps / vmap,
        "vmap_ratio": vmap / (seeds * single),
        "us_per_step": single / steps * 1e6,
    }


def matmul_floor(n: int, steps: int, repeats: int, n_in: int = N_IN) -> float:
    """Seconds per step of M ← Q M, Q [n, n] orthogonal (so M neither grows nor decays into
    denormals), M [n, n·m] float32, scanned over `steps` like the algorithms."""
    m = n + n_in + 1
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (n, n), F32))
    M = jax.random.normal(jax.random.key(2), (n, n * m), F32)

    @jax.jit
    def run(q, M):
        return jax.lax.scan(lambda M, _: (q @ M, None), M, None, length=steps)[0]

    return timing.round_robin({"matmul": (run, (q, M))}, repeats)["matmul"][0] / steps


def m_touch_floor(n: int, steps: int, decay: float, repeats: int, n_in: int = N_IN) -> float:
    """Seconds per step of M ← γ M + M_imm over M [n, n, m] float32, M_imm[r, a, :] =
    δ_ra d_r v built in registers from per-step d [n], v [m]: M is read and written once."""
    m = n + n_in + 1
    M = jnp.zeros((n, n, m), jnp.float32)
    ds = jax.random.normal(jax.random.key(3), (steps, n), F32)
    vs = jax.random.normal(jax.random.key(4), (steps, m), F32)

    @jax.jit
    def run(M, ds, vs):
        diagonal = jnp.arange(n)[:, None] == jnp.arange(n)[None, :]

        def body(M, inputs):
            d, v = inputs
            immediate = jnp.where(diagonal[:, :, None], d[:, None, None] * v[None, None, :], 0.0)
            return decay * M + immediate, None

        return jax.lax.scan(body, M, (ds, vs))[0]

    return timing.round_robin({"touch": (run, (M, ds, vs))}, repeats)["touch"][0] / steps


def peak_matmul_gflops(size: int = BIG_MATMUL) -> float:
    a = jax.random.normal(jax.random.key(5), (size, size), F32)
    b = jax.random.normal(jax.random.key(6), (size, size), F32)
    return 2 * size**3 / timing.seconds_per_call(jax.jit(jnp.matmul), a, b) / 1e9


def numpy_rtrl(cell, params, xs, ys, max_steps: int, max_seconds: float):
    """Textbook full RTRL in NumPy, batch 1, float32:

        h_t = tanh(W_rec h_{t-1} + W_in x_t + b),  v_t = [h_{t-1}; x_t; 1],  D_t = 1 − h_t²
        M_t = D_t[:, None, None] · (W_rec @ M_{t-1} + I_t),  I_t[r, a, :] = δ_ra v_t
        ∂L_t/∂Θ = Σ_i (∂L_t/∂h_{t,i}) M_t[i],  ∂L_t/∂h_t = W_outᵀ 2 (y_t − y*_t) / n_out

    Runs up to max_steps steps, stopping early past max_seconds. Returns (steps/s, steps run,
    Σ_t ∂L_t/∂Θ [n, m])."""
    W_rec, W_in, b, W_out, b_out = (
        np.asarray(params[name], np.float32) for name in ("W_rec", "W_in", "b", "W_out", "b_out")
    )
    xs, ys = np.asarray(xs, np.float32), np.asarray(ys, np.float32)
    n = cell.n_hidden
    m = n + cell.n_in + 1
    rows = np.arange(n)
    h = np.zeros(n, np.float32)
    M = np.zeros((n, n, m), np.float32)
    total = np.zeros((n, m), np.float32)
    start = time.perf_counter()
    done = 0
    for x, y_star in zip(xs[:max_steps], ys[:max_steps], strict=True):
        v = np.concatenate([h, x, np.ones(1, np.float32)])
        h = np.tanh(W_rec @ h + W_in @ x + b)
        P = (W_rec @ M.reshape(n, -1)).reshape(n, n, m)
        P[rows, rows, :] += v
        M = (1.0 - h * h)[:, None, None] * P
        dh = W_out.T @ (2.0 * (W_out @ h + b_out - y_star) / y_star.shape[0])
        total += (dh @ M.reshape(n, -1)).reshape(n, m)
        done += 1
        if time.perf_counter() - start > max_seconds:
            break
    return done / (time.perf_counter() - start), done, total


def floors(n: int, steps: int, decay: float, repeats: int) -> dict:
    matmul = matmul_floor(n, steps, repeats)
    touch = m_touch_floor(n, steps, decay, repeats)
    touch_bytes = 2 * m_bytes(n)
    return {
        "jm_flops_per_step": jm_flops_per_step(n),
        "matmul_seconds_per_step": matmul,
        "matmul_gflops": jm_flops_per_step(n) / matmul / 1e9,
        "m_bytes": m_bytes(n),
        "touch_bytes_per_step": touch_bytes,
        "touch_seconds_per_step": touch,
        "touch_gb_per_s": touch_bytes / touch / 1e9,
        "streaming_gb_per_s": timing.streaming_bandwidth(m_bytes(n), steps=16) / 1e9,
    }


def measure_size(n: int, cfg: dict) -> dict:
    """Everything measured at size n: floors, algorithm rows, NumPy row, checks, compilations."""
    floor = floors(n, cfg["steps"], cfg["decay"], cfg["repeats"])
    rows, grads, compilations, (cell, params, xs, ys) = time_algorithms(
        n, cfg["steps"], cfg["seeds"], cfg["k"], cfg["decay"], cfg["repeats"]
    )
    rate, done, np_total = numpy_rtrl(
        cell, params, xs, ys, cfg["numpy_steps"], cfg["numpy_seconds"]
    )
    rows[NUMPY] = {"steps_per_s_single": rate, "us_per_step": 1e6 / rate, "steps_run": done}
    full = rtrl.algorithms.get("rtrl", cell)
    prefix = jax.jit(lambda p, x, y: rtrl.sequence_grads(full, p, x, y, jax.random.key(0)))
    jax_theta = rtrl.cells.theta(prefix(params, xs[:done], ys[:done]))  # [n, m] like np_total
    checks = {
        "rtrl vs bptt": _rel_err(grads[RTRL], grads[BPTT]),
        "sparse gather vs masked": _rel_err(grads[SPARSE], grads[SPARSE_MASKED]),
        "sparse naive vs shipped": _rel_err(grads[SPARSE_NAIVE], grads[SPARSE]),
        "sparse XLA program vs shipped": _rel_err(grads[SPARSE_XLA], grads[SPARSE]),
        f"numpy vs jax rtrl ({done} steps, Θ grads)": _rel_err(np_total, jax_theta),
    }
    for label, row in rows.items():
        kind = FLOOR_OF.get(label)
        if kind == MATMUL_FLOOR:
            row["floor_ratio"] = row["us_per_step"] * 1e-6 / floor["matmul_seconds_per_step"]
        elif kind == TOUCH_FLOOR:
            row["floor_ratio"] = row["us_per_step"] * 1e-6 / floor["touch_seconds_per_step"]
        row["floor"] = kind
        row["speedup_vs_rtrl"] = rows[RTRL]["us_per_step"] / row["us_per_step"]
    floor["rtrl_gflops"] = floor["jm_flops_per_step"] / (rows[RTRL]["us_per_step"] * 1e-6) / 1e9
    floor["rtrl_fraction_of_matmul"] = floor["rtrl_gflops"] / floor["matmul_gflops"]
    return {"floors": floor, "rows": rows, "checks": checks, "compilations": compilations}


def measure_lstm(n: int, cfg: dict) -> dict:
    """LSTM rows at size n (no floors: the issue's floors are for the vanilla cell) and the
    agreement of the kernel with the XLA program."""
    rows, grads, compilations, _ = time_algorithms(
        n, cfg["steps"], cfg["seeds"], cfg["k"], cfg["decay"], cfg["repeats"], "lstm"
    )
    for row in rows.values():
        row["speedup_vs_rtrl"] = rows[RTRL]["us_per_step"] / row["us_per_step"]
    checks = {
        "rtrl vs bptt": _rel_err(grads[RTRL], grads[BPTT]),
        "sparse XLA program vs shipped": _rel_err(grads[SPARSE_XLA], grads[SPARSE]),
    }
    return {"rows": rows, "checks": checks, "compilations": compilations}


def _nbytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def step_memory(algo, cell) -> dict:
    """Bytes of algo's state (M alone, and whole) and of its jitted step, compiled from shapes
    (jax.eval_shape, nothing allocated or run): temporaries, and the footprint arguments +
    outputs + temporaries (`memory_analysis()`; None where the backend does not report it)."""
    params = jax.eval_shape(lambda key: cell.init(key, F32), jax.random.key(0))
    state = jax.eval_shape(lambda p: algo.init(jax.random.key(0), p), params)
    x, y = jax.ShapeDtypeStruct((cell.n_in,), F32), jax.ShapeDtypeStruct((cell.n_out,), F32)
    memory = jax.jit(algo.step).lower(params, state, x, y).compile().memory_analysis()
    out = {"m_bytes": _nbytes(state.M), "state_bytes": _nbytes(state)}
    if memory is None:
        return {**out, "temp_bytes": None, "footprint_bytes": None}
    io = memory.argument_size_in_bytes + memory.output_size_in_bytes
    return {
        **out,
        "temp_bytes": memory.temp_size_in_bytes,
        "footprint_bytes": io + memory.temp_size_in_bytes,
    }


def measure_diagonal(n: int, cfg: dict) -> dict:
    """Vanilla, one seed: traces and sparse_rtrl k=0 (diagonal M) timed and sized, and full RTRL
    sized only (its step compiled from shapes; M from the formula n·R·m·4, `m_bytes`)."""
    cell = rtrl.cells.get("vanilla", n_in=N_IN, n_hidden=n, n_out=N_OUT)
    params, state_keys, xs, ys = problem(cell, 1, cfg["steps"])
    params = _first(params)
    algos = {
        TRACES: rtrl.algorithms.get("traces", cell, decay=cfg["decay"]),
        SPARSE_K0: rtrl.algorithms.get("sparse_rtrl", cell, k=0),
    }
    compilations: dict = {}
    calls = {
        label: (
            jax.jit(scanned_grads(algo, compilations, label)),
            (params, algo.init(state_keys[0], params), xs[0], ys[0]),
        )
        for label, algo in algos.items()
    }
    timed = timing.round_robin(calls, cfg["repeats"])
    rows = {
        label: {"us_per_step": timed[label][0] / cfg["steps"] * 1e6, **step_memory(algo, cell)}
        for label, algo in algos.items()
    }
    rows[RTRL] = {**step_memory(rtrl.algorithms.get("rtrl", cell), cell), "m_bytes": m_bytes(n)}
    retraced = {label: count for label, count in compilations.items() if count != 1}
    if retraced:
        raise RuntimeError(f"n={n}: jitted programs traced more than once: {retraced}")
    for label, row in rows.items():
        us = row.get("us_per_step")
        print(
            f"  diagonal n={n} {label}: "
            + (f"{us:.1f} µs/step, " if us else "")
            + f"state {row['state_bytes']:,} B, temp {row['temp_bytes']} B",
            flush=True,
        )
    return {"rows": rows, "compilations": compilations}


def _size(n_bytes) -> str:
    """Decimal units, 3 significant digits (4,206,592 -> 4.21 MB)."""
    if n_bytes is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes} B"


def diagonal_table(diagonal: dict) -> str:
    headers = ["n", "algorithm", "µs/step", "M", "state", "step temp", "step footprint"]
    table = [
        [
            n,
            label if label != RTRL else "rtrl (full M; compiled, not run)",
            _fmt(row.get("us_per_step"), ",.1f"),
            _size(row["m_bytes"]),
            _size(row["state_bytes"]),
            _size(row["temp_bytes"]),
            _size(row["footprint_bytes"]),
        ]
        for n, measured in diagonal.items()
        for label, row in measured["rows"].items()
    ]
    return results.markdown_table(headers, table)


def diagonal_verdicts(diagonal: dict) -> list[str]:
    """traces' state is n·(n + n_in + 1) + n float32 values at the largest n, and the diagonal
    steps' compiled memory grows like n² between the two largest sizes (a full M: n³)."""
    sizes = sorted(diagonal)
    n = sizes[-1]
    row, full = diagonal[n]["rows"][TRACES], diagonal[n]["rows"][RTRL]
    want = 4 * (n * (n + N_IN + 1) + n)
    lines = [
        f"traces state at n={n} is n·(n + n_in + 1) + n float32 values ({_size(want)}): "
        + ("met" if row["state_bytes"] == want else "NOT met")
        + f" ({_size(row['state_bytes'])}; full RTRL's M {_size(full['m_bytes'])})"
    ]
    if len(sizes) < 2:
        return lines
    a, b = sizes[-2], sizes[-1]
    square, cube = (b / a) ** 2, (b / a) ** 3
    growth = {}
    for label in (TRACES, SPARSE_K0):
        small, large = diagonal[a]["rows"][label], diagonal[b]["rows"][label]
        if None in (small["footprint_bytes"], large["footprint_bytes"]):
            return [*lines, "diagonal step memory growth: not measured (no memory_analysis)"]
        growth[label] = tuple(
            large[key] / max(small[key], 1) for key in ("footprint_bytes", "temp_bytes")
        )
    ok = all(max(g) < 1.5 * square for g in growth.values())
    shown = ", ".join(f"{lbl} footprint {f:.2f}×, temp {t:.2f}×" for lbl, (f, t) in growth.items())
    lines.append(
        f"diagonal step memory grows ≤ ~{square:g}× from n={a} to n={b} (< {1.5 * square:g}×; a"
        f" full M grows {cube:g}×): " + ("met" if ok else "NOT met") + f" ({shown})"
    )
    return lines


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def algorithm_table(by_size: dict, seeds: int) -> str:
    headers = [
        "n",
        "algorithm",
        "steps/s (1 seed)",
        f"steps/s per seed ({seeds} vmapped)",
        f"vmap {seeds} / ({seeds} × 1)",
        "µs/step",
        "× floor",
        "speedup vs rtrl",
    ]
    table = []
    for n, measured in by_size.items():
        for label, row in measured["rows"].items():
            floor = row.get("floor")
            table.append(
                [
                    n,
                    label,
                    f"{row['steps_per_s_single']:,.0f}",
                    _fmt(row.get("steps_per_s_per_seed_vmap"), ",.0f"),
                    _fmt(row.get("vmap_ratio"), ".2f"),
                    f"{row['us_per_step']:,.1f}",
                    "—" if floor is None else f"{row['floor_ratio']:.2f} ({floor})",
                    f"{row['speedup_vs_rtrl']:.2f}",
                ]
            )
    return results.markdown_table(headers, table)


def floors_table(by_size: dict, peak: float) -> str:
    headers = [
        "n",
        "J·M FLOPs/step",
        "J·M matmul µs/step",
        "matmul GFLOP/s",
        "rtrl GFLOP/s (% of matmul, % of peak)",
        "M MiB",
        "M-touch bytes/step",
        "M-touch µs/step",
        "M-touch GB/s",
        "stream GB/s (M-sized)",
    ]
    table = []
    for n, measured in by_size.items():
        f = measured["floors"]
        table.append(
            [
                n,
                f"{f['jm_flops_per_step']:.3g}",
                f"{f['matmul_seconds_per_step'] * 1e6:,.1f}",
                f"{f['matmul_gflops']:.1f}",
                f"{f['rtrl_gflops']:.1f} ({100 * f['rtrl_fraction_of_matmul']:.0f} %, "
                f"{100 * f['rtrl_gflops'] / peak:.0f} %)",
                f"{f['m_bytes'] / 2**20:.2f}",
                f"{f['touch_bytes_per_step'] / 2**20:.2f} MiB",
                f"{f['touch_seconds_per_step'] * 1e6:,.1f}",
                f"{f['touch_gb_per_s']:.1f}",
                f"{f['streaming_gb_per_s']:.1f}",
            ]
        )
    return results.markdown_table(headers, table)


def checks_table(by_size: dict) -> str:
    table = [
        [n, name, f"{err:.1e}", "ok" if err <= CHECK_RTOL else f"MISMATCH (> {CHECK_RTOL:g})"]
        for n, measured in by_size.items()
        for name, err in measured["checks"].items()
    ]
    return results.markdown_table(["n", "gradient sums agree", "relative error", ""], table)


def verdicts(by_size: dict, seeds: int, k: int) -> list[str]:
    """One line per target: met / not met, with the numbers behind it."""
    sizes = list(by_size)
    lines = []
    ratios = {
        (n, label): row["vmap_ratio"]
        for n, measured in by_size.items()
        for label, row in measured["rows"].items()
        if "vmap_ratio" in row
    }
    over = {key: r for key, r in ratios.items() if r > 1.0}
    worst = max(ratios, key=ratios.get)
    lines.append(
        f"vmap {seeds} seeds ≤ {seeds} × 1 seed: "
        + (
            f"met for all {len(ratios)} rows (worst {ratios[worst]:.2f}, n={worst[0]} {worst[1]})"
            if not over
            else f"NOT met for {len(over)}/{len(ratios)} rows: "
            + ", ".join(f"n={n} {label} {r:.2f}" for (n, label), r in sorted(over.items()))
        )
    )
    fractions = {n: by_size[n]["floors"]["rtrl_fraction_of_matmul"] for n in sizes if n >= 64}
    if fractions:
        short = {n: f for n, f in fractions.items() if f < 0.7}
        lines.append(
            "rtrl ≥ 70 % of the J·M matmul rate (n ≥ 64): "
            + ("met" if not short else "NOT met")
            + " ("
            + ", ".join(f"n={n} {100 * f:.0f} %" for n, f in fractions.items())
            + ")"
        )
    else:
        lines.append("rtrl ≥ 70 % of the J·M matmul rate (n ≥ 64): not measured (no n ≥ 64)")
    largest = 256 if 256 in by_size else max(sizes)
    sparse = by_size[largest]["rows"][SPARSE]
    where = f"n={largest}" + ("" if largest == 256 else " (n=256 not measured; largest n shown)")
    lines.append(
        f"sparse_rtrl k={k} ≤ 2 × M-touch floor at {where}: "
        + ("met" if sparse["floor_ratio"] <= 2 else "NOT met")
        + f" ({sparse['floor_ratio']:.2f}×)"
    )
    lines.append(
        f"sparse_rtrl k={k} ≥ 4 × faster than rtrl at {where}: "
        + ("met" if sparse["speedup_vs_rtrl"] >= 4 else "NOT met")
        + f" ({sparse['speedup_vs_rtrl']:.2f}×)"
    )
    counts = {
        f"n={n} {label}": c
        for n, measured in by_size.items()
        for label, c in measured["compilations"].items()
    }
    retraced = {label: c for label, c in counts.items() if c != 1}
    lines.append(
        "one trace per jitted program: "
        + (
            f"met ({len(counts)} programs)"
            if not retraced
            else "NOT met: " + ", ".join(f"{label} traced {c}×" for label, c in retraced.items())
        )
    )
    errors = [err for measured in by_size.values() for err in measured["checks"].values()]
    lines.append(
        f"gradient sums agree (rel. err ≤ {CHECK_RTOL:g}): "
        + ("met" if max(errors) <= CHECK_RTOL else "NOT met")
        + f" (worst {max(errors):.1e})"
    )
    return lines


def run(cfg: dict) -> tuple[str, dict]:
    """(report text, every number) for cfg {sizes, lstm_sizes, diagonal_sizes, steps, repeats,
    seeds, k, decay, numpy_*}."""
    peak = peak_matmul_gflops()
    print(f"  {BIG_MATMUL}³ float32 matmul: {peak:.1f} GFLOP/s", flush=True)
    by_size = {n: measure_size(n, cfg) for n in cfg["sizes"]}
    lstm = {n: measure_lstm(n, cfg) for n in cfg.get("lstm_sizes", [])}
    diagonal = {n: measure_diagonal(n, cfg) for n in cfg.get("diagonal_sizes", [])}
    lines = verdicts(by_size, cfg["seeds"], cfg["k"])
    if lstm:
        errors = [err for measured in lstm.values() for err in measured["checks"].values()]
        counts = [c for measured in lstm.values() for c in measured["compilations"].values()]
        lines.append(
            f"LSTM: gradient sums agree (≤ {CHECK_RTOL:g}): "
            + ("met" if max(errors) <= CHECK_RTOL else "NOT met")
            + f" (worst {max(errors):.1e}); one trace per program: "
            + ("met" if set(counts) == {1} else "NOT met")
            + f" ({len(counts)} programs)"
        )
    lstm_text = [
        f"LSTM (n_in = n_out = 1, k = {cfg['k']} ring, traces decay {cfg['decay']:g}; no floors):",
        "",
        algorithm_table(lstm, cfg["seeds"]),
        checks_table(lstm),
    ]
    if diagonal:
        lines += diagonal_verdicts(diagonal)
    diagonal_text = [
        f"Diagonal M: traces (decay {cfg['decay']:g}) and sparse_rtrl k=0 store M's diagonal"
        " blocks [n, 1, m]; full RTRL stores M [n, n, m] (vanilla, n_in = n_out = 1, float32, one"
        " seed). M: bytes of M (full RTRL: n·R·m·4); state: the whole algorithm state; step temp /"
        " footprint: memory_analysis() of jax.jit(algo.step) compiled from shapes (footprint ="
        " arguments + outputs + temporaries).",
        "",
        diagonal_table(diagonal),
    ]
    device = jax.devices()[0]
    text = "\n".join(
        [
            f"rtrl online algorithms, vanilla RNN n_in=n_out=1, float32, {cfg['steps']} steps per "
            f"scanned call, best of {cfg['repeats']}, {cfg['seeds']} seeds vmapped; "
            f"{device.platform} ({device.device_kind}), jax {jax.__version__}. "
            f"× floor: time per step over the J·M matmul's (rtrl) or the M touch's (sparse). "
            f"bptt: jax.grad of the whole-sequence loss, steps/s = steps / time.",
            "",
            algorithm_table(by_size, cfg["seeds"]),
            f"Floors (peak: {BIG_MATMUL}³ float32 matmul at {peak:.1f} GFLOP/s).",
            "",
            floors_table(by_size, peak),
            checks_table(by_size),
            *(lstm_text if lstm else []),
            *(diagonal_text if diagonal else []),
            "Verdicts:",
            *[f"- {line}" for line in lines],
        ]
    )
    numbers = {
        "config": {**cfg, "device": str(device.device_kind), "jax": jax.__version__},
        "peak_matmul_gflops": peak,
        "sizes": {str(n): measured for n, measured in by_size.items()},
        "lstm_sizes": {str(n): measured for n, measured in lstm.items()},
        "diagonal_sizes": {str(n): measured for n, measured in diagonal.items()},
        "verdicts": lines,
    }
    return text, numbers


def main(argv):
    del argv
    cfg = {
        "sizes": [int(n) for n in _SIZES.value],
        "lstm_sizes": [int(n) for n in _LSTM_SIZES.value],
        "diagonal_sizes": [int(n) for n in _DIAGONAL_SIZES.value],
        "steps": _STEPS.value,
        "repeats": _REPEATS.value,
        "seeds": _SEEDS.value,
        "k": _K.value,
        "decay": _DECAY.value,
        "numpy_steps": _NUMPY_STEPS.value,
        "numpy_seconds": _NUMPY_SECONDS.value,
    }
    text, numbers = run(cfg)
    print(text)
    if _JSON.value:
        results.write_json(_JSON.value, numbers)


if __name__ == "__main__":
    app.run(main)
