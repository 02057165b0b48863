r"""The enwik8 depth study: one residual LRU stack, trained by BPTT and by local traces.

    python -m experiments.enwik8_depth --config=experiments/configs/enwik8_depth.py:<preset>

Presets (`:arg`):
  smoke   seconds; depths {1, 2}, H = N = 8, 6 steps. For tests only.
  quick   what `make run` runs (11.6 min measured on 2 CPU cores): depths {1, 2, 4, 6}, BPTT and
          local, H = N = 64, B = 16, T = 128, 1500 steps, 2 seeds; an LR probe per trainer and
          per depth over {1e-3, 3e-3, 1e-2, 3e-2} (200 steps, 1 seed); full validation and
          test splits.
  cpu     the fullest sweep that fits a few hours on 2 cores (estimated 3.5-4 h from the quick
          preset's measured rates; not run yet): depths {1, 2, 4, 6}; BPTT, local, truncated
          BPTT (w = 32, memory-matched to local) and online (k = 16); H = N = 64, B = 32,
          T = 256, 3000 steps, 3 seeds; an LR probe per trainer and per depth (300 steps,
          2 seeds).
  paper   the post's protocol at GPU scale: depths {1, 2, 4, 6}, 3000 steps of Adam, an LR probe
          over {3e-4, 1e-3, 3e-3, 1e-2} per trainer and per depth, BPTT + local + tbptt(w = 64,
          memory-matched to local).
          The post gives no widths ("modest widths"); we use H = N = 256, B = 32, T = 1024,
          3 seeds, evaluation on the full validation and test splits.

Truncated BPTT memory (compiled temp memory of one training step, one seed, float32, from
`jax.jit(step).lower(...).compile().memory_analysis()`; measured by
`python -m experiments.benchmarks.enwik8_depth --memory`):

  sizes (depth 4)          local     tbptt w=16    w=32          w=64           full BPTT (w = T)
  cpu   H=N=64, B=32,      10.8 MiB  5.8 (0.53x)   11.8 (1.09x)  26.2 (2.42x)   124.8 (11.5x, T=256)
        T=256
  paper H=N=256, B=32,     91.0 MiB  21.0 (0.23x)  45.5 (0.50x)  103.0 (1.13x)  2007 (22x, T=1024)
        T=1024

The local trainer's memory does not grow with T (its 32-step readout chunk is the only
time-like axis); truncated BPTT's grows linearly in w. So the memory-matched truncated baseline
is w = 32 at the cpu sizes (the cpu preset's tbptt_window) and w = 64 at the paper sizes (the
paper preset's); for other sizes pick the largest divisor of seq_len whose memory fits the
local trainer's.

Fields (overrides like `--config.steps=500`; unknown keys are rejected):
  trainers: any of "bptt", "local", "tbptt", "online" (see lru_local.training).
  depths, steps, batch_size, seq_len (T: each batch is B windows of T + 1 bytes).
  chunk_steps: steps per jitted call = progress line + checkpoint interval.
  num_seeds: seeds vmapped in one call (init and denoising noise; the data order is shared).
  seed: base PRNG seed of the model; data_seed: seed of the training-window sampler.
  tbptt_window: w; online_every: k (both must divide seq_len); trace_chunk: steps batched per
    scan iteration in the trace engine (speed only; the gradients do not depend on it).
  lr_probe: grid, steps, num_seeds, depths (each depth uses the winner of the nearest probed
    depth), eval_bytes (validation bytes scored per probe run).
  eval: streams, window, valid_bytes, test_bytes (0 = the whole split; otherwise a cap).
  seed_batch: per trainer, 0 = all lanes in one vmap, b = lax.map over lanes, b at a time.
  model: lru_local.Config fields other than depth. model.activation = "none" is the post's
    linear readout y = Re(C s) + D u (the stack is then linear in the embeddings up to the
    softmax); "gelu" makes it y = GELU(Re(C s)) + D u (traces stay exact).
"""

import math

import ml_collections

from lru_local.training import TRAINERS

