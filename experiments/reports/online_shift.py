"""The online shift studies' report (rtrl_sparse, rtrl_immediate): per-run summaries, table.md,
summary.json, mse_<setting>.png."""

from __future__ import annotations

import warnings

import jax
import numpy as np

from experiments import online_study, plots, results, runner
from experiments.data import streams as streams_lib
from rtrl import cells, metrics, tasks

SHIFT_METRICS = ("shift", "first_shift", "every_shift")
LAYER_BLOCKS = ("layer 1 ∂h¹/∂θ¹", "layer 2 ∂h²/∂θ²", "cross-layer ∂h²/∂θ¹")


def task_spec(setting) -> tasks.TaskSpec:
    return online_study.task_spec(setting)


def seeds_of(config, setting) -> list[int]:
    return list(setting.get("seeds") or config.seeds)


def label(config, work) -> str:
    setting = config.settings[work["setting"]]
    method = setting["methods"][work["method"]]
    lr = f" lr={work['lr']:g}" if method.get("lrs") else ""
    return f"[{setting['name']}] {method['label']}{lr}"


def _optimizer_note(config) -> str:
    named = {m.get("optimizer") for s in config.settings for m in s["methods"]} - {None}
    if not named:
        return f"{config.optimizer} lr {config.lr:g} (rtrl.optimizers)"
    return (
        f"each method's optimizer as labelled (rtrl.optimizers; lr {config.lr:g} unless a sweep "
        "is shown)"
    )


def data_note(config) -> str:
    return (
        "Streams generated from each seed (rtrl/tasks.py; a file-backed stream names its data "
        "under its setting); vanilla tanh RNN unless "
        f"noted; {_optimizer_note(config)}, one update per step; "
        f"seeds {list(config.seeds)} unless "
        "noted. Pre-shift loss (MSE or cross-entropy): mean online loss over the "
        f"{config.window} steps before the "
        f"shift; post-shift: over the last {config.window} steps (multi-regime: before the "
        "second shift). R = (log L_floor − log L_k)/(log L_floor − log L_full), per seed."
    )


