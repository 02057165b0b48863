"""The one study runner: lanes in one compiled program, chunked, checkpointed, resumable, sharded.

A study is a function `study(config, runner) -> (table, summary)` that describes `Run`s and hands
each to `runner.run`, in order; a later run may depend on an earlier one's result (an lr probe
picks the lr of the sweep). `run_study(config, workdir, study)` does everything around it:

    python -m experiments.<study> --config=...:<preset>   ->  cli.run_study  ->  runner.run_study

A `Run` is one compiled program over `lanes` (seed × learning rate × …): each lane's state advances
by `step(state, batch, args) -> (state, metrics)`, `chunk` steps per jitted call (`lax.scan`), all
lanes at once (`jax.vmap`, or `jax.lax.map` over groups of `group` lanes where vmapping loses on
CPU), lanes sharded over a `Mesh` of the local devices. After every chunk the runner

- records every per-step metric ([lanes, steps, ...]) and `chunk_end(state)` ([lanes, chunks, ...]),
- applies the run's non-finite policy to the `watch`ed metrics: "record" marks the lane diverged at
  its first non-finite step and goes on, "stop" raises naming the run, lane, quantity and step,
- appends one row per lane to metrics.jsonl (chunk means of the scalar metrics, or `rows(...)`),
- prints a progress line (steps/s, lanes, ETA of the run and of everything announced by `plan`),
- writes an atomic checkpoint (states, records, the metrics.jsonl length, the done runs' results).

A killed process (SIGKILL included) resumes from the last checkpoint to bit-identical numbers: the
batch of step t is a pure function of t, states and records come back exactly, metrics.jsonl is
cut to its checkpointed length. A finished run's `finish(state, records, diverged)` result is kept
in the checkpoint (and its records in runs/<id>.npz), so `run` returns it without computing; a
finished study (summary.json with finished = true and the same config) re-prints its table. A
checkpoint or config.json of another config is refused.

The finished runs also go to a small ledger, runs/done.json (their results, the metrics.jsonl
length after them, elapsed seconds). The checkpoint holds full states and is not committed; the
ledger and runs/ are, so a workdir whose checkpoint is gone (deleted, or a fresh clone) resumes
after its last finished run instead of starting over; only the run then in progress is redone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiments import checkpoint, results

POLICIES = ("record", "stop")


@dataclasses.dataclass
class Run:
    """One compiled program of lanes; see the module docstring for the protocol.

    init() -> lane states, every leaf with a leading [lanes] axis (typed PRNG keys allowed).
    step(state, batch, args) -> (state, metrics): one lane, one step; metrics a dict of arrays.
    batches(first, n) -> the batches of steps [first, first + n): leaves [n, ...] shared by all
      lanes, or [lanes, n, ...] with per_lane_batches=True. Must depend on `first` and `n` only.
    args: per-lane constants (leaves [lanes, ...], e.g. learning rates) or None.
    finish(state, records, diverged) -> JSON-able result; records: {name: [lanes, steps, ...]}
      plus {"chunk/<name>": [lanes, chunks, ...]}; diverged: int [lanes], first non-finite step
      or -1.
    """

    id: str
    label: str
    lanes: list[dict]
    init: Callable[[], Any]
    step: Callable[..., tuple[Any, dict]]
    batches: Callable[[int, int], Any]
    steps: int
    chunk: int
    finish: Callable[..., dict]
    args: Any = None
    per_lane_batches: bool = False
    chunk_end: Callable[[Any], dict] | None = None
    on_nonfinite: str = "record"
    watch: tuple[str, ...] = ("loss",)
    group: int = 0
    rows: Callable[..., list[dict]] | None = None  # (first, n, metrics, extra, seconds) -> rows
    rate_key: str | None = None
    cost: float = 1.0  # relative cost of one lane-step (for the ETA of runs not yet timed)

    def __post_init__(self):
        if self.on_nonfinite not in POLICIES:
            raise ValueError(f"on_nonfinite={self.on_nonfinite!r}; choose one of {POLICIES}")
        for name in ("steps", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Run {self.id}: {name} must be a positive int, got {value!r}")
        if not self.lanes:
            raise ValueError(f"Run {self.id} has no lanes")


def seed_keys(seeds, parts: int, *, root: int | None = None):
    """Per-seed PRNG keys, [len(seeds), parts]: the suite's one key recipe.

    root None: typed keys split(key(seed), parts). root given: raw keys
    fold_in(fold_in(PRNGKey(root), seed), i) for i < parts (the depth study's recipe).
    """
    seeds = jnp.asarray(list(seeds))
    if root is None:
        return jax.vmap(lambda s: jax.random.split(jax.random.key(s), parts))(seeds)

    def one(seed):
        key = jax.random.fold_in(jax.random.PRNGKey(root), seed)
        return jnp.stack([jax.random.fold_in(key, i) for i in range(parts)])

    return jax.vmap(one)(seeds)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _storable(tree):
    """Typed PRNG keys as their raw key data, so msgpack can hold them."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _unstorable(template, tree):
    return jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x) if _is_key(t) else x, template, tree
    )


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _host(tree):
    """Device arrays as host NumPy (gathered across processes on a multi-host mesh)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


class Runner:
    """Runs a study's `Run`s under one workdir (see the module docstring)."""

    def __init__(self, config: dict, workdir: Path, devices=None):
        self.config = results.as_saved(config)
        self.workdir = Path(workdir)
        self.ckpt_dir = self.workdir / "checkpoint"
        self.runs_dir = self.workdir / "runs"
        self.ledger_path = self.runs_dir / "done.json"
        self.metrics_path = self.workdir / "metrics.jsonl"
        self.devices = list(devices if devices is not None else jax.devices())
        self.mesh = Mesh(np.asarray(self.devices), ("lanes",))
        self.writer = jax.process_index() == 0
        self.rates: dict[str, float] = {}  # seconds per (lane-step · cost), per rate_key
        self._plan: dict[str, tuple] = {}  # run id -> (lane-steps · cost, rate key)
        self._programs: dict = {}
        self.compile_info: dict[str, dict] = {}  # run id -> temp bytes and seconds of its program
        self.busy_s: dict[str, float] = {}  # run id -> seconds this process spent running it
        self._arrays = None
        self.meta = {"config": self.config, "done": {}, "current": None, "metrics_lines": 0}
        self.meta["elapsed_s"] = 0.0

    # ----- the study's frame -------------------------------------------------------------------

    def device_info(self) -> dict:
        return {
            "devices": len(self.devices),
            "platform": self.devices[0].platform,
            "mesh": {"lanes": len(self.devices)},
            "processes": jax.process_count(),
        }

    def start(self) -> None:
        """Loads the newest readable checkpoint or starts afresh; refuses another config's."""
        saved = self.workdir / "config.json"
        if saved.exists() and json.loads(saved.read_text()) != self.config:
            raise ValueError(
                f"{self.workdir} holds a run of another config; use another --workdir or delete it"
            )
        latest = checkpoint.load_latest(self.ckpt_dir)
        ledger = self._ledger()
        if latest is None and ledger is not None:
            self.meta = {**ledger, "config": self.config, "current": None}
            print(
                f"resuming from {self.ledger_path.relative_to(self.workdir)} (no checkpoint): "
                f"{len(ledger['done'])} runs done",
                flush=True,
            )
            self._truncate_metrics(ledger["metrics_lines"])
        elif latest is None:
            if self.writer and self.metrics_path.exists():
                self.metrics_path.unlink()
        else:
            meta, arrays, path = latest
            if meta["config"] != self.config:
                raise ValueError(
                    f"{path} was written by another config; use another --workdir or delete "
                    f"{self.ckpt_dir} to start over"
                )
            self.meta, self._arrays = meta, arrays
            where = meta["current"] or {"run": "between runs", "step": 0}
            print(
                f"resuming from {path.name}: {len(meta['done'])} runs done, "
                f"{where['run']} at step {where['step']}",
                flush=True,
            )
            self._truncate_metrics(meta["metrics_lines"])
        self._tick = time.perf_counter()
        if self.writer:
            self.workdir.mkdir(parents=True, exist_ok=True)
            results.write_json(saved, self.config)

    def plan(self, runs: list[Run]) -> None:
        """Announces runs to come, so the progress line's ETA covers them."""
        for r in runs:
            self._plan[r.id] = (r.steps * len(r.lanes) * r.cost, r.rate_key or r.id)

    def complete(self, table: str, summary: dict) -> dict:
        """Writes table.md and summary.json (finished, devices, elapsed) and prints the table."""
        summary = {
            **summary,
            "finished": True,
            "runtime": self.device_info(),
            "elapsed_s": self._elapsed(),
        }
        if self.writer:
            results.write_text(self.workdir / "table.md", table)
            results.write_json(self.workdir / "summary.json", summary)
        print(table, flush=True)
        return results.as_saved(summary)

    def done(self, run_id: str) -> dict | None:
        return self.meta["done"].get(run_id)

    def records(self, run_id: str) -> dict:
        """The per-step records of a finished run (runs/<id>.npz, data only)."""
        with np.load(self.runs_dir / f"{slug(run_id)}.npz", allow_pickle=False) as f:
            return {k.replace("__", "/"): f[k] for k in f.files}

    # ----- one run -----------------------------------------------------------------------------

    def run(self, run: Run) -> dict:
        """Runs (or resumes, or returns the stored result of) one Run."""
        if run.id in self.meta["done"]:
            return self.meta["done"][run.id]
        n_lanes, n_dev = len(run.lanes), len(self.devices)
        padded = -(-n_lanes // n_dev) * n_dev
        state = run.init()
        records, start = None, 0
        current = self.meta["current"]
        if current is not None and current["run"] == run.id and self._arrays is not None:
            restored = checkpoint.restore(
                {"state": _storable(state), "records": self._record_template(run, state)},
                self._arrays,
            )
            state = _unstorable(state, restored["state"])
            records, start = restored["records"], current["step"]
        if records is None:
            records = self._record_template(run, state)
        diverged = np.asarray(records.pop("_diverged"), np.int64)
        args = run.args if run.args is not None else jnp.zeros((n_lanes,), jnp.float32)
        lanes_spec = NamedSharding(self.mesh, PartitionSpec("lanes"))
        place = lambda tree: jax.device_put(_pad(tree, padded), lanes_spec)  # noqa: E731
        state, args = place(state), place(args)
        print(f"{run.label}: {n_lanes} lanes, {run.steps} steps", flush=True)
        busy, steps_here = 0.0, 0  # this process's seconds per chunk, compilation excluded
        for first in range(start, run.steps, run.chunk):
            t_chunk = time.perf_counter()
            n = min(run.chunk, run.steps - first)
            batch = run.batches(first, n)
            if run.per_lane_batches:
                batch = place(batch)
            program, compile_s = self._program(run, state, args, batch)
            tick = time.perf_counter()
            state, metrics, extra = program(state, args, batch)
            metrics, extra = _host((metrics, extra))
            seconds = time.perf_counter() - tick
            metrics = {k: np.asarray(v)[:n_lanes] for k, v in metrics.items()}
            extra = {k: np.asarray(v)[:n_lanes] for k, v in extra.items()}
            for name, values in metrics.items():
                records[name][:, first : first + n] = values
            for name, values in extra.items():
                records["chunk/" + name][:, first // run.chunk] = values
            self._check_finite(run, metrics, first, diverged)
            self._append_rows(run, first, n, metrics, extra, seconds)
            steps_here += n
            self.rates[run.rate_key or run.id] = seconds / (n * n_lanes * run.cost)
            self.meta["current"] = {"run": run.id, "step": first + n}
            self._save(
                {
                    "state": _host(_storable(_unpad(state, n_lanes))),
                    "records": {**records, "_diverged": diverged},
                }
            )
            busy += time.perf_counter() - t_chunk - compile_s
            self.busy_s[run.id] = busy
            self._progress(run, first + n, metrics, steps_here, busy)
        final = _unpad(state, n_lanes)
        result = run.finish(final, records, diverged)
        if self.writer:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            path = self.runs_dir / f"{slug(run.id)}.npz"
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez_compressed(
                tmp, diverged=diverged, **{k.replace("/", "__"): v for k, v in records.items()}
            )
            tmp.replace(path)
        self.meta["done"][run.id] = results.as_saved(result)
        self.meta["current"] = None
        self._arrays = None
        self._save()
        if self.writer:
            ledger = {k: self.meta[k] for k in ("config", "done", "metrics_lines", "elapsed_s")}
            results.write_json(self.ledger_path, ledger)
        return self.meta["done"][run.id]

    def _ledger(self) -> dict | None:
        """runs/done.json if it was written under this config (see the module docstring)."""
        if not self.ledger_path.exists():
            return None
        ledger = json.loads(self.ledger_path.read_text())
        if ledger.get("config") != self.config:
            raise ValueError(
                f"{self.ledger_path} was written by another config; use another --workdir or "
                f"delete {self.runs_dir} to start over"
            )
        return ledger

    def _record_template(self, run: Run, state) -> dict:
        """Zero-filled records of the run's shapes (from jax.eval_shape of one lane's chunk)."""
        n_lanes = len(run.lanes)
        args = run.args if run.args is not None else jnp.zeros((n_lanes,), jnp.float32)
        program = lanes_program(
            run.step, per_lane_batches=run.per_lane_batches, chunk_end=run.chunk_end
        )
        first = lambda tree: jax.tree.map(lambda x: x[:1], tree)  # noqa: E731

        def one_lane(state, args, batch):
            return program(
                first(state), first(args), first(batch) if run.per_lane_batches else batch
            )

        batch = jax.eval_shape(lambda: run.batches(0, 1))
        _, metrics, extra = jax.eval_shape(one_lane, state, args, batch)
        n_chunks = math.ceil(run.steps / run.chunk)
        records = {
            name: _blank((n_lanes, run.steps, *v.shape[2:]), v) for name, v in metrics.items()
        }
        for name, v in extra.items():
            records["chunk/" + name] = _blank((n_lanes, n_chunks, *v.shape[1:]), v)
        records["_diverged"] = np.full((n_lanes,), -1, np.int64)
        return records

    def _program(self, run: Run, state, args, batch):
        """The run's chunk program, AOT-compiled per batch shape (the last chunk may be shorter)."""
        shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), batch)
        key = (run.id, str(shapes))
        if key in self._programs:
            return self._programs[key], 0.0
        self._programs = {k: v for k, v in self._programs.items() if k[0] == run.id}
        tick = time.perf_counter()
        program = self._jitted(run)
        compiled = program.lower(state, args, batch).compile()
        memory = compiled.memory_analysis()
        temp = int(getattr(memory, "temp_size_in_bytes", 0) or 0)
        print(
            f"  compiled {run.label} in {time.perf_counter() - tick:.1f}s "
            f"(temp {temp / 2**20:.1f} MiB)",
            flush=True,
        )
        self._programs[key] = compiled
        seconds = time.perf_counter() - tick
        self.compile_info[run.id] = {"temp_bytes": temp, "seconds": seconds}
        return compiled, seconds

    def _jitted(self, run: Run):
        """The jitted chunk program of all lanes; over several devices a shard_map of the lanes
        whose in/out shardings are pinned too (XLA would replicate zero-size outputs otherwise)."""
        lanes = lanes_program(
            run.step,
            group=run.group,
            per_lane_batches=run.per_lane_batches,
            chunk_end=run.chunk_end,
        )
        if len(self.devices) == 1:
            return jax.jit(lanes)
        lane, batch = PartitionSpec("lanes"), PartitionSpec()
        if run.per_lane_batches:
            batch = lane
        mapped = jax.shard_map(
            lanes,
            mesh=self.mesh,
            in_specs=(lane, lane, batch),
            out_specs=lane,
            check_vma=False,  # lanes are independent; custom calls (rtrl.native) carry no VMA type
        )
        named = [NamedSharding(self.mesh, spec) for spec in (lane, lane, batch)]
        return jax.jit(mapped, in_shardings=tuple(named), out_shardings=named[0])

    def _check_finite(self, run: Run, metrics: dict, first: int, diverged: np.ndarray) -> None:
        for quantity in run.watch:
            values = metrics[quantity].reshape(len(run.lanes), metrics[quantity].shape[1], -1)
            bad = ~np.isfinite(values).all(axis=2)
            for lane in np.flatnonzero(bad.any(axis=1)):
                step = first + int(np.argmax(bad[lane])) + 1
                where = ", ".join(f"{k} {v}" for k, v in run.lanes[lane].items())
                if run.on_nonfinite == "stop":
                    raise FloatingPointError(
                        f"non-finite {quantity} ({values[lane, step - first - 1].ravel()[0]}) in "
                        f"{run.label}, step {step} ({where}): lower the learning rate or check "
                        f"the data"
                    )
                if diverged[lane] < 0:
                    diverged[lane] = step
                    print(
                        f"  WARNING {run.label} ({where}): non-finite {quantity} at step {step};"
                        " the lane is recorded as diverged",
                        flush=True,
                    )

    def _append_rows(self, run, first, n, metrics, extra, seconds) -> None:
        if run.rows is not None:
            rows = run.rows(first, n, metrics, extra, seconds)
        else:
            rows = []
            for lane, labels in enumerate(run.lanes):
                row = {"run": run.id, **labels, "step": first + n}
                for name, values in metrics.items():
                    if values.ndim == 2:
                        row[name] = _finite_or_none(np.mean(values[lane], dtype=np.float64))
                for name, values in extra.items():
                    if values.ndim == 1:
                        row[name] = _finite_or_none(values[lane])
                rows.append(row)
        self.log(rows)

    def log(self, rows: list[dict]) -> None:
        """Appends rows to metrics.jsonl (kept consistent with the next checkpoint on resume)."""
        if self.writer:
            with open(self.metrics_path, "a") as handle:
                handle.write("".join(results.json_line(row) for row in rows))
        self.meta["metrics_lines"] += len(rows)

    def _truncate_metrics(self, n_lines: int) -> None:
        """Drops metric rows written after the checkpoint we resume from (and partial lines)."""
        if not self.writer or not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines(keepends=True)[:n_lines]
        results.write_text(self.metrics_path, "".join(lines))

    def _progress(self, run: Run, step: int, metrics: dict, steps_here: int, seconds: float):
        rate = steps_here / max(seconds, 1e-9)
        left = (run.steps - step) / rate
        loss = metrics.get(run.watch[0]) if run.watch else None
        loss_text = "" if loss is None else f" | {run.watch[0]} {np.nanmean(loss[:, -1]):.4g}"
        print(
            f"  [{run.label}] step {step}/{run.steps}{loss_text} | {rate:,.1f} steps/s x "
            f"{len(run.lanes)} lanes | ETA run {_clock(left)}, all {_clock(self._eta(run, left))}",
            flush=True,
        )

    def _eta(self, current: Run, current_left: float) -> float:
        fallback = float(np.mean(list(self.rates.values()))) if self.rates else 0.0
        total = current_left
        for run_id, (work, rate_key) in self._plan.items():
            if run_id != current.id and run_id not in self.meta["done"]:
                total += work * self.rates.get(rate_key, fallback)
        return total

    def _elapsed(self) -> float:
        now = time.perf_counter()
        self.meta["elapsed_s"] += now - self._tick
        self._tick = now
        return self.meta["elapsed_s"]

    def _save(self, arrays=None) -> None:
        self._elapsed()
        if self.writer:
            checkpoint.save(self.ckpt_dir, self.meta, arrays)


