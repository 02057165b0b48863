"""A toy study on the shared runner: linear regression, an lr probe feeding a seed sweep.

    [TOY_SLEEP=seconds_per_chunk] python -m tests.experiments.toy_study WORKDIR

Stage 1 probes three learning rates × 2 seeds (both lanes of lr 50 overflow: recorded, not fatal);
stage 2 trains 3 seeds at the probe's best lr with the "stop" policy. Everything is float32
(tests run with x64 on, their subprocesses without). The batch of step t is drawn from
fold_in(key(7), t), so the data is a function of the step alone.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import runner as runner_lib
from rtrl import optimizers

D = 4


def get_config(steps=30, chunk=7):
    config = ml_collections.ConfigDict()
    config.preset = "toy"
    config.steps = steps
    config.chunk = chunk
    config.lrs = [0.01, 0.1, 50.0]
    config.seeds = [0, 1, 2]
    config.optimizer = "sgd"
    return config


def _batches(config):
    w_true = jnp.arange(1.0, D + 1.0, dtype=jnp.float32)

    def batches(first, n):
        time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
        keys = jax.vmap(lambda t: jax.random.fold_in(jax.random.key(7), t))(first + jnp.arange(n))
        x = jax.vmap(lambda k: jax.random.normal(k, (16, D), jnp.float32))(keys)
        return x, x @ w_true

    return batches


def _run(config, run_id, lanes, policy):
    tx = optimizers.get(config.optimizer)
    keys = runner_lib.seed_keys([lane["seed"] for lane in lanes], 1)

    def init():
        def one(key, lr):
            w = jax.random.normal(key[0], (D,), jnp.float32)
            return w, optimizers.get(config.optimizer, lr).init(w)

        return jax.vmap(one)(keys, jnp.asarray([lane["lr"] for lane in lanes], jnp.float32))

    def step(state, batch, args):
        w, opt_state = state
        x, y = batch
        loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        updates, opt_state = tx.update(g, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), {"loss": loss, "w": w}

    def finish(state, records, diverged):
        return {"final_loss": records["loss"][:, -1].tolist(), "diverged": diverged.tolist()}

    return runner_lib.Run(
        id=run_id,
        label=run_id,
        lanes=lanes,
        init=init,
        step=step,
        batches=_batches(config),
        steps=config.steps,
        chunk=config.chunk,
        finish=finish,
        on_nonfinite=policy,
        chunk_end=lambda state: {"w_norm": jnp.linalg.norm(state[0])},
    )


def study(config, runner):
    probe_lanes = [{"seed": s, "lr": lr} for lr in config.lrs for s in config.seeds[:2]]
    probe = runner.run(_run(config, "probe", probe_lanes, "record"))
    scores = np.asarray(probe["final_loss"], np.float64)
    scores = np.where(np.isfinite(scores), scores, np.inf).reshape(len(config.lrs), -1).mean(1)
    best = config.lrs[int(np.argmin(scores))]
    train = runner.run(
        _run(config, "train", [{"seed": s, "lr": best} for s in config.seeds], "stop")
    )
    table = f"| lr | final loss |\n|---|---|\n| {best:g} | {np.mean(train['final_loss']):.6g} |\n"
    return table, {"best_lr": best, "probe": probe, "train": train}


def run(config, workdir):
    return runner_lib.run_study(config, workdir, study)


if __name__ == "__main__":
    run(get_config(), sys.argv[1])
