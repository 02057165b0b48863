"""Cost of the depth study's trainers: vmapped seeds vs sequential runs, tokens/s, memory.

    python -m experiments.benchmarks.enwik8_depth [--memory]

1. For each trainer at the `cpu` preset's sizes (H = N = 64, B = 32, T = 256, depth 4): the time
   of one chunk of `--steps` training steps for N = num_seeds seeds in one `jax.vmap` (one
   compile), against N times the single-seed chunk (N sequential runs). Target: ratio <= 1.
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
from experiments.results import markdown_table
from lru_local import training

_STEPS = flags.DEFINE_integer("steps", 5, "Training steps per timed chunk.")
_DEPTH = flags.DEFINE_integer("depth", 4, "Layers L.")
_MEMORY = flags.DEFINE_bool("memory", False, "Also report compiled memory per trainer.")


def _setup(config, depth: int):
    return lru_local.Config.from_mapping({**config.model.to_dict(), "depth": depth})


def _trainer(name: str, config, cfg, window=None):
    return training.make_trainer(
        name,
        cfg,
        seq_len=config.seq_len,
        window=window or config.tbptt_window,
        every=config.online_every,
        chunk=config.trace_chunk,
    )


def chunk_runner(trainer, cfg, seeds: int):
    """jit(vmap over seeds ∘ scan over steps of trainer.step) and its initial states."""

    def init(seed):
        key = jax.random.fold_in(jax.random.PRNGKey(0), seed)
        return trainer.init(jax.random.fold_in(key, 1), lru_local.init(key, cfg))

    states = jax.vmap(init)(jnp.arange(seeds))

    @jax.jit
    def run(states, batches, lrs):
        def one(state, lr):
            return jax.lax.scan(lambda s, x: trainer.step(s, x, lr), state, batches)

        return jax.vmap(one)(states, lrs)

    return run, states


def vmap_table(config, depth: int, steps: int) -> str:
    cfg = _setup(config, depth)
    seeds = config.num_seeds
    batches = jnp.asarray(
        np.random.default_rng(0).integers(
            0, 256, (steps, config.batch_size, config.seq_len + 1), dtype=np.int32
        )
    )
    tokens = steps * config.batch_size * config.seq_len
    rows = []
    for name in config.trainers:
        trainer = _trainer(name, config, cfg)
        one, one_state = chunk_runner(trainer, cfg, 1)
        many, many_state = chunk_runner(trainer, cfg, seeds)
        t_one = timing.seconds_per_call(one, one_state, batches, jnp.full((1,), 3e-3))
        t_many = timing.seconds_per_call(many, many_state, batches, jnp.full((seeds,), 3e-3))
        label = {
            "tbptt": f"tbptt (w={config.tbptt_window})",
            "online": f"online (k={config.online_every})",
        }.get(name, name)
        rows.append(
            [
                label,
                f"{t_one * 1e3:.0f}",
                f"{t_many * 1e3:.0f}",
                f"{t_many / (seeds * t_one):.2f}",
                f"{tokens / t_one:,.0f}",
                f"{seeds * tokens / t_many:,.0f}",
            ]
        )
    headers = [
        "trainer",
        "1 seed (ms/chunk)",
        f"{seeds} seeds vmapped (ms/chunk)",
        f"vmapped / ({seeds} × sequential)",
        "tokens/s, 1 seed",
        f"tokens/s, {seeds} seeds",
    ]
    return (
        f"Depth study trainers at the cpu preset sizes (H={config.model.d_model}, "
        f"N={config.model.d_state}, B={config.batch_size}, T={config.seq_len}, depth {depth}), "
        f"{steps} steps per chunk, float32, {jax.devices()[0].device_kind}; one compile per "
        f"column.\n\n" + markdown_table(headers, rows)
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
        cfg = _setup(config, depth)
        variants = [("local", None), ("tbptt", 16), ("tbptt", 32), ("tbptt", 64), ("bptt", None)]
        sizes = {}
        for name, window in variants:
            trainer = _trainer(name, config, cfg, window)
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
