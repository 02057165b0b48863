r"""The enwik8 depth study: the same residual LRU stack trained end to end and locally.

    python -m experiments.enwik8_depth --config=experiments/configs/enwik8_depth.py:quick \
        [--workdir=results/enwik8_depth/quick] [--config.steps=...]

For every trainer in `config.trainers` (BPTT, local traces, optionally truncated BPTT and online)
and every depth, trains `num_seeds` seeds as lanes of one program on identical batches (one
seeded window sampler, indexed by the step) and reports held-out bits per byte. Each trainer
first gets its own learning-rate probe (short runs over a grid, scored on validation bpb; a lane
that diverges scores inf). Evaluation reads the validation / test split in order as contiguous
streams with the recurrent state carried across windows. Runs go through `experiments.runner`.

Writes under the workdir: config.json, metrics.jsonl (one row per lane per chunk, plus eval
rows), lr_probe.md, table.md, summary.json, bpb_vs_depth.png, training_curves.png, runs/ and
checkpoint/ (every chunk; an interrupted run resumes from it; a finished one re-prints its table).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lru_local
from experiments import cli, results, runner
from experiments.configs import enwik8_depth as depth_config
from experiments.data import text
from experiments.reports import enwik8_depth as report
from lru_local import training


def model_config(config, depth: int) -> lru_local.Config:
    """The lru_local.Config of the study's model at `depth` (unknown model keys are rejected)."""
    return lru_local.Config.from_mapping({**config.model.to_dict(), "depth": depth})


def study_trainer(config, name: str, cfg: lru_local.Config, window: int | None = None):
    """Trainer `name` with the study's seq_len, tbptt window (or `window`), online k, chunk."""
    return training.make_trainer(
        name,
        cfg,
        seq_len=config.seq_len,
        window=window or config.tbptt_window,
        every=config.online_every,
        chunk=config.trace_chunk,
    )


