"""Tables and plots of the head-transport study (experiments/head_transport.py): the paper's
numbers beside ours. `run_summary(...)` -> one run's JSON result; `write(config, workdir, done)`
-> table.md text (and the PNGs).

Readings we chose where the paper is silent: accuracy is class-incremental (argmax over all 10
classes) with every head on, on `eval_per_task` test images per task; "average accuracy" is the
mean over the 5 tasks after the last; forgetting is the mean over tasks 1..4 of (best accuracy
on task j after any task i < 5) − (accuracy on j after task 5); R is computed per seed and from
the seed means (the paper's "Recovery" column reads as the latter); the threshold (Table 14) is
the smallest k whose R from the means is ≥ 70%. The paper's Table 10 has two dense rows
(bptt_ref: a plain model; dense_ref: the sparse code at 12/12); ours are one run, since k = 12
gates nothing (the tests check the forward bit for bit and the gradients). The paper's floor row
is "trace_like 1/12"; ours is k = 0, as the issue asks.
"""

from __future__ import annotations

import numpy as np

from experiments import plots, results, runner
from rtrl import head_transport as ht

PAPER_TABLE10 = {  # k: (seed 42, 43, 44, mean, R)
    12: ("0.403", "0.389", "0.401", "0.398", "100%"),
    6: ("0.406", "0.382", "0.415", "0.401", "107%"),
    4: ("0.387", "0.376", "0.384", "0.383", "77%"),
    2: ("0.353", "0.325", "0.336", "0.338", "8%"),
}
PAPER_BPTT = ("0.407", "0.397", "0.374", "0.393", "—")
PAPER_TRACE_LIKE = ("0.328", "0.317", "0.346", "0.330", "0%")
PAPER_TABLE11 = {  # selection: per-seed recovery (seeds 7, 42, 43, 44, 2024) and the mean, %
    "fisher_top": ("96.9, 97.6, 93.7, 89.2, 99.1", "95.3"),
    "entropy_top": ("58.0, 70.0, 76.9, 87.8, 89.5", "76.4"),
    "random": ("84.0, 84.2, 66.3, 80.6, 72.5", "77.5"),
    "entropy_bottom": ("82.3, 61.1, 82.8, 66.9, 85.3", "75.7"),
    "fisher_bottom": ("70.1, 63.3, 69.7, 63.7, 88.3", "71.0"),
}
PAPER_TABLE14 = [
    ("Vanilla RNN (paper)", "neuron", "4/64 (6%)", "(see README, rtrl_sparse)", "(fails)"),
    ("LSTM (paper)", "gate Jacobian", "4/64 (6%)", "100%", "(fails)"),
    ("Transformer (paper)", "attention head", "4–6/12 (33–50%)", "77–107%", "0%"),
]


# ----- one run ---------------------------------------------------------------------------------


def run_summary(config, spec, state, records, diverged, source, steps_per_epoch) -> dict:
    """Per seed: the accuracy after every task on every task, average accuracy, forgetting, the
    importance scores after tasks 1..T−1 and (score selections) the fixed heads."""
    T, E = config.tasks, config.epochs_per_task
    curve = np.asarray(records["chunk/acc"], np.float64)  # [seeds, chunks, T]
    til = np.asarray(records["chunk/acc_task_il"], np.float64)
    ends = [(i + 1) * E - 1 for i in range(T)]
    matrix = curve[:, ends]  # [seeds, after task i, on task j]
    final = matrix[:, -1]
    best = np.stack([matrix[:, : T - 1, j].max(axis=1) for j in range(T - 1)], axis=1)
    forgetting = np.mean(best - final[:, : T - 1], axis=1)
    sparse_from = spec["dense_tasks"]
    qkv = np.asarray(records["qkv_grad_norm"], np.float64)
    sparse_steps = qkv[:, sparse_from * E * steps_per_epoch :]
    out = {
        "data": source,
        "average_accuracy": final.mean(axis=1).tolist(),
        "sparse_tasks_accuracy": final[:, sparse_from:].mean(axis=1).tolist(),
        "task_il_accuracy": til[:, -1].mean(axis=1).tolist(),
        "forgetting": forgetting.tolist(),
        "acc_matrix": matrix.tolist(),
        "acc_curve": curve.tolist(),
        "scores": {k: np.asarray(v, np.float64).tolist() for k, v in state["scores"].items()},
        "qkv_grad_norm_sparse_phase": np.mean(sparse_steps, axis=1).tolist(),
        "diverged": np.asarray(diverged).tolist(),
    }
    if ht.SELECTIONS[spec["selection"]].score is not None:
        out["selection"] = np.asarray(state["rule"].fixed).astype(int).tolist()
    accs = ", ".join(f"{a:.3f}" for a in out["average_accuracy"])
    print(f"[{spec['id']}] average accuracy per seed: {accs}", flush=True)
    return out