PRESETS = ("smoke", "quick", "cpu", "paper")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "quick"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.trainers = ["bptt", "local"]
    c.depths = [1, 2, 4, 6]
    c.steps = 1000
    c.chunk_steps = 100
    c.batch_size = 16
    c.seq_len = 128
    c.num_seeds = 2
    c.seed = 0
    c.data_seed = 1234
    c.tbptt_window = 16
    c.online_every = 16
    c.trace_chunk = 32
    # 0: all seeds (probe: all (lr, seed) lanes) in one jax.vmap; b >= 1: jax.lax.map over
    # lanes, b vmapped at a time. On CPU, vmapped BPTT loses ~35% throughput to cache pressure
    # (the associative scan's working set leaves L3), so the CPU presets map the reverse-mode
    # trainers one lane at a time (`python -m experiments.benchmarks.enwik8_depth`).
    c.seed_batch = ml_collections.ConfigDict({"bptt": 0, "local": 0, "tbptt": 0, "online": 0})
    c.lr_probe = ml_collections.ConfigDict(
        {
            "grid": [1e-3, 3e-3, 1e-2, 3e-2],
            "steps": 200,
            "num_seeds": 2,
            "depths": [2],
            "eval_bytes": 0,
        }
    )
    c.eval = ml_collections.ConfigDict(
        {"streams": 16, "window": 128, "valid_bytes": 0, "test_bytes": 0}
    )
    c.model = ml_collections.ConfigDict(
        {
            "d_model": 64,
            "d_state": 64,
            "r_min": 0.9,
            "r_max": 0.999,
            "max_phase": 6.283,
            "noise_std": 0.1,
            "d_init_std": 0.1,
            "embed_std": 1.0,
            "activation": "none",
        }
    )
    if preset == "smoke":
        c.depths = [1, 2]
        c.steps = 6
        c.chunk_steps = 3
        c.batch_size = 2
        c.seq_len = 16
        c.tbptt_window = 4
        c.online_every = 4
        c.trace_chunk = 8
        c.lr_probe.update({"grid": [3e-3, 1e-2], "steps": 3, "depths": [1], "eval_bytes": 2048})
        c.eval.update({"streams": 4, "window": 16, "valid_bytes": 4096, "test_bytes": 4096})
        c.model.update({"d_model": 8, "d_state": 8})
    if preset in ("smoke", "quick", "cpu"):
        c.seed_batch.update({"bptt": 1, "tbptt": 1})
    if preset == "quick":
        c.steps = 1500
        c.lr_probe.update({"num_seeds": 1, "depths": [1, 2, 4, 6], "eval_bytes": 262_144})
    elif preset == "cpu":
        c.trainers = ["bptt", "local", "tbptt", "online"]
        c.tbptt_window = 32
        c.steps = 3000
        c.chunk_steps = 100
        c.batch_size = 32
        c.seq_len = 256
        c.num_seeds = 3
        c.lr_probe.update(
            {"steps": 300, "num_seeds": 2, "depths": [1, 2, 4, 6], "eval_bytes": 524_288}
        )
        c.eval.window = 256
    elif preset == "paper":
        c.trainers = ["bptt", "local", "tbptt"]
        c.steps = 3000
        c.chunk_steps = 250
        c.batch_size = 32
        c.seq_len = 1024
        c.num_seeds = 3
        c.tbptt_window = 64
        c.lr_probe.update(
            {
                "grid": [3e-4, 1e-3, 3e-3, 1e-2],
                "steps": 500,
                "num_seeds": 1,
                "depths": [1, 2, 4, 6],
                "eval_bytes": 1_048_576,
            }
        )
        c.eval.update({"streams": 64, "window": 1024})
        c.model.update({"d_model": 256, "d_state": 256})
    return c


def check(config) -> None:
    """Value checks the locked ConfigDict cannot do; each error names the field to fix."""
    unknown = [t for t in config.trainers if t not in TRAINERS]
    if unknown or not config.trainers:
        raise ValueError(f"config.trainers={list(config.trainers)}: choose from {list(TRAINERS)}")
    for name, value in config.seed_batch.items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"config.seed_batch.{name} must be an int >= 0, got {value!r}")
    for name in ("steps", "chunk_steps", "batch_size", "seq_len", "num_seeds"):
        value = config[name]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{name} must be a positive int, got {value!r}")
    if not config.depths or any(not isinstance(d, int) or d < 1 for d in config.depths):
        raise ValueError(f"config.depths must be positive ints, got {list(config.depths)}")
    probe = config.lr_probe
    if not probe.grid or any(not (lr > 0 and math.isfinite(lr)) for lr in probe.grid):
        raise ValueError(f"config.lr_probe.grid must be positive numbers, got {list(probe.grid)}")
    if not probe.depths or any(not isinstance(d, int) or d < 1 for d in probe.depths):
        raise ValueError(f"config.lr_probe.depths must be positive ints, got {probe.depths}")