def run_summary(config, setting, work, store, data) -> dict:
    """One run's JSON summary from its records: pre/post-shift loss per seed, divergence,
    gradient diagnostics, Jacobian spectra, or the copy / adding score."""
    spec, loss, window = task_spec(setting), store["loss"], config.window
    finite = np.all(np.isfinite(loss), axis=1)
    out = {"lr": work["lr"], "diverged": (~finite).astype(int).tolist()}
    if setting["metric"] in SHIFT_METRICS:
        shift = spec.shifts[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            if setting["metric"] == "shift":
                pre, post = metrics.pre_post_mse(loss, shift, window)
            elif setting["metric"] == "first_shift":
                pre = metrics.window_mean(loss, shift - window, shift)
                post = metrics.first_shift_post(loss, shift, spec.shifts[1], window)
            else:  # every_shift: per-seed geometric mean over the regimes after the first
                pre = metrics.window_mean(loss, shift - window, shift)
                by_shift = np.asarray(metrics.every_shift_post(loss, spec.shifts, window))
                out["post_by_shift"] = by_shift.tolist()
                post = np.exp(np.mean(np.log(by_shift), axis=1))
            plateau = metrics.pre_shift_plateau(loss, shift, window)
        out["pre"], out["post"] = np.asarray(pre).tolist(), np.asarray(post).tolist()
        out["pre_plateau"] = np.asarray(plateau).astype(int).tolist()
        cos = store["cosine"]
        if np.isfinite(cos).any():
            out["cos_pre"] = np.nanmean(cos[:, shift - window : shift], axis=1).tolist()
            out["cos_post"] = np.nanmean(cos[:, shift : shift + window], axis=1).tolist()
            out["ratio_median"] = np.nanmedian(store["ratio"], axis=1).tolist()
            if "group_cosine" in store:
                out.update(_group_summary(store, shift, window))
        if "chunk/cond" in store:
            cond = store["chunk/cond"]
            out["eff_rank"] = np.nanmean(store["chunk/eff_rank"], axis=1).tolist()
            out["cond"] = np.nanmean(cond, axis=1).tolist()
            out["cond_range"] = [float(np.nanmin(cond)), float(np.nanmax(cond))]
            if "chunk/row_cond" in store:
                out["row_cond"] = np.nanmean(store["chunk/row_cond"], axis=1).tolist()
    elif setting["metric"] == "copy":
        options = setting["task_options"]
        episode = 2 * options.get("seq_len", 5) + options.get("delay", 0)
        steps = episode * config.copy_eval_episodes
        acc = metrics.copy_accuracy(
            store["prediction"], np.asarray(data.ys), np.asarray(data.weights), steps
        )
        out["post"] = np.asarray(acc).tolist()
    elif setting["metric"] == "progressive":  # test-then-train accuracy over the whole stream
        out["post"] = np.mean(np.asarray(store["correct"], np.float64), axis=1).tolist()
    else:  # adding
        steps = setting["task_options"].get("episode_len", 50) * config.adding_eval_episodes
        w = np.asarray(data.weights)[:, -steps:]
        out["post"] = (np.sum(loss[:, -steps:] * w, axis=1) / np.sum(w, axis=1)).tolist()
    if "group_norm" in store:  # [S, T, P + 2] per-parameter, output-path, recurrent-path norms
        out.update(_norm_summary(setting, store, config.window))
    if "chunk/block0_cond" in store:  # per-layer and cross-layer blocks of a stacked M
        out["layer_block_names"] = list(LAYER_BLOCKS)
        out["layer_cond"] = [
            np.nanmedian(store[f"chunk/block{i}_cond"], axis=1).tolist() for i in range(3)
        ]
        out["layer_row_cond"] = [
            np.nanmedian(store[f"chunk/block{i}_row_cond"], axis=1).tolist() for i in range(3)
        ]
    if "self_factor" in store:  # [S, T]
        out.update(_jacobian_summary(setting, store, config.window))
    if setting.get("trace_probe_step") and np.isfinite(store["cosine"]).any():
        t = setting["trace_probe_step"]
        out["probe_cosine"] = store["cosine"][:, t].tolist()
        with np.errstate(divide="ignore"):  # ‖g_shadow‖ / ‖g_method‖
            out["probe_shadow_ratio"] = (1.0 / store["ratio"][:, t]).tolist()
    if "fisher" in store:  # [S, n] per-neuron Fisher at the end of the dense phase
        fisher = np.asarray(store["fisher"], np.float64)
        out["fisher_spread"] = (fisher.max(axis=1) / fisher.min(axis=1)).tolist()
    out["seconds"] = float(store["seconds"])
    return out


def _norm_summary(setting, store, window) -> dict:
    """Medians over the post-shift window (adaptation) per seed: each parameter's gradient norm,
    and the output-path over recurrent-path norm ratio (per step, then the median)."""
    shifts = task_spec(setting).shifts  # no shift (a drifting stream): the whole stream
    window = slice(shifts[0], shifts[0] + window) if shifts else slice(None)
    norms = np.asarray(store["group_norm"], np.float64)[:, window]  # [S, W, G]
    names = list(store["group_names"])
    sizes = _group_sizes(setting, names)  # [G] parameters per group (for per-element RMS)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a diverged seed: all-nan medians
        ratio = norms[..., -2] / norms[..., -1]
        rms = norms / np.sqrt(sizes)
        return {
            "group_names": names,
            "group_norm_post": np.nanmedian(norms, axis=1).tolist(),  # [S][G]
            "output_recurrent_ratio": np.nanmedian(ratio, axis=1).tolist(),  # [S]
            "output_recurrent_rms_ratio": np.nanmedian(rms[..., -2] / rms[..., -1], 1).tolist(),
        }


def _group_sizes(setting, names) -> np.ndarray:
    """Parameter counts of the group names of `online_study._group_norms` (the parameters, then
    the output path and the recurrent path)."""
    spec = task_spec(setting)
    cell = cells.get(setting["cell"], spec.n_in, setting["n_hidden"], spec.n_out)
    shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0)))
    size = {p: int(np.prod(shapes[p].shape)) for p in shapes}
    output = sum(v for p, v in size.items() if p in cell.output_params)
    recurrent = sum(v for p, v in size.items() if p not in cell.output_params)
    return np.asarray([size[p] for p in names[:-2]] + [output, recurrent], np.float64)