class DepthStudy:
    """The study's runs (probes, then depth by depth) and their evaluation."""

    def __init__(self, config, runner_: runner.Runner):
        self.config, self.runner = config, runner_
        self.corpus = text.load_corpus()
        self._eval = jax.jit(
            jax.vmap(training.stream_eval, in_axes=(0, None, None, None)), static_argnums=(2, 3)
        )
        self._streams = {}

    def streams(self, split: str, cap: int):
        if (split, cap) not in self._streams:
            ev = self.config.eval
            data = getattr(self.corpus, split)
            self._streams[split, cap] = text.eval_streams(data, ev.streams, ev.window, cap)
        return self._streams[split, cap]

    def evaluate(self, params, split: str, cap: int) -> np.ndarray:
        """Bits per byte of every lane's params on the (capped) split, read in order."""
        streams, n_scored = self.streams(split, cap)
        ev = self.config.eval  # the whole architecture: norm, block, head_input, embedding too
        arch = lru_local.Config.from_mapping(self.config.model.to_dict())
        sums = self._eval(params, jnp.asarray(streams), ev.window, arch)
        return np.asarray(jax.device_get(sums), np.float64).sum(-1) / n_scored / math.log(2.0)

    def make_run(self, kind: str, trainer_name: str, depth: int, lanes: list[dict], steps: int):
        """Lane i: params from fold_in(fold_in(PRNGKey(seed), s_i), 0), noise key from (…, 1)."""
        c = self.config
        cfg = model_config(c, depth)
        trainer = study_trainer(c, trainer_name, cfg)
        keys = runner.seed_keys([lane["seed"] for lane in lanes], 2, root=c.seed)

        def init():
            def one(key):
                return trainer.init(key[1], lru_local.init(key[0], cfg))

            return jax.jit(jax.vmap(one))(keys)

        def batches(first, n):  # batch i of every run: the seeded sampler at step i
            windows = [
                text.random_windows(self.corpus.train, c.batch_size, c.seq_len + 1, c.data_seed, i)
                for i in range(first, first + n)
            ]
            return np.stack(windows)

        tokens_per_step = c.batch_size * c.seq_len * len(lanes)

        def rows(first, n, metrics, extra, seconds):
            digest = zlib.crc32(batches(first, n).tobytes())  # lets anyone check the data
            out = []
            for i, lane in enumerate(lanes):
                loss = float(np.mean(metrics["loss"][i], dtype=np.float64))
                row = {
                    "phase": kind,
                    "trainer": trainer_name,
                    "depth": depth,
                    **lane,
                    "step": first + n,
                    "train_loss_nats": loss,
                    "train_bpb": loss / math.log(2.0),
                    "grad_norm": float(metrics["grad_norm"][i, -1]),
                    "tokens_per_s": tokens_per_step * n / seconds,
                    "batches_crc32": digest,
                }
                if "local_losses" in metrics:  # local / online: every layer's own loss
                    row["layer_losses"] = metrics["local_losses"][i].mean(axis=0).tolist()
                out.append(row)
            return out

        run_id = f"{kind}/{trainer_name}/depth{depth}"
        label = f"{kind} {report.trainer_label(c, trainer_name)} depth {depth}"
        finish = self.finish_probe if kind == "probe" else self.finish_train
        return runner.Run(
            id=run_id,
            label=label,
            lanes=lanes,
            init=init,
            step=lambda state, tokens, lr: trainer.step(state, tokens, lr),
            batches=batches,
            steps=steps,
            chunk=c.chunk_steps,
            finish=lambda state, records, diverged: finish(run_id, lanes, state, diverged),
            args=jnp.asarray([lane["lr"] for lane in lanes], jnp.float32),
            on_nonfinite="record" if kind == "probe" else "stop",
            watch=("loss", "grad_norm"),
            group=c.seed_batch[trainer_name],
            rows=rows,
            rate_key=trainer_name,
            cost=depth,
        )

    def probe_runs(self) -> list[runner.Run]:
        probe = self.config.lr_probe
        lanes = [{"seed": s, "lr": float(lr)} for lr in probe.grid for s in range(probe.num_seeds)]
        return [
            self.make_run("probe", t, d, lanes, probe.steps)
            for t in self.config.trainers
            for d in probe.depths
        ]

    def train_runs(self, winners: dict | None) -> list[runner.Run]:
        """winners: {trainer: {probed depth: lr}}; a depth takes the nearest probed depth's."""
        c = self.config
        nearest = lambda d: min(c.lr_probe.depths, key=lambda p: (abs(p - d), p))  # noqa: E731
        return [
            self.make_run(
                "train",
                t,
                d,
                [
                    {"seed": s, "lr": winners[t][nearest(d)] if winners else math.nan}
                    for s in range(c.num_seeds)
                ],
                c.steps,
            )
            for d in c.depths
            for t in c.trainers
        ]

    def finish_probe(self, run_id, lanes, state, diverged) -> dict:
        bpb = self.evaluate(state.params, "valid", self.config.lr_probe.eval_bytes)
        bpb = np.where((diverged >= 0) | ~np.isfinite(bpb), np.inf, bpb)
        lrs = [lane["lr"] for lane in lanes]
        grid = [float(lr) for lr in self.config.lr_probe.grid]
        means = {lr: float(np.mean(bpb[np.asarray(lrs) == lr])) for lr in grid}
        if not any(np.isfinite(list(means.values()))):
            raise FloatingPointError(
                f"every learning rate of {run_id} diverged; add smaller values to "
                "--config.lr_probe.grid"
            )
        winner = min(grid, key=lambda lr: means[lr])
        print(
            f"[{run_id}] valid bpb by lr "
            + ", ".join(f"{lr:g}: {m:.4f}" for lr, m in means.items())
            + f" -> {winner:g}"
            + (" (edge of the grid)" if winner in (min(grid), max(grid)) and len(grid) > 1 else ""),
            flush=True,
        )
        seeds = [lane["seed"] for lane in lanes]
        return {"lrs": lrs, "seeds": seeds, "valid_bpb": bpb.tolist(), "winner": winner}

    def finish_train(self, run_id, lanes, state, diverged) -> dict:
        ev = self.config.eval
        valid = self.evaluate(state.params, "valid", ev.valid_bytes)
        test = self.evaluate(state.params, "test", ev.test_bytes)
        _, trainer, depth = run_id.split("/")
        self.runner.log(
            [
                {
                    "phase": "eval",
                    "trainer": trainer,
                    "depth": int(depth.removeprefix("depth")),
                    "seed": lane["seed"],
                    "step": self.config.steps,
                    "valid_bpb": float(valid[i]),
                    "test_bpb": float(test[i]),
                }
                for i, lane in enumerate(lanes)
            ]
        )
        busy = self.runner.busy_s.get(run_id, 0.0)
        compiled = self.runner.compile_info.get(run_id, {})
        tokens = self.config.batch_size * self.config.seq_len * len(lanes) * self.config.steps
        print(f"[{run_id}] valid bpb {results.mean_std(valid)}, test {results.mean_std(test)}")
        return {
            "lr": lanes[0]["lr"],
            "valid_bpb": valid.tolist(),
            "test_bpb": test.tolist(),
            "train_seconds": busy,  # this process's share (a resumed run ran part elsewhere)
            "compile_seconds": compiled.get("seconds"),
            "tokens_per_s": tokens / busy if busy else None,
            "chunk_temp_bytes": compiled.get("temp_bytes"),
        }


def study(config, runner_: runner.Runner):
    s = DepthStudy(config, runner_)
    print(s.corpus.describe(), flush=True)
    probes = s.probe_runs()
    runner_.plan(probes + s.train_runs(None))
    winners, done = {}, {}
    for run in probes:
        _, trainer, depth = run.id.split("/")
        done[run.id] = runner_.run(run)
        winners.setdefault(trainer, {})[int(depth[5:])] = done[run.id]["winner"]
    results.write_text(runner_.workdir / "lr_probe.md", report.probe_table(s, probes))
    done.update({run.id: runner_.run(run) for run in s.train_runs(winners)})
    return report.write(s, done), {"data": s.corpus.summary(), "runs": done}


def check(config) -> None:
    """The config's value checks (experiments/configs/enwik8_depth.py), then the trainers' own
    (a tbptt window or online interval that does not divide seq_len)."""
    depth_config.check(config)
    model_config(config, 1)
    for name in config.trainers:
        study_trainer(config, name, lru_local.Config())


def run(config, workdir: str | Path) -> dict:
    """Runs (or resumes, or re-prints) the study; returns the summary written to the workdir."""
    return runner.run_study(config, workdir, study, check=check)


if __name__ == "__main__":
    cli.run_study("enwik8_depth", run, "Study config.")
