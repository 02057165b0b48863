"""The sparse-RTRL study: one preset per table of the paper (experiments/configs/rtrl_sparse.py).

    python -m experiments.rtrl_sparse --config=experiments/configs/rtrl_sparse.py:table3

The settings and methods run as `experiments.online_study` describes. Outputs under --workdir:
config.json, metrics.jsonl (per run and chunk: mean loss per seed, gradient cosine and magnitude
ratio against a passive full-RTRL shadow where the setting asks for one), summary.json, table.md
(ours beside the paper's reported values where its text kept them), mse_<setting>.png (online
loss over the stream, mean over seeds, shifts marked), runs/ (per-step records). A seed whose
loss turns non-finite is reported as diverged with its step (divergence is one of the paper's
findings, so the sweep goes on).
"""

from __future__ import annotations

from pathlib import Path

from experiments import online_study, runner
from experiments.cli import run_study
from experiments.reports import online_shift as report

check_config = online_study.check_config


def study(config, runner_: runner.Runner):
    return online_study.study(config, runner_, report)


def run(config, workdir: str | Path) -> dict:
    return runner.run_study(config, workdir, study, check=check_config)


if __name__ == "__main__":
    run_study("rtrl_sparse", run, "Sparse-RTRL study preset (…/rtrl_sparse.py:<table>).")