def _jacobian_summary(setting, store, window) -> dict:
    """Mean |J_ii| and ρ(J) of the one-step Jacobian over the pre- and post-shift windows."""
    shift = task_spec(setting).shifts[0]
    pre, post = slice(shift - window, shift), slice(shift, shift + window)
    out = {}
    for name in ("self_factor", "spectral_radius"):
        values = np.asarray(store[name], np.float64)
        out[name + "_pre"] = np.nanmean(values[:, pre], axis=1).tolist()
        out[name + "_post"] = np.nanmean(values[:, post], axis=1).tolist()
    return out


def _group_summary(store, shift, window) -> dict:
    """Per-group cosines (pre / post windows), the all-parameter cosine the Θ one replaces, and
    the readout check: median readout norms of the method and of full RTRL, and the readout
    difference over the whole stream, sqrt(Σ_t ‖g_t,ro − g_t,ro^full‖²) / sqrt(Σ_t ‖g_t,ro^full‖²)
    per seed (0 when identical; a per-step ratio would blow up rounding at steps where e_t ≈ 0)."""
    pre, post = slice(shift - window, shift), slice(shift, shift + window)
    group, with_readout = store["group_cosine"], store["cosine_with_readout"]  # [S, T, 3], [S, T]
    full_sq = np.nansum(np.square(store["shadow_readout_norm"]), axis=(1, 2))  # [S]
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.sqrt(np.nansum(np.square(store["readout_difference"]), axis=1) / full_sq)
    return {
        "group_cos_pre": np.nanmean(group[:, pre], axis=1).tolist(),  # [S][3] W_rec, W_in, b
        "group_cos_post": np.nanmean(group[:, post], axis=1).tolist(),
        "cos_with_readout_pre": np.nanmean(with_readout[:, pre], axis=1).tolist(),
        "cos_with_readout_post": np.nanmean(with_readout[:, post], axis=1).tolist(),
        "readout_norm_median": np.nanmedian(store["readout_norm"], axis=1).tolist(),  # [S][2]
        "full_readout_norm_median": np.nanmedian(store["shadow_readout_norm"], axis=1).tolist(),
        "readout_relative_difference": relative.tolist(),  # [S]
    }


def pick_lr(runs: list[dict]) -> dict:
    """The run with the lowest mean pre-shift MSE (selection never looks after the shift)."""
    if len(runs) == 1:
        return runs[0]
    key = "pre" if "pre" in runs[0] else "post"
    best = dict(runs[metrics.lowest_pre_shift([r[key] for r in runs])])
    best["lr_selected_by"] = "lowest mean pre-shift MSE"
    return best


def add_failures(setting, chosen) -> None:
    """The paper's failure: a seed fails when its post-shift MSE is worse than eligibility
    traces' on the same seed (or is not finite). Stored per seed as `fails`."""
    floor = chosen.get(setting.get("traces_floor") or "", {}).get("post")
    if floor is None or setting["metric"] not in SHIFT_METRICS:
        return
    for label, run in chosen.items():
        if label != setting["traces_floor"]:
            post = np.asarray(run["post"], np.float64)
            run["fails"] = (~(post <= np.asarray(floor, np.float64))).astype(int).tolist()


def add_recovery(setting, chosen) -> None:
    """R per seed (each seed against its own floor and full run) and R_gm of the geometric means
    over seeds, against the setting's floor and, where present, its traces floor."""
    full = chosen.get(setting.get("full") or "", {}).get("post")
    if full is None or setting["metric"] not in SHIFT_METRICS:
        return
    floors = {"R": chosen.get(setting["floor"], {}).get("post")}
    if setting.get("traces_floor") in chosen:
        floors["R_traces095"] = chosen[setting["traces_floor"]]["post"]
    for run in chosen.values():
        for name, floor in floors.items():
            if floor is not None:
                per_seed, geo = metrics.recovery(floor, run["post"], full)
                run[name], run[name + "_gm"] = per_seed.tolist(), geo


