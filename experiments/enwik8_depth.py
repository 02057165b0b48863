r"""The enwik8 depth study: the same residual LRU stack trained end to end and locally.

    python -m experiments.enwik8_depth --config=experiments/configs/enwik8_depth.py:quick \
        [--workdir=results/enwik8_depth/quick] [--config.steps=...]

For every trainer in `config.trainers` (BPTT, local traces, optionally truncated BPTT and online)
and every depth, trains `num_seeds` seeds as one `jax.vmap` on identical batches (one seeded
window sampler, indexed by the step) and reports held-out bits per byte. Each trainer first gets
its own learning-rate probe (short runs over a grid, scored on validation bpb). Evaluation reads
the validation / test split in order as contiguous streams with the recurrent state carried
across windows.

Writes under the workdir: config.json, metrics.jsonl (one row per seed per chunk, plus eval
rows), lr_probe.md, table.md, summary.json, bpb_vs_depth.png, training_curves.png, and
checkpoint/ (every chunk; an interrupted run resumes from it; a finished run re-prints its table).
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lru_local
from experiments import checkpoint, cli, plots, results
from experiments.data import text
from lru_local import training

LABELS = {"bptt": "BPTT", "local": "local", "tbptt": "tbptt", "online": "online"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One vmapped training run: a trainer at a depth, one lane per (learning rate, seed)."""

    kind: str  # "probe" or "train"
    trainer: str
    depth: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.trainer}/depth{self.depth}"


def trainer_label(config, name: str) -> str:
    if name == "tbptt":
        return f"tbptt (w={config.tbptt_window})"
    if name == "online":
        return f"online (k={config.online_every})"
    return LABELS[name]


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


def check_config(config) -> None:
    """Value checks the locked ConfigDict cannot do; each error names the field to fix."""
    unknown = [t for t in config.trainers if t not in training.TRAINERS]
    if unknown or not config.trainers:
        raise ValueError(
            f"config.trainers={list(config.trainers)}: choose from {list(training.TRAINERS)}"
        )
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
    model_config(config, 1)
    for name in config.trainers:  # raises on a window / interval that does not divide seq_len
        study_trainer(config, name, lru_local.Config())


def eval_streams(split: np.ndarray, n_streams: int, window: int, cap: int):
    """The first `cap` bytes of a split (all if cap = 0) as n_streams contiguous rows.

    Row i is bytes [i·M, (i+1)·M] (M + 1 bytes, M a multiple of window), so the S·M scored
    predictions are bytes 1 .. S·M of the split, each exactly once. Returns (int32 [S, M+1], S·M).
    """
    available = split.size if cap == 0 else min(cap, split.size)
    per_stream = (available - 1) // n_streams // window * window
    if per_stream < window:
        raise ValueError(
            f"an evaluation split of {available:,} bytes cannot fill {n_streams} streams of one "
            f"{window}-byte window; lower eval.streams / eval.window or raise the byte cap"
        )
    rows = [split[i * per_stream : (i + 1) * per_stream + 1] for i in range(n_streams)]
    return np.stack(rows).astype(np.int32), n_streams * per_stream


def lane_chunk(trainer: training.Trainer, seed_batch: int = 0):
    """(states, batches [C, B, T+1], lrs [lanes]) -> (states, metrics [lanes, C]).

    Each lane (a seed, or a (learning rate, seed) pair in a probe) runs `lax.scan` over the C
    steps of `trainer.step`, all lanes in one program: one `jax.vmap` over lanes when
    seed_batch = 0, else `jax.lax.map` over lanes, seed_batch of them vmapped at a time (on CPU
    the reverse-mode trainers lose throughput to cache pressure when vmapped; see the benchmark).
    """

    def run(states, batches, lrs):
        def one(lane):
            state, lr = lane
            return jax.lax.scan(lambda s, x: trainer.step(s, x, lr), state, batches)

        if seed_batch == 0:
            return jax.vmap(one)((states, lrs))
        return jax.lax.map(one, (states, lrs), batch_size=seed_batch)

    return run


