"""Throughput of the four gradient engines of lru_local, and the trace engine vs its floor.

    python -m experiments.benchmarks.lru_local_grads [--batch=16 --seq_len=256 ...]

Prints tokens/s (B·(T-1) predictions per call) of local_grads (hand-derived traces),
local_grads_jvp (generic forward mode), local_grads_autodiff (jax.grad, reverse over time) and
bptt_grads, all measured in one run, and the trace engine's time over its memory-traffic floor:
the trace update must read and write e^B (B·N·H complex) and e^λ, s (B·N complex) per layer and
step, at the streaming bandwidth this benchmark measures on a buffer of that size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

import lru_local
from experiments.benchmarks import timing
from experiments.results import markdown_table

_BATCH = flags.DEFINE_integer("batch", 16, "Batch rows B.")
_SEQ = flags.DEFINE_integer("seq_len", 256, "Tokens per row T.")
_WIDTH = flags.DEFINE_integer("width", 128, "H = N.")
_DEPTH = flags.DEFINE_integer("depth", 4, "Layers L.")


def trace_bytes_per_step(batch: int, cfg: lru_local.Config, itemsize: int = 8) -> int:
    """Minimum traffic of one step of the trace update: read + write s, e^λ, e^B of every layer."""
    per_layer = batch * cfg.d_state * (cfg.d_model + 2) * itemsize
    return 2 * per_layer * cfg.depth


def run(batch: int, seq_len: int, width: int, depth: int) -> str:
    cfg = lru_local.Config(d_model=width, d_state=width, depth=depth)
    params = lru_local.init(jax.random.key(0), cfg)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq_len), 0, 256, dtype=jnp.int32)
    key = jax.random.key(2)
    engines = {
        "local_grads (traces)": lambda p, x: lru_local.local_grads(p, x, key, cfg),
        "local_grads_jvp (jax.jvp)": lambda p, x: lru_local.local_grads_jvp(p, x, key, cfg),
        "local_grads_autodiff (jax.grad)": lambda p, x: lru_local.local_grads_autodiff(
            p, x, key, cfg
        ),
        "bptt_grads (jax.grad, parallel scan)": lambda p, x: lru_local.bptt_grads(p, x, cfg),
    }
    predictions = batch * (seq_len - 1)
    seconds = {}
    for name, fn in engines.items():
        seconds[name] = timing.seconds_per_call(jax.jit(fn), params, tokens)
        print(f"  {name}: {seconds[name] * 1e3:.1f} ms/call", flush=True)
    trace = seconds["local_grads (traces)"]
    rows = [[name, f"{predictions / s:,.0f}", f"{s / trace:.2f}×"] for name, s in seconds.items()]
    step_bytes = trace_bytes_per_step(batch, cfg)
    # Bandwidth at the traces' working-set size (they fit in cache at CPU-preset sizes) and for
    # a buffer far larger than any cache (DRAM, STREAM-style). The floor uses the larger one,
    # so it is a true lower bound on the time of the trace update.
    cache_bandwidth = timing.streaming_bandwidth(step_bytes // 2)
    dram_bandwidth = timing.streaming_bandwidth(512 * 2**20, steps=4)
    bandwidth = max(cache_bandwidth, dram_bandwidth)
    floor = step_bytes * (seq_len - 1) / bandwidth
    temp = {
        name: jax.jit(fn).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes
        for name, fn in engines.items()
    }
    jvp_speedup = seconds["local_grads_jvp (jax.jvp)"] / trace
    lines = [
        f"lru_local gradient engines: B={batch}, T={seq_len}, H=N={width}, depth={depth}, "
        f"float32, {jax.devices()[0].platform} ({jax.device_count()} device)",
        "",
        markdown_table(["engine", "tokens/s", "time vs traces"], rows),
        markdown_table(
            ["engine", "compiled temp memory (MiB)"],
            [[name, f"{b / 2**20:.2f}"] for name, b in temp.items()],
        ),
        markdown_table(
            ["trace engine vs its memory-traffic floor", "value"],
            [
                [
                    "bytes read+written per step (s, e^λ, e^B, all layers)",
                    f"{step_bytes / 2**20:.2f} MiB",
                ],
                [
                    f"streaming bandwidth, {step_bytes // 2 / 2**20:.1f} MiB buffer (traces' size)",
                    f"{cache_bandwidth / 1e9:.1f} GB/s",
                ],
                ["streaming bandwidth, 512 MiB buffer (DRAM)", f"{dram_bandwidth / 1e9:.1f} GB/s"],
                ["floor = bytes × steps / max bandwidth", f"{floor * 1e3:.1f} ms/call"],
                ["measured local_grads", f"{trace * 1e3:.1f} ms/call"],
                ["**measured / floor** (target ≤ 3×)", f"**{trace / floor:.1f}×**"],
                ["**jax.jvp time / trace time** (target ≥ 2×)", f"**{jvp_speedup:.1f}×**"],
            ],
        ),
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    print(run(_BATCH.value, _SEQ.value, _WIDTH.value, _DEPTH.value))


if __name__ == "__main__":
    app.run(main)
