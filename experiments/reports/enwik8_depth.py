"""The depth study's report: lr_probe.md, table.md, bpb_vs_depth.png, training_curves.png."""

from __future__ import annotations

import numpy as np

from experiments import plots, results

LABELS = {"bptt": "BPTT", "local": "local", "tbptt": "tbptt", "online": "online"}


def trainer_label(config, name: str) -> str:
    if name == "tbptt":
        return f"tbptt (w={config.tbptt_window})"
    if name == "online":
        return f"online (k={config.online_every})"
    return LABELS[name]


def probe_table(study, probes) -> str:
    config, probe = study.config, study.config.lr_probe
    _, n_scored = study.streams("valid", probe.eval_bytes)
    rows = []
    for run in probes:
        result = study.runner.done(run.id)
        _, trainer, depth = run.id.split("/")
        bpb = np.asarray(result["valid_bpb"])
        for lr in probe.grid:
            values = bpb[np.asarray(result["lrs"]) == float(lr)]
            mark = "**winner**" if float(lr) == result["winner"] else ""
            if mark and float(lr) in (min(probe.grid), max(probe.grid)):
                mark += " (edge of the grid)"
            rows.append(
                [
                    trainer_label(config, trainer),
                    depth[5:],
                    f"{lr:g}",
                    results.mean_std(values),
                    mark,
                ]
            )
    return (
        f"{study.corpus.describe()}\n\n"
        f"Learning-rate probe: {probe.steps} steps of Adam per run (B={config.batch_size}, "
        f"T={config.seq_len}), {probe.num_seeds} seed(s); validation bpb on the first "
        f"{n_scored:,} bytes of the valid split, read in order with state carried "
        f"(inf = diverged). Each trainer uses its own winner; a depth not probed takes the "
        f"nearest probed depth's.\n\n"
        + results.markdown_table(["trainer", "depth", "lr", "valid bpb", ""], rows)
    )


def result_table(config, done: dict, split: str) -> str:
    trainers = list(config.trainers)
    headers = ["depth"] + [f"{trainer_label(config, t)} (bpb)" for t in trainers]
    paired = "bptt" in trainers and "local" in trainers
    if paired:
        headers.append("gap (local − BPTT)")
    rows = []
    for depth in config.depths:
        values = {t: np.asarray(done[f"train/{t}/depth{depth}"][f"{split}_bpb"]) for t in trainers}
        row = [depth] + [results.mean_std(values[t]) for t in trainers]
        if paired:
            row.append(results.mean_std(values["local"] - values["bptt"], signed=True))
        rows.append(row)
    lrs = []
    for t in trainers:
        mine = {d: done[f"train/{t}/depth{d}"]["lr"] for d in config.depths}
        if len(set(mine.values())) == 1:
            lrs.append(f"{trainer_label(config, t)} {next(iter(mine.values())):g}")
        else:
            lrs.append(
                f"{trainer_label(config, t)} "
                + ", ".join(f"{lr:g} (L={d})" for d, lr in mine.items())
            )
    return (
        f"Held-out {split} bits per byte after {config.steps} steps of Adam "
        f"(B={config.batch_size}, T={config.seq_len}, H={config.model.d_model}, "
        f"N={config.model.d_state}), mean ± std over {config.num_seeds} seed(s); the gap is "
        f"paired by seed. Learning rates from the probe: {'; '.join(lrs)}.\n\n"
        + results.markdown_table(headers, rows)
    )


def data_lines(study) -> str:
    ev = study.config.eval
    lines = [study.corpus.describe()]
    for split, cap in (("valid", ev.valid_bytes), ("test", ev.test_bytes)):
        _, n_scored = study.streams(split, cap)
        size = getattr(study.corpus, split).size
        capped = f" (cap {cap:,})" if cap else ""
        lines.append(f"{split}: {n_scored:,} of {size:,} bytes scored{capped}")
    lines.append(
        f"Evaluation: each split read in order as {ev.streams} contiguous streams in windows "
        f"of {ev.window} bytes, the recurrent state carried across windows."
    )
    return "\n".join(lines)


def write(study, done: dict) -> str:
    """Draws the two plots; returns table.md's text."""
    config, workdir = study.config, study.runner.workdir
    corpus = study.corpus.name + (" (stand-in for enwik8)" if study.corpus.is_standin else "")
    series = {}
    for t in config.trainers:
        valid = np.asarray([done[f"train/{t}/depth{d}"]["valid_bpb"] for d in config.depths])
        series[trainer_label(config, t)] = (
            np.asarray(config.depths),
            valid.mean(axis=1),
            valid.std(axis=1),
        )
    plots.line_plot(
        workdir / "bpb_vs_depth.png",
        series,
        xlabel="depth L",
        ylabel="validation bits per byte",
        title=f"Depth study on {corpus}, {config.steps} steps",
    )
    curves = {}
    for t in config.trainers:
        for d in config.depths:
            loss = study.runner.records(f"train/{t}/depth{d}")["loss"]  # [seeds, steps] nats
            steps = np.arange(config.chunk_steps, config.steps + 1, config.chunk_steps)
            chunks = [loss[:, s - config.chunk_steps : s].mean() for s in steps]
            curves[f"{trainer_label(config, t)} L={d}"] = (
                steps,
                np.asarray(chunks) / np.log(2.0),
                None,
            )
    plots.line_plot(
        workdir / "training_curves.png",
        curves,
        xlabel="step",
        ylabel="training bits per byte (chunk mean, mean over seeds)",
        title=f"Training curves on {corpus}",
    )
    return (
        f"{data_lines(study)}\n\n{result_table(config, done, 'valid')}\n"
        f"{result_table(config, done, 'test')}"
    )
