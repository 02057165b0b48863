"""The sparse-RTRL study: one preset per table of the paper (experiments/configs/rtrl_sparse.py).

    python -m experiments.rtrl_sparse --config=experiments/configs/rtrl_sparse.py:table3

A preset is a list of settings (task, cell, n) and methods (an algorithm from `rtrl.algorithms`
with options, optionally a learning-rate sweep). Every method of a setting sees the same streams
and the same initial parameters per seed; seeds are one `jax.vmap`. Streams are run in chunks
(one jitted call each) so progress is printed and a checkpoint written after every chunk; a
finished (setting, method, lr) is stored as `cells/<id>.npz` with its per-step records.

Outputs under --workdir: config.json, metrics.jsonl (per method, seed and `log_every` block:
mean loss, gradient cosine and magnitude ratio against a passive full-RTRL shadow where the
setting asks for one, Jacobian spectrum samples), summary.json, table.md (ours beside the paper's
reported values where its text kept them), mse_<setting>.png (online MSE over the stream, mean
over seeds, with the shifts marked). A seed whose loss turns non-finite is reported as diverged
with its step (divergence is one of the paper's findings, so the sweep goes on).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rtrl
from experiments import checkpoint, plots, results
from experiments.cli import run_study
from rtrl import metrics, online, tasks

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop}


def check_config(config) -> None:
    """Fail before any compute on a preset that names something unknown."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; known: {sorted(OPTIMIZERS)}")
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
    cell = rtrl.cells.get(setting["cell"], spec.n_in, setting["n_hidden"], spec.n_out)
    algo = rtrl.algorithms.get(method["algo"], cell, loss=spec.loss, **method["options"])
    return cell, algo


def work_cells(config) -> list[dict]:
    """Every (setting, method, lr) to run, in order, with a stable id."""
    cells = []
    for si, setting in enumerate(config.settings):
        for mi, method in enumerate(setting["methods"]):
            for li, lr in enumerate(method.get("lrs") or [config.lr]):
                cells.append({"id": f"s{si}-m{mi}-l{li}", "setting": si, "method": mi, "lr": lr})
    return cells


def seeds_of(config, setting) -> list[int]:
    return list(setting.get("seeds") or config.seeds)


def _keys(seeds):
    keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
    return jax.vmap(lambda kd: jax.random.split(jax.random.wrap_key_data(kd), 3))(keys)


