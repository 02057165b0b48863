"""The sparse-RTRL study: one preset per table of the paper (experiments/configs/rtrl_sparse.py).

    python -m experiments.rtrl_sparse --config=experiments/configs/rtrl_sparse.py:table3

A preset is a list of settings (task, cell, n) and methods (an algorithm from `rtrl.algorithms`
with options, optionally a learning-rate sweep). Every method of a setting sees the same streams
and the same initial parameters per seed; each (setting, method, lr) is one `experiments.runner`
Run whose lanes are the seeds, advanced `chunk` stream steps per jitted call.

Outputs under --workdir: config.json, metrics.jsonl (per run and chunk: mean loss per seed,
gradient cosine and magnitude ratio against a passive full-RTRL shadow where the setting asks for
one), summary.json, table.md (ours beside the paper's reported values where its text kept them),
mse_<setting>.png (online loss over the stream, mean over seeds, shifts marked), runs/ (per-step
records). A seed whose loss turns non-finite is reported as diverged with its step (divergence is
one of the paper's findings, so the sweep goes on).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rtrl
from experiments import runner
from experiments.cli import run_study
from experiments.reports import rtrl_sparse as report
from rtrl import forward, metrics, online, optimizers, tasks

SHADOW = "rtrl"  # the reference algorithm every method is compared with (never with itself)


def check_config(config) -> None:
    """Fail before any compute on a preset that names something unknown."""
    optimizers.get(config.optimizer, config.lr)
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {config.dtype!r}")
    for setting in config.settings:
        spec = task_spec(setting)
        for method in setting["methods"]:
            build_algorithm(setting, method, spec)
        labels = [m["label"] for m in setting["methods"]]
        for role in ("floor", "full"):
            if setting.get(role) and setting[role] not in labels:
                raise ValueError(f"{setting['name']}: {role} {setting[role]!r} not in {labels}")


def task_spec(setting) -> tasks.TaskSpec:
    return tasks.get(setting["task"], **setting["task_options"])


def build_algorithm(setting, method, spec):
    """The setting's cell and the method's algorithm; dense_until="shift" is the stream's first
    shift (so smoke presets, with shorter streams, keep the protocol)."""
    cell = rtrl.cells.get(setting["cell"], spec.n_in, setting["n_hidden"], spec.n_out)
    options = dict(method["options"])
    if options.get("dense_until") == "shift":
        options["dense_until"] = spec.shifts[0]
    algo = rtrl.algorithms.get(method["algo"], cell, loss=spec.loss, **options)
    return cell, algo


def seeds_of(config, setting) -> list[int]:
    return list(setting.get("seeds") or config.seeds)


def run_specs(config) -> list[dict]:
    """Every (setting, method, lr) to run, in order, with a stable id."""
    out = []
    for si, setting in enumerate(config.settings):
        for mi, method in enumerate(setting["methods"]):
            for li, lr in enumerate(method.get("lrs") or [config.lr]):
                out.append({"id": f"s{si}-m{mi}-l{li}", "setting": si, "method": mi, "lr": lr})
    return out


def streams(config, setting):
    """Per-seed keys [S, 3] (params, stream, algorithm) and the seeds' streams, vmapped."""
    spec = task_spec(setting)
    keys = runner.seed_keys(seeds_of(config, setting), 3)
    data = jax.jit(jax.vmap(spec.make))(keys[:, 1])
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    return spec, keys, jax.tree.map(lambda a: a.astype(dtype), data)