def write(config, runner_: runner.Runner, todo, done, baselines=None) -> tuple[str, dict]:
    """(table.md text, summary) of the finished runs; draws one plot per setting. baselines:
    {setting index: {River model: [accuracy per seed]}} for the streaming settings."""
    baselines = baselines or {}
    summary = {"preset": config.preset, "title": config.title, "settings": {}}
    tables = [f"# {config.title}\n", data_note(config), ""]
    for si, setting in enumerate(config.settings):
        per_method = {}
        mine = [w for w in todo if w["setting"] == si]
        for work in mine:
            method = setting["methods"][work["method"]]
            per_method.setdefault(method["label"], []).append(done[work["id"]])
        chosen = {name: pick_lr(runs) for name, runs in per_method.items()}
        add_recovery(setting, chosen)
        add_failures(setting, chosen)
        summary["settings"][setting["name"]] = {
            "seeds": seeds_of(config, setting),
            "methods": chosen,
            "lr_sweep": {k: v for k, v in per_method.items() if len(v) > 1},
        }
        if si in baselines:
            summary["settings"][setting["name"]]["river"] = baselines[si]
        tables.append(setting_table(config, setting, chosen, per_method, baselines.get(si)))
        plot(config, runner_, setting, mine, chosen)
        if setting.get("recovery_plot"):
            plot_recovery(config, runner_, setting, chosen)
    return "\n".join(tables), summary


def plot(config, runner_, setting, mine, chosen) -> None:
    """Online loss of every method at its chosen learning rate."""
    spec = task_spec(setting)
    block = config.plot_block
    series = {}
    for work in mine:
        method = setting["methods"][work["method"]]
        if work["lr"] != chosen[method["label"]]["lr"]:
            continue
        if spec.loss == "mse" and setting["metric"] == "adding":
            continue
        loss = runner_.records(work["id"])["loss"]
        T = loss.shape[1] - loss.shape[1] % block
        smooth = loss[:, :T].reshape(loss.shape[0], -1, block).mean(axis=2)
        x = np.arange(smooth.shape[1]) * block + block / 2
        series[method["label"]] = (x, np.nanmean(smooth, axis=0), None)
    if series:
        plots.line_plot(
            runner_.workdir / f"mse_{runner.slug(setting['name'])}.png",
            series,
            xlabel="step",
            ylabel=f"online loss ({block}-step mean, mean over seeds)",
            title=f"{config.title}: {setting['name']}",
            marker=None,
            logy=True,
            vlines=spec.shifts,
        )


def _shadow_name(setting) -> str:
    """How the tables name the setting's shadow: "full" (full RTRL, the default) or its algo."""
    shadow = setting.get("shadow")
    if not isinstance(shadow, dict) or shadow.get("algo") == "rtrl":
        return "full"
    options = ",".join(f"{k}={v}" for k, v in shadow.get("options", {}).items())
    return f"{shadow['algo']}({options})"


