"""The immediate-derivative study: one preset per table of the paper
(experiments/configs/rtrl_immediate.py).

    python -m experiments.rtrl_immediate --config=experiments/configs/rtrl_immediate.py:table1

The settings and methods run as `experiments.online_study` describes (the same runner, streams
and report as the sparse-RTRL study). Outputs under --workdir: config.json, metrics.jsonl,
summary.json, table.md (ours beside the paper's values where its text kept them), the online
loss per setting (mse_<setting>.png), recovery against the trace decay where a preset sweeps it
(recovery_<setting>.png), runs/ (per-step records).
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
    run_study(
        "rtrl_immediate", run, "Immediate-derivative study preset (…/rtrl_immediate.py:<table>)."
    )