# ----- helpers ---------------------------------------------------------------------------------


def _acc(out, metric="average_accuracy"):
    return np.asarray(out[metric], np.float64)


def recovery(acc, floor, dense):
    """(per-seed R [S], R of the seed means): R = (acc − floor) / (dense − floor)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = (acc - floor) / (dense - floor)
        of_means = (np.mean(acc) - np.mean(floor)) / (np.mean(dense) - np.mean(floor))
    return per_seed, float(of_means)


def _pct(x):
    return "—" if not np.isfinite(x) else f"{100 * x:.0f}%"


def _seeds(values, fmt=".3f"):
    return ", ".join(format(v, fmt) for v in values)


def _ms(values, fmt=".3f"):
    return results.mean_std(values, fmt, fmt.lstrip("+"), finite_only=True)


def _heads(config) -> int:
    return config.model.heads


def _by_id(config, done):
    return {spec["id"]: (spec, done[spec["id"]]) for spec in config.runs}


def _k_rows(config, done, variant):
    """The variant's k sweep (random heads from the first task, with dense as k = H)."""
    rows = []
    for spec in config.runs:
        plain = spec["selection"] == "random" and spec["dense_tasks"] == 0
        if plain and (spec["variant"] == variant or spec["id"] == "dense"):
            rows.append((spec, done[spec["id"]]))
    return sorted(rows, key=lambda r: -r[0]["k"])


def _sweep_table(config, done, variant, paper=None):
    runs = _by_id(config, done)
    floor_id = f"{variant}/k0"
    if floor_id not in runs or "dense" not in runs:
        return f"(needs the runs dense and {floor_id})\n"
    floor, dense = _acc(runs[floor_id][1]), _acc(runs["dense"][1])
    rows = []
    for spec, out in _k_rows(config, done, variant):
        acc = _acc(out)
        per_seed, of_means = recovery(acc, floor, dense)
        p = (paper or {}).get(spec["k"], ("",) * 5)
        rows.append(
            [
                spec["label"],
                _seeds(acc),
                _ms(acc),
                _pct(of_means),
                _seeds(100 * per_seed, ".0f"),
                _ms(out["forgetting"]),
                _ms(out["task_il_accuracy"]),
                p[3],
                p[4],
            ]
        )
    heads = [
        "method",
        "avg acc per seed",
        "mean",
        "R (means)",
        "R per seed %",
        "forgetting",
        "task-IL acc",
        "paper mean",
        "paper R",
    ]
    return results.markdown_table(heads, rows)


def _threshold(config, done, variant):
    """(k, R, floor accuracy) of the smallest k with R ≥ 70%, or None."""
    runs = _by_id(config, done)
    if f"{variant}/k0" not in runs or "dense" not in runs:
        return None
    floor, dense = _acc(runs[f"{variant}/k0"][1]), _acc(runs["dense"][1])
    for spec, out in sorted(_k_rows(config, done, variant), key=lambda r: r[0]["k"]):
        if spec["k"] == 0:
            continue
        _, r = recovery(_acc(out), floor, dense)
        if r >= 0.7:
            return spec["k"], r, float(np.mean(floor))
    return None, float("nan"), float(np.mean(floor))


