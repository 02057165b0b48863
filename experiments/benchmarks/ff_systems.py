"""The ff systems audit (paper §6.2, App. D.7): peak memory and images/s of one training step of
DTG-FF (pipelined and naive schedules, and the joint one-program step) against BP, BP + gradient
accumulation and BP + activation checkpointing, across depth and input size, in one run.

    python -m experiments.benchmarks.ff_systems [--sizes=32,64,128,224 --depths=vgg8,vgg11
        --width_scale=0.25 --batch=16 --micro_batches=2 --repeats=3 --max_step_gflop=400
        --json=PATH --markdown=PATH]

Every method is a whole training step on the same backbone, batch and optimizer (AdamW):
- DTG-FF pipelined: L per-layer programs (`ff.pipeline`, local loss, update, next input from the
  pre-step activations) and the concat classifier's program, run one after another;
- DTG-FF naive: the same with the next input recomputed after the update (the paper's first
  release);
- DTG-FF joint: `ff.rules.dtg_ff` and the update in one program (the same gradients as the
  pipelined step, all layers' activations live at once);
- BP, BP + accumulation (`bp_accumulate`, `--micro_batches` equal micro-batches in a scan),
  BP + checkpointing (`bp_checkpoint`, every layer under `jax.checkpoint`), single head.

Memory is compiled, exact, from shapes only (`jit(f).lower(...).compile().memory_analysis()`):
*resident* = the whole model's parameters, optimizer state, fixed readouts and the batch, which
every schedule keeps on the device; *program* = the largest temporary allocation of the step's
programs (for the pipelined schedule, the max over its per-layer programs, which run one at a
time); *peak* = resident + program. "O(1) in depth" is a claim about the program column.

Time: best of `--repeats` calls after a warm-up, methods round-robin within a configuration so
that machine noise hits them alike. Floor: the step's FLOPs (XLA's cost analysis, summed over a
schedule's programs) over this machine's float32 matmul rate measured in the same run (a 1024³
product). Steps above `--max_step_gflop` are compiled for memory but not timed. On a GPU,
`--width_scale=1` gives the paper's VGG widths.

Depth: vgg8 is the paper's VGG8 (7 conv layers, widths 128-256-256-512-512-512-512, pools after
layers 1, 3, 4, 5); vgg11 (our reading of "VGG11-style": the paper gives no widths) appends three
more 512-wide layers at the last resolution (10 conv layers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments import results
from experiments.benchmarks import timing
from ff import cnn, pipeline, rules

F32 = jnp.float32
BIG_MATMUL = 1024
CLASSES = 10
VGG8 = (128, 256, 256, 512, 512, 512, 512)
DEPTHS = {"vgg8": VGG8, "vgg11": VGG8 + (512, 512, 512)}
POOLS = (1, 3, 4, 5)
METHODS = (
    "DTG-FF pipelined",
    "DTG-FF naive",
    "DTG-FF joint",
    "BP",
    "BP + accumulation",
    "BP + checkpointing",
)

_SIZES = flags.DEFINE_list("sizes", ["32", "64", "128", "224"], "input sizes (square images)")
_DEPTHS = flags.DEFINE_list("depths", list(DEPTHS), f"backbones, of {sorted(DEPTHS)}")
_WIDTH = flags.DEFINE_float("width_scale", 0.25, "VGG widths × this (1 = the paper's)")
_BATCH = flags.DEFINE_integer("batch", 16, "images per step")
_MICRO = flags.DEFINE_integer("micro_batches", 2, "BP + accumulation's micro-batches")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per method (best is reported)")
_MAX_GFLOP = flags.DEFINE_float("max_step_gflop", 400.0, "steps above this are not timed")
_JSON = flags.DEFINE_string("json", None, "write the measurements here")
_MARKDOWN = flags.DEFINE_string("markdown", None, "write the table here")


def _bytes(tree) -> int:
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def _shapes(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _compiled(fn, *args) -> dict:
    compiled = jax.jit(fn).lower(*_shapes(args)).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {"temp_bytes": int(mem.temp_size_in_bytes), "flops": float(cost.get("flops", np.nan))}


def _widths(depth: str, scale: float) -> tuple:
    if depth not in DEPTHS:
        raise ValueError(f"unknown depth {depth!r}; use one of {sorted(DEPTHS)}")
    return tuple(max(1, round(w * scale)) for w in DEPTHS[depth])


def _setup(depth, size, scale, batch):
    options = {"widths": _widths(depth, scale), "pool_after": POOLS, "image": (size, size)}
    if size < 32:
        raise ValueError(f"sizes must be >= 32 (four 2× pools, 2×2 goodness pool); got {size}")
    dtg = cnn.dtg_cnn(CLASSES, **options)
    bp = cnn.bp_cnn(CLASSES, **options)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, size, size, 3), F32)
    y = jax.random.randint(ky, (batch,), 0, CLASSES)
    return dtg, bp, x, y


def _rule_step(rule, tx):
    def step(params, opt, state, x, y):
        state, out = rule.step(params, state, x, y)
        updates, opt = tx.update(out.grads, opt, params)
        return optax.apply_updates(params, updates), opt, state, out.loss

    return jax.jit(step)


def _methods(dtg, bp, x, y, micro):
    """{method: (call () -> outputs, resident bytes, program temp bytes, flops)}."""
    tx = optax.adamw(2e-4, weight_decay=1e-3)
    out = {}
    params = dtg.init(jax.random.key(1), F32)
    rule = rules.get("dtg_ff", dtg)
    state = rule.init(jax.random.key(2), params)
    key = rules.step_key(state)
    pipe = pipeline.make_pipeline(dtg, tx)
    opt = pipe.init(params)
    resident = _bytes((params, opt, state.readout, x, y))
    features = [
        jax.ShapeDtypeStruct((x.shape[0], dtg.backbone.feature_dim(l)), F32)
        for l in dtg.feature_layers
    ]
    cls = _compiled(pipe.classifier_step, params["classifier"], opt.classifier, features, y, key)
    for name, naive in (("DTG-FF pipelined", False), ("DTG-FF naive", True)):
        layers = pipeline.pipeline_memory(pipe, dtg, params, opt, state.readout, x, y, key, naive)
        run = pipe.naive_step if naive else pipe.step
        out[name] = (
            lambda run=run: run(params, opt, state.readout, x, y, key),
            resident,
            max([m["temp_bytes"] for m in layers] + [cls["temp_bytes"]]),
            sum(m["flops"] for m in layers) + cls["flops"],
        )
    joint = _rule_step(rule, tx)
    joint_opt = tx.init(params)
    mem = _compiled(joint, params, joint_opt, state, x, y)
    out["DTG-FF joint"] = (
        lambda: joint(params, joint_opt, state, x, y),
        _bytes((params, joint_opt, state.readout, x, y)),
        mem["temp_bytes"],
        mem["flops"],
    )
    bp_params = bp.init(jax.random.key(1), F32)
    for name, rule in (
        ("BP", rules.get("bp", bp)),
        ("BP + accumulation", rules.get("bp_accumulate", bp, micro_batches=micro)),
        ("BP + checkpointing", rules.get("bp_checkpoint", bp)),
    ):
        step = _rule_step(rule, tx)
        bp_opt = tx.init(bp_params)
        bp_state = rule.init(jax.random.key(2), bp_params)
        mem = _compiled(step, bp_params, bp_opt, bp_state, x, y)
        out[name] = (
            lambda step=step, o=bp_opt, s=bp_state: step(bp_params, o, s, x, y),
            _bytes((bp_params, bp_opt, x, y)),
            mem["temp_bytes"],
            mem["flops"],
        )
    return out


def _matmul_rate(repeats: int) -> float:
    a = jnp.ones((BIG_MATMUL, BIG_MATMUL), F32)
    best, _ = timing.round_robin({"mm": (jax.jit(lambda a: a @ a), (a,))}, repeats)["mm"]
    return 2 * BIG_MATMUL**3 / best


def measure(depths, sizes, width_scale, batch, micro, repeats, max_gflop) -> dict:
    if batch % micro:
        raise ValueError(f"--batch {batch} must be divisible by --micro_batches {micro}")
    rate = _matmul_rate(repeats)
    rows = []
    for depth in depths:
        for size in sizes:
            dtg, bp, x, y = _setup(depth, size, width_scale, batch)
            methods = _methods(dtg, bp, x, y, micro)
            timed = {
                name: (call, ())
                for name, (call, _, _, flops) in methods.items()
                if flops / 1e9 <= max_gflop
            }
            times = timing.round_robin(timed, repeats) if timed else {}
            for name, (_, resident, program, flops) in methods.items():
                best = times.get(name, (np.nan,))[0]
                rows.append(
                    {
                        "depth": depth,
                        "layers": dtg.depth,
                        "size": size,
                        "method": name,
                        "resident_bytes": resident,
                        "program_bytes": program,
                        "peak_bytes": resident + program,
                        "flops": flops,
                        "seconds": best,
                        "images_per_s": batch / best,
                        "floor_seconds": flops / rate,
                    }
                )
                print(
                    f"{depth} {size:>3} {name:<20} peak {_mb(resident + program):>9} "
                    f"(program {_mb(program)}) {batch / best:8.1f} img/s",
                    flush=True,
                )
    return {
        "matmul_flops_per_s": rate,
        "device": jax.devices()[0].device_kind,
        "width_scale": width_scale,
        "batch": batch,
        "micro_batches": micro,
        "rows": rows,
    }


def _mb(n) -> str:
    return f"{n / 2**20:.1f} MB"


def table(out) -> str:
    by = {(r["depth"], r["size"], r["method"]): r for r in out["rows"]}
    lines = [
        f"Device: {out['device']}; float32 matmul rate {out['matmul_flops_per_s'] / 1e9:.1f} "
        f"GFLOP/s (1024³); batch {out['batch']}, widths × {out['width_scale']}, AdamW; "
        f"accumulation over {out['micro_batches']} micro-batches.\n",
        results.markdown_table(
            [
                "backbone",
                "size",
                "method",
                "peak (resident + program)",
                "program",
                "peak / BP",
                "images/s",
                "speed / BP",
                "time / FLOP floor",
            ],
            [
                [
                    f"{r['depth']} ({r['layers']} layers)",
                    str(r["size"]),
                    r["method"],
                    f"{_mb(r['peak_bytes'])} ({_mb(r['resident_bytes'])} + "
                    f"{_mb(r['program_bytes'])})",
                    _mb(r["program_bytes"]),
                    f"{r['peak_bytes'] / ref['peak_bytes']:.2f}",
                    "not timed" if not np.isfinite(r["seconds"]) else f"{r['images_per_s']:.1f}",
                    "" if not np.isfinite(r["seconds"]) else f"{ref['seconds'] / r['seconds']:.2f}",
                    ""
                    if not np.isfinite(r["seconds"])
                    else f"{r['seconds'] / r['floor_seconds']:.1f}×",
                ]
                for (depth, size, _), r in by.items()
                for ref in [by[(depth, size, "BP")]]
            ],
        ),
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    out = measure(
        _DEPTHS.value,
        [int(s) for s in _SIZES.value],
        _WIDTH.value,
        _BATCH.value,
        _MICRO.value,
        _REPEATS.value,
        _MAX_GFLOP.value,
    )
    text = table(out)
    print(text)
    if _JSON.value:
        results.write_json(_JSON.value, out)
    if _MARKDOWN.value:
        results.write_text(_MARKDOWN.value, text + "\n")


if __name__ == "__main__":
    app.run(main)