def _immediate_sections(setting, chosen) -> list[str]:
    """Gradient norms per group, the one-step Jacobian, and the trace probe, where recorded."""
    lines = []
    normed = [(label, run) for label, run in chosen.items() if "group_norm_post" in run]
    if normed:
        names = normed[0][1]["group_names"]
        lines.append(
            "Gradient norms during adaptation (median over the post-shift window per seed, then "
            "the mean over seeds); output path = the cell's output_params, recurrent = the rest:\n"
        )
        rows = []
        for label, run in normed:
            by_group = _seed_mean(run["group_norm_post"])
            ratio = _mean_sd(run["output_recurrent_ratio"])
            rms = (
                _mean_sd(run["output_recurrent_rms_ratio"])
                if "output_recurrent_rms_ratio" in run
                else "n/a"
            )
            rows.append([label] + [_fmt(v, 3) for v in by_group] + [ratio, rms])
        headers = ["method", *names, "output / recurrent (norms)", "per element (RMS)"]
        lines.append(results.markdown_table(headers, rows))
        lines.append(
            "\nThe ratio of the groups' norms depends on their sizes (W_rec has n² entries, "
            "W_out n·n_out); the per-element column divides each norm by √(its parameter count) "
            "first. The paper's ~100× does not say which it is.\n"
        )
    jac = [(label, run) for label, run in chosen.items() if "self_factor_pre" in run]
    if jac:
        lines.append(
            "\nOne-step Jacobian J = ∂h_t/∂h_{t−1} (mean over the window, then over seeds); "
            "paper: mean |J_ii| ≈ 0.01, ρ(J) 0.37–0.93:\n"
        )
        rows = [
            [label]
            + [
                _mean_sd(run[f"{name}_{w}"])
                for name in ("self_factor", "spectral_radius")
                for w in ("pre", "post")
            ]
            for label, run in jac
        ]
        headers = ["method", "mean |J_ii| pre", "mean |J_ii| post", "ρ(J) pre", "ρ(J) post"]
        lines.append(results.markdown_table(headers, rows))
    layered = [(label, run) for label, run in chosen.items() if "layer_cond" in run]
    if layered:
        lines.append(
            "\nCondition number of full RTRL's M blocks (median over the chunks, then the mean "
            "over seeds; raw / rows normalised); paper: layers 1.7 and 2.5, cross-layer 3773:\n"
        )
        rows = [
            [label]
            + [
                f"{_mean_sd(raw)} / {_mean_sd(row)}"
                for raw, row in zip(run["layer_cond"], run["layer_row_cond"], strict=True)
            ]
            for label, run in layered
        ]
        lines.append(results.markdown_table(["method", *LAYER_BLOCKS], rows))
    probed = [(label, run) for label, run in chosen.items() if "probe_cosine" in run]
    if probed:
        t = setting["trace_probe_step"]
        lines.append(
            f"\nAt t = {t}, the shadow {_shadow_name(setting)}'s gradient on each method's "
            "trajectory against the method's own (for the immediate derivative, the paper's "
            "probe: norm ratio 6.7×, cosine 0.577):\n"
        )
        rows = [
            [label, _mean_sd(run["probe_shadow_ratio"]), _mean_sd(run["probe_cosine"])]
            for label, run in probed
        ]
        lines.append(
            results.markdown_table(
                ["method", "‖g_shadow‖ / ‖g_method‖ over Θ", "cosine over Θ"], rows
            )
        )
    return lines + ([""] if lines else [])


def plot_recovery(config, runner_, setting, chosen) -> None:
    """R per seed against a swept method option (e.g. the trace decay), with the median."""
    option = setting["recovery_plot"]
    swept = [m for m in setting["methods"] if option in m["options"] and m["label"] in chosen]
    if not swept or "R" not in chosen[swept[0]["label"]]:
        return
    x = [m["options"][option] for m in swept]
    values = [100 * np.asarray(chosen[m["label"]]["R"], np.float64) for m in swept]
    plots.points_plot(
        runner_.workdir / f"recovery_{runner.slug(setting['name'])}.png",
        x,
        values,
        xlabel=option,
        ylabel=f"recovery R (%) vs {setting['floor']}, per seed",
        title=f"{setting['name']}: recovery against the {option}",
        symlog_x=1e-3,
        hlines=(0.0, 100.0),
    )


def _fmt(x, digits=4) -> str:
    if x is None or not np.isfinite(x):
        return "nan"
    return f"{x:.{digits}g}"


def _count(flags) -> str:
    return "n/a" if flags is None else f"{sum(flags)}/{len(flags)}"


def _by_shift_table(runs) -> str:
    n_shifts = len(runs[0][1]["post_by_shift"][0])
    headers = ["method"] + [f"regime {j + 2}: MSE before its end" for j in range(n_shifts)]
    rows = [
        [label] + [_mean_sd(np.asarray(run["post_by_shift"])[:, j]) for j in range(n_shifts)]
        for label, run in runs
    ]
    return (
        "\nEvery shift scored (post-shift MSE above: per seed, the geometric mean over these):\n\n"
        + results.markdown_table(headers, rows)
    )