# ----- tables ----------------------------------------------------------------------------------


def table10(config, done) -> str:
    text = _sweep_table(config, done, "detach", PAPER_TABLE10)
    return (
        text
        + f"\nPaper: bptt_ref 12/12 {PAPER_BPTT[3]} (ours: the dense run; k = 12 gates nothing), "
        f"trace_like 1/12 {PAPER_TRACE_LIKE[3]} (their floor; ours is k = 0); forgetting 0.22 "
        "at k = 6 vs 0.45 dense. Per-seed paper values (seeds 42, 43, 44) are not comparable "
        "one to one (another PRNG and dataset).\n"
    )


def zeroing(config, done) -> str:
    text = _sweep_table(config, done, "zero")
    runs = _by_id(config, done)
    lines = []
    for variant in ("detach", "zero"):
        found = _threshold(config, done, variant)
        if found is not None:
            k, r, floor = found
            where = "none of the k run" if k is None else f"k = {k}/{_heads(config)} (R {_pct(r)})"
            lines.append(
                f"- {variant}: floor (k = 0) accuracy {floor:.3f}; R ≥ 70% first at {where}"
            )
    if "detach/k0" in runs and "zero/k0" not in runs:
        lines.append("- (zero/k0 not run)")
    return (
        text
        + "\n"
        + "\n".join(lines)
        + "\n\nPaper: zeroing moves the 70% threshold from 33% (4/12) to 50% (6/12) of heads; "
        "its floor accuracy is 0.14 (0.33 with detach). Evaluation uses every head (the "
        "zeroing is a training-time mask, as dropout), without rescaling.\n"
    )


def threshold(config, done) -> str:
    rows = [list(r) for r in PAPER_TABLE14]
    for variant in ("detach", "zero"):
        found = _threshold(config, done, variant)
        if found is None:
            continue
        k, r, floor = found
        H = _heads(config)
        at = "none ≤ the largest k run" if k is None else f"{k}/{H} ({100 * k / H:.0f}%)"
        rows.append(
            [f"Transformer, ours ({variant})", "attention head", at, _pct(r), f"acc {floor:.3f}"]
        )
    return (
        results.markdown_table(
            ["architecture", "transport unit", "threshold (R ≥ 70%)", "R at threshold", "floor"],
            rows,
        )
        + "\nOur RNN rows are the rtrl_sparse study's (README).\n"
    )


def _selection_rows(config, done, dense_tasks, metric):
    runs = _by_id(config, done)
    floor_id = f"t{dense_tasks}/k0"
    if floor_id not in runs or "dense" not in runs:
        return None, {}
    floor, dense = _acc(runs[floor_id][1], metric), _acc(runs["dense"][1], metric)
    out = {}
    for spec, o in runs.values():
        if spec["dense_tasks"] == dense_tasks and spec["k"] not in (0, _heads(config)):
            out[spec["id"]] = (spec, o, *recovery(_acc(o, metric), floor, dense))
    return (floor, dense), out