class Sweep:
    """The whole study as a resumable sequence of cells (probes first, then depth by depth)."""

    def __init__(self, config, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.ckpt_dir = workdir / "checkpoint"
        self.metrics_path = workdir / "metrics.jsonl"
        self.config_dict = config.to_dict()
        self.rates: dict[str, float] = {}  # seconds per (step · layer · lane), per trainer
        self._chunk_fns: dict = {}
        self._eval_fn = jax.jit(
            jax.vmap(training.stream_eval, in_axes=(0, None, None, None)), static_argnums=(2, 3)
        )
        self._streams: dict = {}

    # ----- bookkeeping -------------------------------------------------------------------------

    def start(self):
        """Loads the newest readable checkpoint (or starts afresh); returns resume arrays."""
        latest = checkpoint.load_latest(self.ckpt_dir)
        if latest is None:
            self.meta = {
                "config": self.config_dict,
                "done": {},
                "current": None,
                "metrics_lines": 0,
                "elapsed_s": 0.0,
            }
            arrays = None
            if self.metrics_path.exists():
                self.metrics_path.unlink()
        else:
            self.meta, arrays, path = latest
            if self.meta["config"] != self.config_dict:
                raise ValueError(
                    f"{self.workdir} holds a run with a different config; use another "
                    f"--workdir or delete {self.ckpt_dir} to start over"
                )
            where = self.meta["current"] or {"cell": "between cells", "chunk": 0}
            print(
                f"resuming from {path.name}: {len(self.meta['done'])} cells done, "
                f"{where['cell']} at chunk {where['chunk']}",
                flush=True,
            )
            self._truncate_metrics(self.meta["metrics_lines"])
        self._clock = time.perf_counter()
        results.write_json(self.workdir / "config.json", self.config_dict)
        return arrays

    def _truncate_metrics(self, n_lines: int) -> None:
        """Drops metric rows written after the checkpoint we resume from (and partial lines)."""
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines(keepends=True)[:n_lines]
        results.write_text(self.metrics_path, "".join(lines))

    def _append_metrics(self, rows: list[dict]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write("".join(results.json_line(row) for row in rows))
        self.meta["metrics_lines"] += len(rows)

    def _save(self, arrays=None) -> None:
        now = time.perf_counter()
        self.meta["elapsed_s"] += now - self._clock
        self._clock = now
        checkpoint.save(self.ckpt_dir, self.meta, arrays)

    # ----- cells -------------------------------------------------------------------------------

    def probe_cells(self) -> list[Cell]:
        probe = self.config.lr_probe
        lanes = [(lr, s) for lr in probe.grid for s in range(probe.num_seeds)]
        return [
            Cell(
                "probe",
                trainer,
                depth,
                tuple(float(lr) for lr, _ in lanes),
                tuple(s for _, s in lanes),
                probe.steps,
            )
            for trainer in self.config.trainers
            for depth in probe.depths
        ]

    def winner(self, trainer: str, depth: int) -> float:
        """The probe's best learning rate at the probed depth nearest to `depth`."""
        probed = min(self.config.lr_probe.depths, key=lambda d: (abs(d - depth), d))
        result = self.meta["done"][f"probe/{trainer}/depth{probed}"]
        return result["winner"]

    def train_cells(self) -> list[Cell]:
        seeds = tuple(range(self.config.num_seeds))
        return [
            Cell(
                "train",
                trainer,
                depth,
                (self.winner(trainer, depth),) * len(seeds),
                seeds,
                self.config.steps,
            )
            for depth in self.config.depths
            for trainer in self.config.trainers
        ]

    def init_state(self, cell: Cell, trainer: training.Trainer):
        """Lane i: params from fold_in(fold_in(PRNGKey(seed), s_i), 0), noise key from (…, 1)."""
        cfg = model_config(self.config, cell.depth)

        def one(seed):
            key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), seed)
            params = lru_local.init(jax.random.fold_in(key, 0), cfg)
            return trainer.init(jax.random.fold_in(key, 1), params)

        return jax.jit(jax.vmap(one))(jnp.asarray(cell.seeds))

    def chunk_fn(self, trainer: training.Trainer, depth: int, state, batches, lrs):
        """AOT-compiled `lane_chunk` of the trainer, cached per shape."""
        key = (trainer.name, depth, batches.shape, lrs.shape)
        if key not in self._chunk_fns:
            run_chunk = lane_chunk(trainer, self.config.seed_batch[trainer.name])
            start = time.perf_counter()
            compiled = jax.jit(run_chunk).lower(state, batches, lrs).compile()
            memory = compiled.memory_analysis()
            self._chunk_fns[key] = (
                compiled,
                int(getattr(memory, "temp_size_in_bytes", 0) or 0),
                time.perf_counter() - start,
            )
        return self._chunk_fns[key]

    def streams(self, split_name: str, cap: int):
        key = (split_name, cap)
        if key not in self._streams:
            split = getattr(self.corpus, split_name)
            ev = self.config.eval
            self._streams[key] = eval_streams(split, ev.streams, ev.window, cap)
        return self._streams[key]

    def evaluate(self, params, split_name: str, cap: int) -> np.ndarray:
        """Bits per byte of every lane's params on the (capped) split, read in order."""
        streams, n_scored = self.streams(split_name, cap)
        sums = np.asarray(
            jax.device_get(
                self._eval_fn(
                    params,
                    jnp.asarray(streams),
                    self.config.eval.window,
                    self.config.model.activation,
                )
            ),
            np.float64,
        )
        return sums.sum(axis=-1) / n_scored / math.log(2.0)

    def remaining_work(self, current: Cell, current_step: int) -> float:
        """Estimated seconds left in the whole sweep (probes and training), from measured rates."""
        fallback = np.mean(list(self.rates.values())) if self.rates else 0.0
        c = self.config
        plan = [
            (cell.id, cell.trainer, cell.depth, len(cell.lrs), cell.steps)
            for cell in self.probe_cells()
        ]
        plan += [
            (f"train/{t}/depth{d}", t, d, c.num_seeds, c.steps)
            for d in c.depths
            for t in c.trainers
        ]
        total = 0.0
        for cell_id, trainer, depth, lanes, steps in plan:
            if cell_id in self.meta["done"]:
                continue
            steps -= current_step if cell_id == current.id else 0
            total += steps * depth * lanes * self.rates.get(trainer, fallback)
        return total

    def run_cell(self, cell: Cell, arrays) -> None:
        config = self.config
        trainer = study_trainer(config, cell.trainer, model_config(config, cell.depth))
        state = self.init_state(cell, trainer)
        start_chunk = 0
        current = self.meta["current"]
        if current is not None and current["cell"] == cell.id and arrays is not None:
            state = checkpoint.restore(state, arrays)
            start_chunk = current["chunk"]
        lrs = jnp.asarray(cell.lrs, jnp.float32)
        bounds = list(range(0, cell.steps, config.chunk_steps))
        tokens_per_step = config.batch_size * config.seq_len * len(cell.lrs)
        diverged = np.zeros(len(cell.lrs), bool)
        temp_bytes = compile_s = 0.0
        train_s = tokens_run = 0.0  # this process's share (a resumed cell ran part elsewhere)
        for index in range(start_chunk, len(bounds)):
            first = bounds[index]
            n = min(config.chunk_steps, cell.steps - first)
            batches = np.stack(
                [
                    text.random_windows(
                        self.corpus.train,
                        config.batch_size,
                        config.seq_len + 1,
                        config.data_seed,
                        step=first + i,
                    )
                    for i in range(n)
                ]
            )
            digest = zlib.crc32(batches.tobytes())  # lets anyone check both trainers' data
            compiled, temp_bytes, compile_s = self.chunk_fn(
                trainer, cell.depth, state, batches, lrs
            )
            tick = time.perf_counter()
            state, metrics = compiled(state, jnp.asarray(batches), lrs)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - tick
            train_s += seconds
            tokens_run += tokens_per_step * n
            self.rates[cell.trainer] = seconds / (n * cell.depth * len(cell.lrs))
            diverged |= self._check_finite(cell, metrics, first)
            loss = np.asarray(metrics["loss"], np.float64)  # [lanes, n]
            rows = [
                {
                    "phase": cell.kind,
                    "trainer": cell.trainer,
                    "depth": cell.depth,
                    "seed": cell.seeds[lane],
                    "lr": cell.lrs[lane],
                    "step": first + n,
                    "train_loss_nats": float(np.mean(loss[lane])),
                    "train_bpb": float(np.mean(loss[lane]) / math.log(2.0)),
                    "grad_norm": float(np.asarray(metrics["grad_norm"])[lane, -1]),
                    "tokens_per_s": tokens_per_step * n / seconds,
                    "batches_crc32": digest,
                }
                for lane in range(len(cell.lrs))
            ]
            if "local_losses" in metrics:  # local / online: every layer's own loss, chunk mean
                layer_losses = np.asarray(metrics["local_losses"], np.float64).mean(axis=1)
                for lane, row in enumerate(rows):
                    row["layer_losses"] = layer_losses[lane].tolist()
            self._append_metrics(rows)
            cell_eta = seconds / n * (cell.steps - first - n)
            print(
                f"[{cell.kind} {trainer_label(config, cell.trainer)} depth {cell.depth}] "
                f"step {first + n}/{cell.steps} | loss {np.nanmean(loss[:, -1]):.4f} nats "
                f"({np.nanmean(loss) / math.log(2.0):.3f} bpb over chunk) | "
                f"{tokens_per_step * n / seconds:,.0f} tok/s | "
                f"ETA cell {_clock(cell_eta)}, sweep "
                f"{_clock(self.remaining_work(cell, first + n))}",
                flush=True,
            )
            self.meta["current"] = {"cell": cell.id, "chunk": index + 1}
            self._save(state)
        self._finish_cell(cell, state, diverged, temp_bytes, compile_s, train_s, tokens_run)

    def _check_finite(self, cell: Cell, metrics: dict, first: int) -> np.ndarray:
        """Lanes that went non-finite; in a training cell that is an error naming the culprit."""
        bad = np.zeros(len(cell.lrs), bool)
        for quantity in ("loss", "grad_norm"):
            values = np.asarray(metrics[quantity])
            finite = np.isfinite(values)
            bad |= ~finite.all(axis=1)
            if cell.kind == "train" and not finite.all():
                lane, step = map(int, np.argwhere(~finite)[0])
                raise FloatingPointError(
                    f"non-finite training {quantity} ({values[lane, step]}) in trainer "
                    f"'{cell.trainer}', depth {cell.depth}, step {first + step + 1} "
                    f"(seed {cell.seeds[lane]}, lr {cell.lrs[lane]}): lower the learning rate "
                    f"(--config.lr_probe.grid) or check the data"
                )
        return bad

    def _finish_cell(self, cell, state, diverged, temp_bytes, compile_s, train_s, tokens_run):
        config = self.config
        tick = time.perf_counter()
        if cell.kind == "probe":
            bpb = self.evaluate(state.params, "valid", config.lr_probe.eval_bytes)
            bpb = np.where(diverged | ~np.isfinite(bpb), np.inf, bpb)
            grid = [float(lr) for lr in config.lr_probe.grid]
            per_lr = {lr: bpb[np.asarray(cell.lrs) == lr] for lr in grid}
            means = {lr: float(np.mean(v)) for lr, v in per_lr.items()}
            if not any(np.isfinite(list(means.values()))):
                raise FloatingPointError(
                    f"every learning rate of the probe diverged for trainer '{cell.trainer}' at "
                    f"depth {cell.depth}; add smaller values to --config.lr_probe.grid"
                )
            winner = min(grid, key=lambda lr: means[lr])
            result = {
                "lrs": list(cell.lrs),
                "seeds": list(cell.seeds),
                "valid_bpb": [float(v) for v in bpb],
                "winner": winner,
            }
            print(
                f"[probe {trainer_label(config, cell.trainer)} depth {cell.depth}] valid bpb by lr "
                + ", ".join(f"{lr:g}: {m:.4f}" for lr, m in means.items())
                + f" -> {winner:g}",
                flush=True,
            )
            if winner in (min(grid), max(grid)) and len(grid) > 1:
                print(
                    f"note: the probe's winner {winner:g} is at the edge of lr_probe.grid; "
                    "extending the grid may find a better rate",
                    flush=True,
                )
        else:
            valid = self.evaluate(state.params, "valid", config.eval.valid_bytes)
            test = self.evaluate(state.params, "test", config.eval.test_bytes)
            result = {
                "lr": cell.lrs[0],
                "valid_bpb": [float(v) for v in valid],
                "test_bpb": [float(v) for v in test],
                "train_seconds": train_s,
                "compile_seconds": compile_s,
                "tokens_per_s": tokens_run / train_s if train_s else None,
                "chunk_temp_bytes": temp_bytes,
            }
            self._append_metrics(
                [
                    {
                        "phase": "eval",
                        "trainer": cell.trainer,
                        "depth": cell.depth,
                        "seed": seed,
                        "step": cell.steps,
                        "valid_bpb": result["valid_bpb"][i],
                        "test_bpb": result["test_bpb"][i],
                    }
                    for i, seed in enumerate(cell.seeds)
                ]
            )
            print(
                f"[train {trainer_label(config, cell.trainer)} depth {cell.depth}] "
                f"valid bpb {_mean_std(valid)}, test bpb {_mean_std(test)} "
                f"(eval {time.perf_counter() - tick:.1f}s)",
                flush=True,
            )
        result["eval_seconds"] = time.perf_counter() - tick
        self.meta["done"][cell.id] = result
        self.meta["current"] = None
        self._save()

    # ----- the study ---------------------------------------------------------------------------

    def run(self) -> dict:
        arrays = self.start()
        self.corpus = text.load_corpus()
        print(self.corpus.describe(), flush=True)
        probes = self.probe_cells()
        for cell in probes:
            if cell.id not in self.meta["done"]:
                self.run_cell(cell, arrays)
        results.write_text(self.workdir / "lr_probe.md", self.probe_table())
        cells = self.train_cells()
        for cell in cells:
            if cell.id not in self.meta["done"]:
                self.run_cell(cell, arrays)
        return self.write_outputs(cells)

    def data_lines(self) -> str:
        ev = self.config.eval
        lines = [self.corpus.describe()]
        for split, cap in (("valid", ev.valid_bytes), ("test", ev.test_bytes)):
            _, n_scored = self.streams(split, cap)
            size = getattr(self.corpus, split).size
            capped = f" (cap {cap:,})" if cap else ""
            lines.append(f"{split}: {n_scored:,} of {size:,} bytes scored{capped}")
        lines.append(
            f"Evaluation: each split read in order as {ev.streams} contiguous streams in windows "
            f"of {ev.window} bytes, the recurrent state carried across windows."
        )
        return "\n".join(lines)

    def probe_table(self) -> str:
        config = self.config
        probe = config.lr_probe
        _, n_scored = self.streams("valid", probe.eval_bytes)
        rows = []
        for cell in self.probe_cells():
            result = self.meta["done"][cell.id]
            bpb = np.asarray(result["valid_bpb"])
            for lr in probe.grid:
                values = bpb[np.asarray(result["lrs"]) == float(lr)]
                mark = "**winner**" if float(lr) == result["winner"] else ""
                if mark and float(lr) in (min(probe.grid), max(probe.grid)):
                    mark += " (edge of the grid)"
                rows.append(
                    [
                        trainer_label(config, cell.trainer),
                        cell.depth,
                        f"{lr:g}",
                        _mean_std(values),
                        mark,
                    ]
                )
        return (
            f"{self.corpus.describe()}\n\n"
            f"Learning-rate probe: {probe.steps} steps of Adam per run (B={config.batch_size}, "
            f"T={config.seq_len}), {probe.num_seeds} seed(s); validation bpb on the first "
            f"{n_scored:,} bytes of the valid split, read in order with state carried "
            f"(inf = diverged). Each trainer uses its own winner; a depth not probed takes the "
            f"nearest probed depth's.\n\n"
            + results.markdown_table(["trainer", "depth", "lr", "valid bpb", ""], rows)
        )

    def result_table(self, cells: list[Cell], split: str) -> str:
        config = self.config
        trainers = list(config.trainers)
        headers = ["depth"] + [f"{trainer_label(config, t)} (bpb)" for t in trainers]
        paired = "bptt" in trainers and "local" in trainers
        if paired:
            headers.append("gap (local − BPTT)")
        rows = []
        done = self.meta["done"]
        for depth in config.depths:
            values = {
                t: np.asarray(done[f"train/{t}/depth{depth}"][f"{split}_bpb"]) for t in trainers
            }
            row = [depth] + [_mean_std(values[t]) for t in trainers]
            if paired:
                row.append(_mean_std(values["local"] - values["bptt"], signed=True))
            rows.append(row)
        lrs = "; ".join(
            f"{trainer_label(config, t)} "
            + ", ".join(
                f"{c.lrs[0]:g}" + ("" if len({d.lrs[0] for d in mine}) == 1 else f" (L={c.depth})")
                for c in (mine[:1] if len({d.lrs[0] for d in mine}) == 1 else mine)
            )
            for t in trainers
            for mine in [[c for c in cells if c.trainer == t]]
        )
        return (
            f"Held-out {split} bits per byte after {config.steps} steps of Adam "
            f"(B={config.batch_size}, T={config.seq_len}, H={config.model.d_model}, "
            f"N={config.model.d_state}), mean ± std over {config.num_seeds} seed(s); the gap is "
            f"paired by seed. Learning rates from the probe: {lrs}.\n\n"
            + results.markdown_table(headers, rows)
        )

    def write_outputs(self, cells: list[Cell]) -> dict:
        config = self.config
        table = (
            f"{self.data_lines()}\n\n{self.result_table(cells, 'valid')}\n"
            f"{self.result_table(cells, 'test')}"
        )
        results.write_text(self.workdir / "table.md", table)
        done = self.meta["done"]
        series = {}
        for t in config.trainers:
            valid = np.asarray([done[f"train/{t}/depth{d}"]["valid_bpb"] for d in config.depths])
            series[trainer_label(config, t)] = (
                np.asarray(config.depths),
                valid.mean(axis=1),
                valid.std(axis=1),
            )
        corpus_label = self.corpus.name + (
            " (stand-in for enwik8)" if self.corpus.is_standin else ""
        )
        plots.line_plot(
            self.workdir / "bpb_vs_depth.png",
            series,
            xlabel="depth L",
            ylabel="validation bits per byte",
            title=f"Depth study on {corpus_label}, {config.steps} steps",
        )
        rows = results.read_jsonl(self.metrics_path)
        curves = {}
        for t in config.trainers:
            for d in config.depths:
                mine = [
                    r
                    for r in rows
                    if r["phase"] == "train" and r["trainer"] == t and r["depth"] == d
                ]
                steps = sorted({r["step"] for r in mine})
                mean = [np.mean([r["train_bpb"] for r in mine if r["step"] == s]) for s in steps]
                curves[f"{trainer_label(config, t)} L={d}"] = (
                    np.asarray(steps),
                    np.asarray(mean),
                    None,
                )
        plots.line_plot(
            self.workdir / "training_curves.png",
            curves,
            xlabel="step",
            ylabel="training bits per byte (chunk mean, mean over seeds)",
            title=f"Training curves on {corpus_label}",
        )
        summary = {
            "finished": True,
            "data": self.corpus.summary(),
            "cells": done,
            "elapsed_s": self.meta["elapsed_s"] + time.perf_counter() - self._clock,
        }
        results.write_json(self.workdir / "summary.json", summary)
        print(table, flush=True)
        print(f"sweep time {summary['elapsed_s'] / 60:.1f} min (training, probes, evaluation)")
        return summary


def _mean_std(values, signed: bool = False) -> str:
    values = np.asarray(values, np.float64)
    fmt = "+.3f" if signed else ".3f"
    mean = round(float(np.mean(values)), 3) + 0.0  # no "-0.000"
    if values.size == 1:
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} ± {np.std(values):.3f}"


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run(config, workdir: str | Path) -> dict:
    """Runs (or resumes, or re-prints) the sweep; returns the summary written to the workdir."""
    workdir = Path(workdir)
    finished = results.finished_run(workdir, config.to_dict())
    if finished is not None:
        table, summary = finished
        print(table)
        return summary
    check_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    return Sweep(config, workdir).run()


if __name__ == "__main__":
    cli.run_study("enwik8_depth", run, "Study config.")
