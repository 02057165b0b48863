r"""Per-layer cosine between the local (trace) gradient and the end-to-end BPTT gradient.

    python -m experiments.gradient_alignment \
        --config=experiments/configs/gradient_alignment.py:cpu [--workdir=...]

For each depth and seed (seeds vmapped), on one batch of real text: the cosine, over the
parameters both objectives share (nu_log, theta, B, C, D of layer ℓ), between ∂L^ℓ/∂θ^ℓ from the
trace engine and ∂L^L_task/∂θ^ℓ from BPTT through the whole stack; and the cosine between the trace
engine and jax.grad of the same local objective over everything layer ℓ owns (must be 1.0000).
Writes config.json, metrics.jsonl, summary.json, table.md and alignment.png under the workdir.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lru_local
from experiments import cli, plots, results
from experiments.data import text
from rtrl.metrics import gradient_cosine

SHARED = ("nu_log", "theta", "B_re", "B_im", "C_re", "C_im", "D")


def _owned(grads: dict, ell: int, depth: int) -> list:
    """Every leaf layer ℓ owns: its LRU parameters and its head (the decoder for the last)."""
    head = grads["decoder"] if ell == depth - 1 else grads["heads"][ell]
    return jax.tree_util.tree_leaves((grads["layers"][ell], head))


def make_alignment(cfg: lru_local.Config):
    """key -> (cos(local, BPTT) [L], cos over the whole stack, cos(trace, autodiff) [L])."""

    def one_seed(key, tokens):
        k_init, k_noise = jax.random.split(key)
        params = lru_local.init(k_init, cfg)
        _, local = lru_local.local_grads(params, tokens, k_noise, cfg)
        _, autodiff = lru_local.local_grads_autodiff(params, tokens, k_noise, cfg)
        _, bptt = lru_local.bptt_grads(params, tokens, cfg)

        def shared(g, layers):
            return [g["layers"][ell][name] for ell in layers for name in SHARED]

        vs_bptt = [
            gradient_cosine(shared(local, [ell]), shared(bptt, [ell])) for ell in range(cfg.depth)
        ]
        stack = gradient_cosine(shared(local, range(cfg.depth)), shared(bptt, range(cfg.depth)))
        vs_autodiff = [
            gradient_cosine(_owned(local, ell, cfg.depth), _owned(autodiff, ell, cfg.depth))
            for ell in range(cfg.depth)
        ]
        return jnp.stack(vs_bptt), stack, jnp.stack(vs_autodiff)

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None)))


def run(config, workdir: str | Path) -> dict:
    """Runs the diagnostic for every depth; returns the summary (also written to workdir)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_dict()
    finished = results.finished_run(workdir, config_dict)
    if finished is not None:
        table, summary = finished  # the table already names the corpus it ran on
        print(table)
        return summary
    corpus = text.load_corpus()
    results.write_json(workdir / "config.json", config_dict)
    tokens = jnp.asarray(
        text.random_windows(
            corpus.train, config.batch_size, config.seq_len + 1, config.data_seed, step=0
        )
    )
    keys = jax.random.split(jax.random.key(config.data_seed), config.num_seeds)
    rows, per_depth = [], {}
    for depth in config.depths:
        cfg = lru_local.Config.from_mapping({**config.model.to_dict(), "depth": depth})
        start = time.perf_counter()
        vs_bptt, stack, vs_autodiff = jax.device_get(make_alignment(cfg)(keys, tokens))
        seconds = time.perf_counter() - start
        print(
            f"depth {depth}: cos(local, BPTT) per layer "
            f"{np.round(vs_bptt.mean(0), 4).tolist()}, whole stack {stack.mean():.4f}, "
            f"cos(trace, autodiff) "
            f"min {vs_autodiff.min():.6f} ({seconds:.1f}s)",
            flush=True,
        )
        per_depth[str(depth)] = {
            "vs_bptt": vs_bptt.tolist(),
            "stack_vs_bptt": stack.tolist(),
            "vs_autodiff": vs_autodiff.tolist(),
        }
        for seed in range(config.num_seeds):
            for ell in range(depth):
                rows.append(
                    {
                        "depth": depth,
                        "seed": seed,
                        "layer": ell + 1,
                        "cos_local_vs_bptt": float(vs_bptt[seed, ell]),
                        "cos_trace_vs_autodiff": float(vs_autodiff[seed, ell]),
                    }
                )
    results.write_jsonl(workdir / "metrics.jsonl", rows)

    max_depth = max(config.depths)
    headers = ["depth"] + [f"layer {ell + 1}" for ell in range(max_depth)]
    headers += ["whole stack", "trace vs autodiff (min over layers, seeds)"]
    table_rows = []
    for depth, values in zip(config.depths, per_depth.values(), strict=True):
        vs_bptt = np.asarray(values["vs_bptt"])
        entries = [results.mean_std(vs_bptt[:, ell], ".4f") for ell in range(depth)]
        entries += [""] * (max_depth - depth)
        stack = results.mean_std(np.asarray(values["stack_vs_bptt"]), ".4f")
        table_rows.append([depth, *entries, stack, f"{np.min(values['vs_autodiff']):.4f}"])
    model = config.model
    table = (
        f"{corpus.describe()}\n\n"
        f"Cosine between each layer's local trace gradient and the full-stack BPTT gradient of the "
        f"task loss (shared parameters λ, B, C, D; 'whole stack' concatenates all layers), at "
        f"random init, mean ± std over "
        f"{config.num_seeds} seeds; H={model.d_model}, N={model.d_state}, "
        f"B={config.batch_size}, T={config.seq_len}, float32.\n\n"
        + results.markdown_table(headers, table_rows)
    )
    results.write_text(workdir / "table.md", table)
    plots.line_plot(
        workdir / "alignment.png",
        {
            f"depth {depth}": (
                np.arange(1, depth + 1),
                np.mean(values["vs_bptt"], axis=0),
                np.std(values["vs_bptt"], axis=0),
            )
            for depth, values in zip(config.depths, per_depth.values(), strict=True)
        },
        xlabel="layer ℓ",
        ylabel="cos(local trace grad, BPTT grad)",
        title=f"Local vs end-to-end gradient at init ({corpus.name}"
        + (", stand-in for enwik8)" if corpus.is_standin else ")"),
    )
    summary = {"finished": True, "data": corpus.summary(), "per_depth": per_depth}
    results.write_json(workdir / "summary.json", summary)
    print(table)
    return summary


if __name__ == "__main__":
    cli.run_study("gradient_alignment", run, "Diagnostic config.")