def table11(config, done) -> str:
    ends, rows_ = _selection_rows(config, done, 1, "average_accuracy")
    if ends is None:
        return "(needs the runs dense and t1/k0)\n"
    rows = []
    for run_id, (spec, out, per_seed, r) in rows_.items():
        paper = PAPER_TABLE11.get(spec["selection"], ("", ""))
        rows.append(
            [
                spec["label"],
                _ms(out["average_accuracy"]),
                _seeds(100 * per_seed, ".1f"),
                _pct(r),
                _pct(recovery(_acc(out, "sparse_tasks_accuracy"), *_ends(config, done, 1))[1]),
                paper[0],
                paper[1] + ("%" if paper[1] else ""),
            ]
        )
        del run_id
    gap = _gap(rows_, "t1/fisher_top", "t1/fisher_bottom")
    ent = _gap(rows_, "t1/fisher_top", "t1/entropy_top")
    floor, dense = ends
    return (
        results.markdown_table(
            [
                "selection (k = 6, after a dense task 1)",
                "avg acc",
                "R per seed %",
                "R (means)",
                "R on tasks 2–5",
                "paper R per seed %",
                "paper mean",
            ],
            rows,
        )
        + f"\nEnds of R: k = 0 after task 1 {_ms(floor)}, dense {_ms(dense)}. "
        f"Fisher oracle − anti: {gap} (paper +24.3 pp, positive on 5/5 seeds); Fisher − entropy "
        f"oracle: {ent} (paper +18.9 pp).\n"
    )


def _ends(config, done, dense_tasks):
    runs = _by_id(config, done)
    return (
        _acc(runs[f"t{dense_tasks}/k0"][1], "sparse_tasks_accuracy"),
        _acc(runs["dense"][1], "sparse_tasks_accuracy"),
    )


def _gap(rows, a, b):
    if a not in rows or b not in rows:
        return "—"
    diff = 100 * (rows[a][2] - rows[b][2])
    positive = int(np.sum(diff > 0))
    return f"{_ms(diff, '+.1f')} pp per seed ({positive}/{diff.size} positive)"


def timing(config, done) -> str:
    ends, rows_ = _selection_rows(config, done, 2, "sparse_tasks_accuracy")
    if ends is None:
        return "(needs the runs dense and t2/k0)\n"
    rows = []
    for spec, out, per_seed, r in rows_.values():
        rows.append(
            [
                spec["label"],
                _ms(out["sparse_tasks_accuracy"]),
                _seeds(100 * per_seed, ".1f"),
                _pct(r),
                _ms(out["average_accuracy"]),
            ]
        )
    g1 = _gap(rows_, "t2/fisher_top_after1", "t2/fisher_bottom_after1")
    g2 = _gap(rows_, "t2/fisher_top_after2", "t2/fisher_bottom_after2")
    return (
        results.markdown_table(
            [
                "selection (k = 6 on tasks 3–5, tasks 1–2 dense)",
                "acc on tasks 3–5 after task 5",
                "R per seed %",
                "R (means)",
                "avg acc (all tasks)",
            ],
            rows,
        )
        + f"\nOracle − anti with Fisher after task 1: {g1} (paper +22.5 pp); after task 2: {g2} "
        "(paper: Fisher after task 2 is worse than random). R here is on tasks 3–5 between "
        "k = 0 and dense on the same schedule.\n"
    )


def _rank_corr(scores):
    """scores [T−1, depth, H] -> [T−1, T−1] Spearman ρ (mean over blocks)."""
    n = scores.shape[0]
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            rho = [float(ht.spearman(scores[i, l], scores[j, l])) for l in range(scores.shape[1])]
            out[i, j] = np.mean(rho)
    return out


def spearman(config, done) -> str:
    runs = _by_id(config, done)
    if "dense" not in runs:
        return "(needs the dense run)\n"
    rows = []
    for name in ("fisher", "peakedness"):
        scores = np.asarray(runs["dense"][1]["scores"][name], np.float64)  # [S, T−1, depth, H]
        corr = np.stack([_rank_corr(s) for s in scores])  # [S, T−1, T−1]
        n = corr.shape[1]
        for i in range(n):
            for j in range(i + 1, n):
                rows.append([name, f"after task {i + 1} vs {j + 1}", _ms(corr[:, i, j], "+.2f")])
    return (
        results.markdown_table(["score", "tasks", "Spearman ρ of head ranks (dense run)"], rows)
        + "\nPer block, over its 12 heads, averaged over blocks; mean ± std over seeds. Paper: "
        "rankings are correlated across tasks (its ρ was lost), yet small rank shifts near the "
        "cut change which heads are chosen.\n"
    )