def make_run(config, work: dict, runner_: runner.Runner, setting_streams) -> runner.Run:
    """setting_streams: `streams(config, setting)` of the work's setting, shared by its runs."""
    setting = config.settings[work["setting"]]
    method = setting["methods"][work["method"]]
    spec, keys, data = setting_streams
    cell, algo = build_algorithm(setting, method, spec)
    shadow = None
    if setting.get("shadow") and method["algo"] != SHADOW:
        shadow = rtrl.algorithms.get(SHADOW, cell, loss=spec.loss)
    learner = online.make_online(algo, optimizers.get(config.optimizer, work["lr"]), shadow)
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    probe_state = jax.eval_shape(lambda k: algo.init(k, cell.init(k, dtype)), keys[0, 2])
    spectrum = bool(setting.get("spectrum_every")) and isinstance(
        probe_state, forward.SensitivityState | forward.DiagonalState
    )  # the state holds M, whole [n, R, m] or its diagonal blocks [n, G, m]
    seeds = seeds_of(config, setting)
    ys_all = rtrl.Target(data.ys, data.weights)

    def init():
        return jax.jit(jax.vmap(lambda k: learner.init(k[2], cell.init(k[0], dtype))))(keys)

    def step(state, batch, args):
        state, rec = learner.step(state, *batch)
        out = {"loss": rec.loss, "cosine": rec.cosine, "ratio": rec.magnitude_ratio}
        if shadow is not None:  # over Θ above; per group, the readout and the inflated cosine
            out.update(
                group_cosine=rec.group_cosine,  # [3] W_rec, W_in, b
                readout_norm=rec.readout_norm,  # [2] W_out, b_out
                shadow_readout_norm=rec.shadow_readout_norm,  # [2]
                readout_difference=rec.readout_difference,
                cosine_with_readout=rec.cosine_with_readout,
            )
        if spec.loss == "xent":
            out["prediction"] = rec.prediction
        return state, out

    def chunk_end(state):
        M_h = cell.hidden(state.algo_state.M)
        if isinstance(probe_state, forward.DiagonalState):
            # rows of disjoint support: orthogonal, so M's singular values are the row norms
            M_h = jnp.diag(jnp.linalg.norm(M_h.reshape(M_h.shape[0], -1), axis=1))
        rank, cond = metrics.jacobian_spectrum(M_h)
        row_cond = metrics.row_normalised_condition(M_h)
        return {"eff_rank": rank.astype(cond.dtype), "cond": cond, "row_cond": row_cond}

    def batches(first, n):
        window = slice(first, first + n)
        return data.xs[:, window], rtrl.Target(ys_all.value[:, window], ys_all.weight[:, window])

    def rows(first, n, values, extra, seconds):
        row = {"setting": setting["name"], "method": method["label"], "lr": work["lr"]}
        row.update(step=first + n, seeds=seeds, loss=_clean(values["loss"].mean(axis=1)))
        if np.isfinite(values["cosine"]).any():  # chunk means per seed, over Θ
            row["cosine"] = _clean(np.nanmean(values["cosine"], axis=1))
            row["magnitude_ratio"] = _clean(np.nanmean(values["ratio"], axis=1))
            if "group_cosine" in values:
                by_seed = np.nanmean(values["group_cosine"], axis=1)  # [S, 3]
                row["group_cosine"] = {
                    p: _clean(by_seed[:, i]) for i, p in enumerate(rtrl.cells.RECURRENT)
                }
                row["cosine_with_readout"] = _clean(
                    np.nanmean(values["cosine_with_readout"], axis=1)
                )
                row["readout_difference_max"] = _clean(
                    np.nanmax(values["readout_difference"], axis=1)
                )
        return [row]

    def finish(state, records, diverged):
        records = {**records, "seconds": runner_.busy_s.get(work["id"], 0.0)}
        score = getattr(state.algo_state, "score", None)
        if score is not None and score.shape[-1]:  # [S, n] Fisher of a dense phase
            records["fisher"] = np.asarray(score)
        return report.run_summary(config, setting, work, records, data)

    return runner.Run(
        id=work["id"],
        label=report.label(config, work),
        lanes=[{"seed": s} for s in seeds],
        init=init,
        step=step,
        batches=batches,
        steps=spec.length,
        chunk=setting.get("spectrum_every") or config.chunk,
        finish=finish,
        per_lane_batches=True,
        chunk_end=chunk_end if spectrum else None,
        rows=rows,
        cost=setting["n_hidden"] ** 3,
    )


def _clean(arr) -> list:
    return [float(x) if np.isfinite(x) else None for x in np.asarray(arr, np.float64)]


def study(config, runner_: runner.Runner):
    todo = run_specs(config)
    by_setting = {}  # every method of a setting reads the same streams: generate them once
    for work in todo:
        if work["setting"] not in by_setting:
            by_setting[work["setting"]] = streams(config, config.settings[work["setting"]])
    runs = [make_run(config, work, runner_, by_setting[work["setting"]]) for work in todo]
    runner_.plan(runs)
    done = {run.id: runner_.run(run) for run in runs}
    return report.write(config, runner_, todo, done)


def run(config, workdir: str | Path) -> dict:
    return runner.run_study(config, workdir, study, check=check_config)


if __name__ == "__main__":
    run_study("rtrl_sparse", run, "Sparse-RTRL study preset (…/rtrl_sparse.py:<table>).")