def lanes_program(step, *, group: int = 0, per_lane_batches: bool = False, chunk_end=None):
    """(states, args, batches) -> (states, metrics, extra) for all lanes: each lane runs
    `lax.scan` of step(state, batch, args) over the chunk's batches ([n, ...], or [lanes, n, ...]
    with per_lane_batches), then chunk_end(state). group 0: one `jax.vmap` over lanes; g > 0:
    `jax.lax.map` over lanes, g vmapped at a time (on CPU the reverse-mode trainers lose
    throughput to cache pressure when vmapped; see experiments/benchmarks/enwik8_depth.py)."""

    def one(state, args, batch):
        state, metrics = jax.lax.scan(lambda s, b: step(s, b, args), state, batch)
        extra = chunk_end(state) if chunk_end is not None else {}
        return state, metrics, extra

    batch_axis = 0 if per_lane_batches else None

    def lanes(states, args, batch):
        if group == 0:
            return jax.vmap(one, in_axes=(0, 0, batch_axis))(states, args, batch)
        if per_lane_batches:
            return jax.lax.map(lambda x: one(*x), (states, args, batch), batch_size=group)
        return jax.lax.map(lambda x: one(*x, batch), (states, args), batch_size=group)

    return lanes


def _pad(tree, size: int):
    """Leading axis padded to `size` with copies of lane 0 (lanes divisible by the mesh)."""

    def pad(x):
        extra = size - x.shape[0]
        if extra == 0:
            return x
        return jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)])

    return jax.tree.map(pad, tree)


def _unpad(tree, size: int):
    return jax.tree.map(lambda x: x[:size], tree)


def _blank(shape, like):
    """Records not yet written: NaN for floats (kept in float64), zero otherwise."""
    dtype = np.dtype(like.dtype)
    if dtype.kind == "f":
        return np.full(shape, np.nan, np.float64)
    return np.zeros(shape, dtype)


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def run_study(config, workdir, study: Callable, check: Callable | None = None) -> dict:
    """Re-prints a finished study, or checks the config, starts (or resumes) the runner and calls
    study(config, runner) -> (table, summary); returns the summary written to summary.json."""
    workdir = Path(workdir)
    done = results.finished_run(workdir, config.to_dict())
    if done is not None:
        print(done[0], flush=True)
        return done[1]
    if check is not None:
        check(config)
    runner = Runner(config.to_dict(), workdir)
    runner.start()
    table, summary = study(config, runner)
    return runner.complete(table, summary)