BUILDERS = {
    "table10": ("Table 10: recovery vs k (detach, random heads per forward pass)", table10),
    "zeroing": ("Forward zeroing (structured head dropout)", zeroing),
    "threshold": ("Table 14: the transformer row", threshold),
    "table11": ("Table 11: head selection at k = 6 (Fisher after task 1)", table11),
    "timing": ("Fisher timing: after task 1 vs after task 2", timing),
    "spearman": ("Ranking stability across tasks", spearman),
}


# ----- plots -----------------------------------------------------------------------------------


def plot(config, workdir, done) -> None:
    for spec in config.runs:
        curve = np.asarray(done[spec["id"]]["acc_curve"], np.float64)  # [S, chunks, T]
        x = np.arange(1, curve.shape[1] + 1)
        series = {
            f"task {j + 1}": (x, curve[:, :, j].mean(0), curve[:, :, j].std(0))
            for j in range(curve.shape[2])
        }
        E = config.epochs_per_task
        plots.line_plot(
            workdir / f"accuracy_{runner.slug(spec['id'])}.png",
            series,
            xlabel="epoch",
            ylabel="class-incremental accuracy",
            title=f"{spec['label']}: accuracy per task (mean ± std over seeds)",
            marker=None,
            vlines=tuple(E * i + 0.5 for i in range(1, config.tasks)),
        )
    runs = _by_id(config, done)
    series = {}
    for variant in ("detach", "zero"):
        if f"{variant}/k0" not in runs or "dense" not in runs:
            continue
        floor, dense = _acc(runs[f"{variant}/k0"][1]), _acc(runs["dense"][1])
        pts = sorted(_k_rows(config, done, variant), key=lambda r: r[0]["k"])
        rs = np.stack([recovery(_acc(o), floor, dense)[0] for _, o in pts])
        ks = np.asarray([s["k"] for s, _ in pts])
        series[variant] = (ks, np.nanmean(rs, 1), np.nanstd(rs, 1))
    if series:
        plots.line_plot(
            workdir / "recovery_vs_k.png",
            series,
            xlabel=f"k (heads transporting gradient, of {_heads(config)})",
            ylabel="recovery R (mean ± std over seeds)",
            title="Recovery vs k",
        )
    ends, rows_ = _selection_rows(config, done, 1, "average_accuracy")
    if rows_:
        labels = [spec["selection"] for spec, *_ in rows_.values()]
        plots.points_plot(
            workdir / "recovery_selection.png",
            np.arange(len(labels)),
            np.stack([row[2] for row in rows_.values()]),
            xlabel=" | ".join(labels),
            ylabel="recovery R per seed",
            title="Head selection at k = 6 (after a dense task 1)",
            hlines=(0.0, 1.0),
        )


def write(config, workdir, done) -> str:
    sources = sorted({out["data"] for out in done.values()})
    c = config
    parts = [
        f"# {c.title}\n",
        f"Data: {'; '.join(sources)}. {c.tasks} tasks of {c.classes_per_task} classes, "
        f"{c.train_per_class or 'all'} training images per class, {c.epochs_per_task} epochs "
        f"per task, {c.batch} fresh + {c.replay_batch} replayed images per step (buffer "
        f"{c.replay_capacity}), {c.optimizer} lr {c.lr:g}; ViT {c.model.heads} heads × "
        f"{c.model.head_dim}, depth {c.model.depth}, MLP {c.model.mlp}, patch {c.model.patch}; "
        f"seeds {list(c.seeds)}; {c.eval_per_task or 'all'} test images per task.\n",
    ]
    for name in c.tables:
        title, build = BUILDERS[name]
        parts += [f"## {title}\n", build(config, done)]
    text = "\n".join(parts)
    results.write_text(workdir / "table.md", text)
    plot(config, workdir, done)
    return text
