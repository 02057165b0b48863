"""Cost of the depth study's trainers: vmapped seeds vs sequential runs, tokens/s, memory.

    python -m experiments.benchmarks.enwik8_depth [--memory]

1. For each trainer at the `cpu` preset's sizes (H = N = 64, B = 32, T = 256, depth 4): the time
   of one chunk of `--steps` training steps for N = num_seeds seeds in one program, as one
   `jax.vmap` and as a `jax.lax.map` (one compile each), against N times the single-seed chunk
   (N sequential runs). Target: ratio <= 1 for the layout the preset uses.
2. Tokens/s of each trainer (B·T predictions per step per seed, all seeds counted).
3. With --memory: compiled temp memory (`memory_analysis()`) of one training step, one seed, for
   local, truncated BPTT (w = 16, 64) and full BPTT at the cpu and paper sizes (depth 4): the
   numbers quoted in experiments/configs/enwik8_depth.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import lru_local
from experiments.benchmarks import timing
from experiments.configs import enwik8_depth as depth_config
from experiments.enwik8_depth import model_config, study_trainer
from experiments.reports.enwik8_depth import trainer_label
from experiments.results import markdown_table
from experiments.runner import lanes_program

_STEPS = flags.DEFINE_integer("steps", 5, "Training steps per timed chunk.")
_DEPTH = flags.DEFINE_integer("depth", 4, "Layers L.")
_MEMORY = flags.DEFINE_bool("memory", False, "Also report compiled memory per trainer.")


def lane_runs(trainer, cfg, batches, layouts: dict, rounds: int = 5) -> dict:
    """Median seconds per call of the runner's lane program for each layout {name: (lanes, g)}
    (g = 0: one vmap; g > 0: lax.map over lanes, g at a time), timed round-robin."""

    def init(seed):
        key = jax.random.fold_in(jax.random.PRNGKey(0), seed)
        return trainer.init(jax.random.fold_in(key, 1), lru_local.init(key, cfg))

    calls = {}
    for name, (lanes, group) in layouts.items():
        program = jax.jit(lanes_program(trainer.step, group=group))
        calls[name] = (
            program,
            (jax.vmap(init)(jnp.arange(lanes)), jnp.full((lanes,), 3e-3), batches),
        )
    return {name: median for name, (_, median) in timing.round_robin(calls, rounds).items()}


def vmap_table(config, depth: int, steps: int) -> str:
    cfg = model_config(config, depth)
    seeds = config.num_seeds
    batches = jnp.asarray(
        np.random.default_rng(0).integers(
            0, 256, (steps, config.batch_size, config.seq_len + 1), dtype=np.int32
        )
    )
    tokens = steps * config.batch_size * config.seq_len
    rows = []
    for name in config.trainers:
        trainer = study_trainer(config, name, cfg)
        timed = lane_runs(
            trainer, cfg, batches, {"one": (1, 0), "vmap": (seeds, 0), "map": (seeds, 1)}
        )
        t_one, t_vmap, t_map = timed["one"], timed["vmap"], timed["map"]
        chosen = t_map if config.seed_batch[name] == 1 else t_vmap
        rows.append(
            [
                trainer_label(config, name),
                f"{t_one * 1e3:.0f}",
                f"{t_vmap * 1e3:.0f}",
                f"{t_vmap / (seeds * t_one):.2f}",
                f"{t_map * 1e3:.0f}",
                f"{t_map / (seeds * t_one):.2f}",
                "vmap" if config.seed_batch[name] == 0 else f"map ({config.seed_batch[name]})",
                f"{seeds * tokens / chosen:,.0f}",
            ]
        )
    headers = [
        "trainer",
        "1 seed (ms)",
        f"{seeds} seeds, vmap (ms)",
        f"vmap / ({seeds} × 1 seed)",
        f"{seeds} seeds, lax.map (ms)",
        f"map / ({seeds} × 1 seed)",
        "preset uses",
        f"tokens/s ({seeds} seeds, preset's choice)",
    ]
    return (
        f"Depth study trainers at the cpu preset sizes (H={config.model.d_model}, "
        f"N={config.model.d_state}, B={config.batch_size}, T={config.seq_len}, depth {depth}), "
        f"one chunk of {steps} steps, float32, {jax.devices()[0].device_kind}; each column is "
        f"one compiled program (tokens = B·T per step per seed).\n\n"
        + markdown_table(headers, rows)
    )


def temp_bytes(trainer, cfg, batch: int, seq_len: int) -> int:
    state = trainer.init(jax.random.PRNGKey(0), lru_local.init(jax.random.PRNGKey(1), cfg))
    tokens = jnp.zeros((batch, seq_len + 1), jnp.int32)
    compiled = jax.jit(trainer.step).lower(state, tokens, jnp.float32(1e-3)).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def memory_table(depth: int) -> str:
    rows = []
    for preset in ("cpu", "paper"):
        config = depth_config.get_config(preset)
        cfg = model_config(config, depth)
        variants = [("local", None), ("tbptt", 16), ("tbptt", 32), ("tbptt", 64), ("bptt", None)]
        sizes = {}
        for name, window in variants:
            trainer = study_trainer(config, name, cfg, window)
            label = f"tbptt w={window}" if window else name
            sizes[label] = temp_bytes(trainer, cfg, config.batch_size, config.seq_len)
        for label, size in sizes.items():
            rows.append(
                [
                    preset,
                    f"H=N={config.model.d_model}, B={config.batch_size}, T={config.seq_len}",
                    label,
                    f"{size / 2**20:.1f}",
                    f"{size / sizes['local']:.2f}",
                ]
            )
    return (
        f"Compiled temp memory of one training step, one seed, depth {depth}, float32 "
        f"(memory_analysis).\n\n"
        + markdown_table(["preset", "sizes", "trainer", "temp MiB", "× local"], rows)
    )


def main(argv):
    del argv
    config = depth_config.get_config("cpu")
    print(vmap_table(config, _DEPTH.value, _STEPS.value), flush=True)
    if _MEMORY.value:
        print(memory_table(_DEPTH.value), flush=True)


if __name__ == "__main__":
    app.run(main)