def _mean_sd(values) -> str:
    return results.mean_std(values, ".3g", ".2g", finite_only=True)


def _nanmean(values) -> float:
    arr = np.asarray(values, np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("inf")


def _recovery(run, name) -> str:
    if name not in run:
        return ""
    per_seed = np.asarray(run[name], np.float64)
    median = np.median(per_seed[np.isfinite(per_seed)]) if np.isfinite(per_seed).any() else np.nan
    return f"{_fmt(100 * run[name + '_gm'], 3)}% [{_fmt(100 * median, 3)}%]"


def _pre_post(run) -> str:
    return f"{_fmt(_nanmean(run['pre']), 3)} / {_fmt(_nanmean(run['post']), 3)}"


def _seed_mean(values) -> np.ndarray:
    """Mean over seeds of per-seed rows ([S] or [S, G] -> [] or [G]), ignoring non-finite."""
    arr = np.asarray(values, np.float64)
    finite = np.isfinite(arr)
    with np.errstate(invalid="ignore"):
        return np.where(finite, arr, 0).sum(axis=0) / finite.sum(axis=0)


def _pre_post_pair(run, name) -> list[str]:
    """'pre / post' per group of the seed means of run[name_pre], run[name_post]."""
    pre = np.atleast_1d(_seed_mean(run[name + "_pre"]))
    post = np.atleast_1d(_seed_mean(run[name + "_post"]))
    return [f"{_fmt(a, 3)} / {_fmt(b, 3)}" for a, b in zip(pre, post, strict=True)]


def _group_table(groups) -> str:
    headers = [
        "method",
        "cos W_rec",
        "cos W_in",
        "cos b",
        "cos over all params, readout included (old column)",
        "readout |g_W_out|, |g_b_out| (median): method / full",
        "|Δg_readout|/|g_readout,full| over the stream (max over seeds)",
    ]
    rows = []
    for label, run in groups:
        ours, full = (
            _seed_mean(run["readout_norm_median"]),
            _seed_mean(run["full_readout_norm_median"]),
        )
        rows.append(
            [
                label,
                *_pre_post_pair(run, "group_cos"),
                *_pre_post_pair(run, "cos_with_readout"),
                f"{_fmt(ours[0], 3)}, {_fmt(ours[1], 3)} / {_fmt(full[0], 3)}, {_fmt(full[1], 3)}",
                _fmt(float(np.nanmax(run["readout_relative_difference"])), 2),
            ]
        )
    return (
        "\nGradient diagnostics per group, each cell pre / post (the windows of the cosine "
        "column above: before the shift and right after it; mean over seeds). "
        "The cosines above are over Θ = [W_rec | W_in | b] only: the readout gradient "
        "(W_out, b_out) is exact for every method (e h_tᵀ, e), the same as full RTRL's up to "
        "rounding (last column), and including it mixes that shared part into the cosine (the "
        "all-parameter column): towards 1 where |g_Θ| ≈ |g_Θ,full|, lower where the magnitudes "
        "differ.\n\n" + results.markdown_table(headers, rows)
    )


def setting_table(config, setting, chosen, per_method, river=None) -> str:
    metric = setting["metric"]
    lines = [
        f"## {setting['name']} ({setting['cell']}, n={setting['n_hidden']}, "
        f"{len(seeds_of(config, setting))} seeds)\n"
    ]
    if streams_lib.describe(setting["task"]):
        lines.append(streams_lib.describe(setting["task"]) + "\n")
    if metric in SHIFT_METRICS:
        what = "MSE" if task_spec(setting).loss == "mse" else "cross-entropy (nats)"
        headers = [
            "method",
            f"pre-shift {what}",
            f"post-shift {what}",
            "CV(post)",
            f"R vs {setting.get('floor')}: geo-mean [per-seed median]",
            f"R vs {setting.get('traces_floor')}: geo-mean [median]",
            f"cos over Θ vs {_shadow_name(setting)} (pre / post)",
            f"|g_Θ|/|g_Θ,{_shadow_name(setting)}|",
            "pre-shift plateaued",
            f"fails (post > {setting.get('traces_floor')})",
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
                    _count(run.get("pre_plateau")),
                    _count(run.get("fails")),
                    f"{sum(run['diverged'])}/{len(run['diverged'])}",
                    method.get("paper") or "",
                ]
            )
        if not setting.get("traces_floor"):  # no traces run: its R and failure columns go
            keep = [i for i, h in enumerate(headers) if "None" not in h]
            headers = [headers[i] for i in keep]
            rows = [[row[i] for i in keep] for row in rows]
        lines.append(results.markdown_table(headers, rows))
        lines.append(
            "\nPre-shift plateaued: seeds whose mean loss over the last "
            f"{config.window} steps before the shift is within 10% of the {config.window} steps "
            "before those (a network still fitting the first regime makes the post-shift "
            "comparison meaningless). Fails: the paper's count, post-shift MSE worse than "
            "eligibility traces' on the same seed; diverged: non-finite loss.\n"
        )
        if setting.get("note"):
            lines.append(f"Paper: {setting['note']}.\n")
        lines.extend(_immediate_sections(setting, chosen))
        fisher = [(label, run) for label, run in chosen.items() if "fisher_spread" in run]
        if fisher:
            spread = np.asarray(fisher[0][1]["fisher_spread"])
            lines.append(
                "Dense phase: every method above runs full RTRL until the shift (the same network "
                "and optimizer state at the shift, so the pre-shift columns agree), then keeps k "
                "paths per row. Fisher F_j = Σ_{t<shift} Σ_g ‖∂L_t/∂Θ[g n + j]‖² per neuron; "
                f"max_j F_j / min_j F_j per seed: {', '.join(f'{x:.3g}' for x in spread)} "
                "(paper: up to 1000×).\n"
            )
        by_shift = [(label, run) for label, run in chosen.items() if "post_by_shift" in run]
        if by_shift:
            lines.append(_by_shift_table(by_shift))
        groups = [(label, run) for label, run in chosen.items() if "group_cos_pre" in run]
        if groups:
            lines.append(_group_table(groups))
        spectra = [(label, run) for label, run in chosen.items() if "cond" in run]
        if spectra:
            lines.append(
                "\nJacobian spectrum of M (SVD of M reshaped n × P, sampled every "
                f"{setting.get('spectrum_every')} steps):\n"
            )
            lines.append(
                results.markdown_table(
                    [
                        "method",
                        "effective rank (95%)",
                        "condition number",
                        "cond range",
                        "cond, rows normalised",
                        "pre-shift MSE (has it learned?)",
                    ],
                    [
                        [
                            label,
                            _mean_sd(run["eff_rank"]),
                            _mean_sd(run["cond"]),
                            f"{run['cond_range'][0]:.3g}–{run['cond_range'][1]:.3g}",
                            _mean_sd(run["row_cond"]) if "row_cond" in run else "n/a",
                            _mean_sd(run["pre"]),
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
        what = {
            "copy": "accuracy (last episodes)",
            "progressive": "progressive accuracy (test-then-train, whole stream)",
        }.get(metric, "MSE at the scored steps")
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
        if metric == "progressive":
            papers = setting.get("river_paper", {})
            seeds = list(setting.get("seeds") or config.seeds)
            for model, accuracies in (river or {}).items():
                label = f"River {model}"
                if not accuracies:
                    rows.append([f"{label} (not run)", "–", "", papers.get(model, "")])
                    continue
                if len(accuracies) < len(seeds):
                    label += f" (seeds {', '.join(map(str, seeds[: len(accuracies)]))} only)"
                rows.append([label, _mean_sd(accuracies), "", papers.get(model, "")])
        else:
            trivial = "chance 0.125" if metric == "copy" else "predict-the-mean 0.167"
            rows.append(["trivial baseline", trivial, "", trivial.split()[-1]])
        lines.append(results.markdown_table(headers, rows))
    return "\n".join(lines)