class Study:
    def __init__(self, config, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.cells_dir = workdir / "cells"
        self.ckpt_dir = workdir / "checkpoint"
        self.dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
        self.config_hash = hashlib.sha256(
            json.dumps(config.to_dict(), sort_keys=True).encode()
        ).hexdigest()[:16]

    # -- running ------------------------------------------------------------------------------

    def streams(self, setting):
        spec = task_spec(setting)
        keys = _keys(seeds_of(self.config, setting))
        data = jax.jit(jax.vmap(spec.make))(keys[:, 1])
        return spec, keys, jax.tree.map(lambda a: a.astype(self.dtype), data)

    def run_cell(self, work: dict) -> dict:
        config = self.config
        setting = config.settings[work["setting"]]
        method = setting["methods"][work["method"]]
        spec, keys, data = self.streams(setting)
        cell, algo = build_algorithm(setting, method, spec)
        shadow = None
        if setting.get("shadow") and method["algo"] != "rtrl":
            shadow = rtrl.algorithms.get("rtrl", cell, loss=spec.loss)
        runner = online.make_online(algo, OPTIMIZERS[config.optimizer](work["lr"]), shadow)
        spectrum = bool(setting.get("spectrum_every")) and method["algo"] in (
            "rtrl",
            "sparse_rtrl",
            "traces",
        )
        chunk = setting.get("spectrum_every") or config.chunk
        T = spec.length

        def init_one(k):
            params = cell.init(k[0], self.dtype)
            return runner.init(k[2], params)

        def advance_one(state, xs, ys):
            state, rec = runner.scan(state, xs, ys)
            if spectrum:
                M_h = cell.hidden(state.algo_state.M)
                rank, cond = metrics.jacobian_spectrum(M_h)
                spec_row = jnp.stack([rank.astype(cond.dtype), cond])
            else:
                spec_row = jnp.full((2,), jnp.nan, rec.loss.dtype)
            return state, rec, spec_row

        advance = jax.jit(jax.vmap(advance_one))
        S = keys.shape[0]
        states = jax.jit(jax.vmap(init_one))(keys)
        store = {
            "loss": np.zeros((S, T), np.float64),
            "cosine": np.full((S, T), np.nan),
            "ratio": np.full((S, T), np.nan),
            "prediction": np.zeros((S, T, spec.n_out), np.float32)
            if spec.loss == "xent"
            else np.zeros((S, 0), np.float32),
            "spectrum": np.full((S, math.ceil(T / chunk), 2), np.nan),
        }
        start = 0
        latest = checkpoint.load_latest(self.ckpt_dir)
        if latest is not None and latest[0].get("cell") == work["id"]:
            meta, arrays, path = latest
            if meta.get("config_hash") != self.config_hash:
                raise ValueError(f"{path} was written by another config; use a new --workdir")
            restored = checkpoint.restore({"states": _storable(states), "store": store}, arrays)
            states = _unstorable(states, restored["states"])
            store, start = restored["store"], meta["step"]
            print(f"  resuming {work['id']} at step {start} from {path.name}", flush=True)
        ys_all = rtrl.Target(data.ys, data.weights)
        label = self.label(work)
        diverged = {}
        t0, compile_s = time.time(), None
        for lo in range(start, T, chunk):
            hi = min(lo + chunk, T)
            tc = time.time()
            ys = rtrl.Target(ys_all.value[:, lo:hi], ys_all.weight[:, lo:hi])
            states, rec, spec_row = advance(states, data.xs[:, lo:hi], ys)
            loss = np.asarray(rec.loss, np.float64)
            if compile_s is None:
                compile_s = time.time() - tc
            store["loss"][:, lo:hi] = loss
            store["cosine"][:, lo:hi] = np.asarray(rec.cosine)
            store["ratio"][:, lo:hi] = np.asarray(rec.magnitude_ratio)
            if spec.loss == "xent":
                store["prediction"][:, lo:hi] = np.asarray(rec.prediction)
            store["spectrum"][:, lo // chunk] = np.asarray(spec_row)
            for s in range(S):
                bad = np.flatnonzero(~np.isfinite(loss[s]))
                if bad.size and s not in diverged:
                    diverged[s] = lo + int(bad[0])
                    print(
                        f"  WARNING {label}: seed {seeds_of(config, setting)[s]} diverged "
                        f"(non-finite loss) at step {diverged[s]}; it is reported as diverged",
                        flush=True,
                    )
            checkpoint.save(
                self.ckpt_dir,
                {"cell": work["id"], "step": hi, "config_hash": self.config_hash},
                {"states": _storable(states), "store": store},
            )
            rate = (hi - start) / max(time.time() - t0, 1e-9)
            eta = (T - hi) / rate
            print(
                f"  {label} | step {hi}/{T} | loss {np.nanmean(loss):.4g} | "
                f"{rate:,.0f} steps/s x {S} seeds | ETA {eta:.0f}s",
                flush=True,
            )
        store["seconds"] = np.asarray(time.time() - t0)
        return store

    def label(self, work) -> str:
        setting = self.config.settings[work["setting"]]
        method = setting["methods"][work["method"]]
        lr = f" lr={work['lr']:g}" if method.get("lrs") else ""
        return f"[{setting['name']}] {method['label']}{lr}"

    def run(self) -> dict:
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        todo = work_cells(self.config)
        t0 = time.time()
        for i, work in enumerate(todo):
            path = self.cells_dir / f"{work['id']}.npz"
            if path.exists():
                continue
            print(f"({i + 1}/{len(todo)}) {self.label(work)}", flush=True)
            store = self.run_cell(work)
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **store)
            tmp.replace(path)
        print(f"all {len(todo)} runs done in {time.time() - t0:.0f}s", flush=True)
        return self.write_outputs(todo)

    # -- summarising ----------------------------------------------------------------------------

    def load(self, work) -> dict:
        with np.load(self.cells_dir / f"{work['id']}.npz") as f:
            return {k: f[k] for k in f.files}

    def cell_summary(self, setting, work, store) -> dict:
        config, spec = self.config, task_spec(setting)
        loss, window = store["loss"], config.window
        finite = np.all(np.isfinite(loss), axis=1)
        out = {"lr": work["lr"], "diverged": (~finite).astype(int).tolist()}
        if setting["metric"] in ("shift", "first_shift"):
            shift = spec.shifts[0]
            with np.errstate(invalid="ignore"):
                if setting["metric"] == "shift":
                    pre, post = metrics.pre_post_mse(loss, shift, window)
                else:
                    pre = metrics.window_mean(loss, shift - window, shift)
                    post = metrics.first_shift_post(loss, shift, spec.shifts[1], window)
            out["pre"], out["post"] = np.asarray(pre).tolist(), np.asarray(post).tolist()
            cos = store["cosine"]
            if np.isfinite(cos).any():
                out["cos_pre"] = np.nanmean(cos[:, shift - window : shift], axis=1).tolist()
                out["cos_post"] = np.nanmean(cos[:, shift : shift + window], axis=1).tolist()
                out["ratio_median"] = np.nanmedian(store["ratio"], axis=1).tolist()
            spectra = store["spectrum"]
            if np.isfinite(spectra).any():
                out["eff_rank"] = np.nanmean(spectra[:, :, 0], axis=1).tolist()
                out["cond"] = np.nanmean(spectra[:, :, 1], axis=1).tolist()
                out["cond_range"] = [
                    float(np.nanmin(spectra[:, :, 1])),
                    float(np.nanmax(spectra[:, :, 1])),
                ]
        elif setting["metric"] == "copy":
            steps = 2 * spec_arg(setting, "seq_len", 5) * config.copy_eval_episodes
            _, _, data = self.streams(setting)
            acc = metrics.copy_accuracy(
                store["prediction"], np.asarray(data.ys), np.asarray(data.weights), steps
            )
            out["post"] = np.asarray(acc).tolist()
        else:  # adding
            steps = spec_arg(setting, "episode_len", 50) * config.adding_eval_episodes
            _, _, data = self.streams(setting)
            w = np.asarray(data.weights)[:, -steps:]
            out["post"] = (np.sum(loss[:, -steps:] * w, axis=1) / np.sum(w, axis=1)).tolist()
        out["seconds"] = float(store["seconds"])
        return out

    def write_outputs(self, todo) -> dict:
        config = self.config
        summary = {"preset": config.preset, "title": config.title, "settings": {}}
        rows_jsonl, tables = [], [f"# {config.title}\n", data_note(config), ""]
        for si, setting in enumerate(config.settings):
            per_method = {}
            for work in [w for w in todo if w["setting"] == si]:
                method = setting["methods"][work["method"]]
                store = self.load(work)
                cs = self.cell_summary(setting, work, store)
                per_method.setdefault(method["label"], []).append(cs)
                rows_jsonl += metric_rows(config, setting, method, work, store)
            chosen = {label: pick_lr(runs) for label, runs in per_method.items()}
            add_recovery(setting, chosen)
            summary["settings"][setting["name"]] = {
                "seeds": seeds_of(config, setting),
                "methods": chosen,
                "lr_sweep": {k: v for k, v in per_method.items() if len(v) > 1},
            }
            tables.append(setting_table(config, setting, chosen, per_method))
            self.plot(si, setting, todo)
        summary["finished"] = True
        table = "\n".join(tables)
        results.write_jsonl(self.workdir / "metrics.jsonl", rows_jsonl)
        results.write_text(self.workdir / "table.md", table)
        results.write_json(self.workdir / "summary.json", summary)
        print(table, flush=True)
        return summary

    def plot(self, si, setting, todo) -> None:
        spec = task_spec(setting)
        block = max(1, self.config.log_every // 2)
        series = {}
        for work in [w for w in todo if w["setting"] == si]:
            method = setting["methods"][work["method"]]
            if method.get("lrs") and work["lr"] != self.config.lr:
                continue
            loss = self.load(work)["loss"]
            if spec.loss == "mse" and setting["metric"] == "adding":
                continue
            T = loss.shape[1] - loss.shape[1] % block
            smooth = loss[:, :T].reshape(loss.shape[0], -1, block).mean(axis=2)
            x = np.arange(smooth.shape[1]) * block + block / 2
            series[method["label"]] = (x, np.nanmean(smooth, axis=0), None)
        if series:
            plots.line_plot(
                self.workdir / f"mse_{slug(setting['name'])}.png",
                series,
                xlabel="step",
                ylabel=f"online loss ({block}-step mean, mean over seeds)",
                title=f"{self.config.title}: {setting['name']}",
                marker=None,
                logy=True,
                vlines=spec.shifts,
            )


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _storable(tree):
    """Typed PRNG keys (UORO's, KF-RTRL's) as their raw key data, so msgpack can hold them."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _unstorable(template, tree):
    return jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x) if _is_key(t) else x, template, tree
    )


def spec_arg(setting, name, default):
    return setting["task_options"].get(name, default)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def data_note(config) -> str:
    return (
        "Synthetic streams generated from each seed (rtrl/tasks.py); vanilla tanh RNN unless "
        f"noted; Adam lr {config.lr:g}, one update per step; seeds {list(config.seeds)} unless "
        f"noted. Pre-shift MSE: mean online loss over the {config.window} steps before the "
        f"shift; post-shift: over the last {config.window} steps (multi-regime: before the "
        "second shift). R = (log L_floor − log L_k)/(log L_floor − log L_full), per seed."
    )


def pick_lr(runs: list[dict]) -> dict:
    """The run with the lowest mean pre-shift MSE (selection never looks after the shift)."""
    if len(runs) == 1:
        return runs[0]
    key = "pre" if "pre" in runs[0] else "post"
    scores = [_nanmean(r[key]) for r in runs]
    best = dict(runs[int(np.nanargmin(scores))])
    best["lr_selected_by"] = "lowest mean pre-shift MSE"
    return best


def _nanmean(values) -> float:
    arr = np.asarray(values, np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("inf")


def add_recovery(setting, chosen) -> None:
    """Per-seed R (each seed against its own floor and full run) and R of the geometric means
    over seeds (R_gm: the same formula on mean log MSE, which stays finite when one seed's
    floor and full runs nearly coincide)."""
    full = chosen.get(setting.get("full") or "", {}).get("post")
    if full is None or setting["metric"] not in ("shift", "first_shift"):
        return
    floors = {"R": chosen.get(setting["floor"], {}).get("post")}
    if "traces γ=0.95" in chosen:
        floors["R_traces095"] = chosen["traces γ=0.95"]["post"]
    for run in chosen.values():
        for name, floor in floors.items():
            if floor is None:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                run[name] = np.asarray(
                    metrics.gap_recovery(np.array(floor), np.array(run["post"]), np.array(full))
                ).tolist()
                run[name + "_gm"] = float(
                    metrics.gap_recovery(_geo(floor), _geo(run["post"]), _geo(full))
                )


def _geo(values) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.exp(np.mean(np.log(arr)))) if np.all(np.isfinite(arr)) else float("nan")


def metric_rows(config, setting, method, work, store) -> list[dict]:
    rows, seeds = [], seeds_of(config, setting)
    loss = store["loss"]
    T, every = loss.shape[1], config.log_every
    for lo in range(0, T, every):
        hi = min(lo + every, T)
        row = {
            "setting": setting["name"],
            "method": method["label"],
            "lr": work["lr"],
            "step": hi,
            "seeds": seeds,
            "loss": _clean(np.mean(loss[:, lo:hi], axis=1)),
        }
        cos = store["cosine"][:, lo:hi]
        if np.isfinite(cos).any():
            row["cosine"] = _clean(np.nanmean(cos, axis=1))
            row["magnitude_ratio"] = _clean(np.nanmean(store["ratio"][:, lo:hi], axis=1))
        rows.append(row)
    return rows


def _clean(arr) -> list:
    return [float(x) if np.isfinite(x) else None for x in np.asarray(arr, np.float64)]


def _fmt(x, digits=4) -> str:
    if x is None or not np.isfinite(x):
        return "nan"
    return f"{x:.{digits}g}"


def _mean_sd(values, pct=False) -> str:
    arr = np.asarray(values, np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return "diverged"
    scale = 100.0 if pct else 1.0
    digits = 3
    s = f"{_fmt(scale * arr.mean(), digits)} ± {_fmt(scale * arr.std(), 2)}"
    return s + ("%" if pct else "")


def _recovery(run, name) -> str:
    if name not in run:
        return ""
    per_seed = np.asarray(run[name], np.float64)
    median = np.median(per_seed[np.isfinite(per_seed)]) if np.isfinite(per_seed).any() else np.nan
    return f"{_fmt(100 * run[name + '_gm'], 3)}% [{_fmt(100 * median, 3)}%]"


def _pre_post(run) -> str:
    return f"{_fmt(_nanmean(run['pre']), 3)} / {_fmt(_nanmean(run['post']), 3)}"


def setting_table(config, setting, chosen, per_method) -> str:
    metric = setting["metric"]
    lines = [
        f"## {setting['name']} ({setting['cell']}, n={setting['n_hidden']}, "
        f"{len(seeds_of(config, setting))} seeds)\n"
    ]
    if metric in ("shift", "first_shift"):
        headers = [
            "method",
            "pre-shift MSE",
            "post-shift MSE",
            "CV(post)",
            "R vs k=0: geo-mean [per-seed median]",
            "R vs traces γ=0.95: geo-mean [median]",
            "cos vs full (pre / post)",
            "|g|/|g_full|",
            "diverged",
            "paper",
        ]
        rows = []
        for label, run in chosen.items():
            method = next(m for m in setting["methods"] if m["label"] == label)
            post = np.asarray(run["post"], np.float64)
            cv = (
                metrics.coefficient_of_variation(post[np.isfinite(post)])
                if np.isfinite(post).any()
                else float("nan")
            )
            cos = (
                "n/a"
                if "cos_pre" not in run
                else f"{_fmt(_nanmean(run['cos_pre']), 3)} / {_fmt(_nanmean(run['cos_post']), 3)}"
            )
            ratio = "n/a" if "ratio_median" not in run else _fmt(_nanmean(run["ratio_median"]), 3)
            name = label + (f" (lr {run['lr']:g})" if method.get("lrs") else "")
            rows.append(
                [
                    name,
                    _mean_sd(run["pre"]),
                    _mean_sd(run["post"]),
                    f"{100 * float(cv):.0f}%",
                    _recovery(run, "R"),
                    _recovery(run, "R_traces095"),
                    cos,
                    ratio,
                    f"{sum(run['diverged'])}/{len(run['diverged'])}",
                    method.get("paper") or "",
                ]
            )
        lines.append(results.markdown_table(headers, rows))
        spectra = [(label, run) for label, run in chosen.items() if "cond" in run]
        if spectra:
            lines.append(
                "\nJacobian spectrum of M (SVD of M reshaped n × P, sampled every "
                f"{setting.get('spectrum_every')} steps):\n"
            )
            lines.append(
                results.markdown_table(
                    ["method", "effective rank (95%)", "condition number", "cond range"],
                    [
                        [
                            label,
                            _mean_sd(run["eff_rank"]),
                            _mean_sd(run["cond"]),
                            f"{run['cond_range'][0]:.3g}–{run['cond_range'][1]:.3g}",
                        ]
                        for label, run in spectra
                    ],
                )
            )
        sweeps = {k: v for k, v in per_method.items() if len(v) > 1}
        if sweeps:
            lines.append(
                "\nLearning-rate sweep (post-shift MSE per lr; the lr with the lowest "
                "mean pre-shift MSE is used above):\n"
            )
            lrs = sorted({r["lr"] for v in sweeps.values() for r in v})
            lines.append(
                results.markdown_table(
                    ["method"] + [f"lr {lr:g}: pre / post" for lr in lrs],
                    [
                        [k]
                        + [
                            next(
                                (_pre_post(r) for r in v if r["lr"] == lr),
                                "",
                            )
                            for lr in lrs
                        ]
                        for k, v in sweeps.items()
                    ],
                )
            )
        if setting.get("per_seed_paper"):
            lines.append(
                "\nPer seed, post-shift MSE, ours / paper (seed labels only: our PRNG differs):\n"
            )
            labels = [k for k in next(iter(setting["per_seed_paper"].values())) if k in chosen]
            rows = []
            for s_i, seed in enumerate(seeds_of(config, setting)):
                paper = setting["per_seed_paper"].get(str(seed), {})
                rows.append(
                    [str(seed)]
                    + [f"{_fmt(chosen[k]['post'][s_i], 3)} / {paper.get(k, '')}" for k in labels]
                )
            lines.append(results.markdown_table(["seed"] + labels, rows))
    else:
        what = "accuracy (last episodes)" if metric == "copy" else "MSE at the scored steps"
        headers = ["method", what, "diverged", "paper"]
        rows = [
            [
                label,
                _mean_sd(run["post"]),
                f"{sum(run['diverged'])}/{len(run['diverged'])}",
                next(m for m in setting["methods"] if m["label"] == label).get("paper") or "",
            ]
            for label, run in chosen.items()
        ]
        trivial = "chance 0.125" if metric == "copy" else "predict-the-mean 0.167"
        rows.append(["trivial baseline", trivial, "", trivial.split()[-1]])
        lines.append(results.markdown_table(headers, rows))
    return "\n".join(lines)


def run(config, workdir: str | Path) -> dict:
    check_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    done = results.finished_run(workdir, cfg)
    if done is not None:
        print(done[0], flush=True)
        return done[1]
    saved = workdir / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != results.as_saved(cfg):
        raise ValueError(f"{workdir} holds a run of another config; use a new --workdir")
    results.write_json(saved, cfg)
    return Study(config, workdir).run()


if __name__ == "__main__":
    run_study("rtrl_sparse", run, "Sparse-RTRL study preset (…/rtrl_sparse.py:<table>).")
