"""The head-transport study end to end: every preset's smoke variant through the study entry
(tables, summary, metrics and PNGs written and finite), resume after an interruption to the same
numbers, every preset a valid config, bad configs refused with the fix named.

The runs of one preset are the lanes of one program, so the cost here is mostly compilation; the
session's compilation cache (tests/conftest.py) lets the interrupted and resumed runs reuse the
smoke run's program."""

import json
import math

import numpy as np
import pytest

from experiments import head_transport, runner
from experiments.configs import head_transport as presets


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    config = presets.get_config("smoke")
    return config, workdir, head_transport.run(config, workdir)


def _finite_rows(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for name in ("loss", "grad_norm", "qkv_grad_norm"):
            assert row[name] is not None and math.isfinite(row[name]), (name, row)
    return rows


def _check_outputs(config, workdir, summary):
    assert summary["finished"]
    table = (workdir / "table.md").read_text()
    for name in config.tables:
        assert f"## {head_transport.report.BUILDERS[name][0]}" in table
    assert "stand-in" in table
    assert (workdir / "summary.json").exists()
    if "table11" not in config.preset:
        assert (workdir / "recovery_vs_k.png").stat().st_size > 0
    for spec in config.runs:
        assert (workdir / f"accuracy_{runner.slug(spec['id'])}.png").stat().st_size > 0
        out = summary["runs"][spec["id"]]
        for name in ("average_accuracy", "forgetting", "task_il_accuracy"):
            values = np.asarray(out[name], np.float64)
            assert values.shape == (len(config.seeds),) and np.all(np.isfinite(values))
        acc = np.asarray(out["acc_matrix"], np.float64)
        assert acc.shape == (len(config.seeds), config.tasks, config.tasks)
        assert np.all((acc >= 0) & (acc <= 1))
        fisher = np.asarray(out["scores"]["fisher"], np.float64)
        assert fisher.shape == (len(config.seeds), config.tasks - 1, 1, 12)
        assert np.all(np.isfinite(fisher)) and np.all(fisher > 0)
        if spec["k"] == 0:  # after the dense tasks Q, K, V get exactly no gradient
            assert np.all(np.asarray(out["qkv_grad_norm_sparse_phase"]) == 0.0)
        else:
            assert np.all(np.asarray(out["qkv_grad_norm_sparse_phase"]) > 0.0)
        if "selection" in out:
            assert np.all(np.asarray(out["selection"]).sum(axis=-1) == spec["k"])
    rows = _finite_rows(workdir)
    assert {r["condition"] for r in rows} == {spec["id"] for spec in config.runs}


def test_smoke_preset_writes_every_table(smoke):
    config, workdir, summary = smoke
    _check_outputs(config, workdir, summary)
    assert (workdir / "recovery_selection.png").stat().st_size > 0
    # a score selection's heads are the top / bottom k of its scores after task score_after
    out = summary["runs"]["t1/fisher_top"]
    fisher = np.asarray(out["scores"]["fisher"])[:, 0]  # after task 1: [seeds, depth, H]
    chosen = np.asarray(out["selection"], bool)
    for f, c in zip(fisher.reshape(-1, 12), chosen.reshape(-1, 12), strict=True):
        assert f[c].min() >= f[~c].max()
    again = head_transport.run(config, workdir)  # a finished study re-prints its table
    assert again == summary


def test_a_single_table_smoke_preset_runs(tmp_path):
    """One `<table>_smoke` (they share the smoke's runs; every table's builder runs in `smoke`)."""
    config = presets.get_config("table11_smoke")
    _check_outputs(config, tmp_path, head_transport.run(config, tmp_path))


def test_interrupted_run_resumes_to_the_same_numbers(smoke, tmp_path, monkeypatch):
    config, _, full = smoke
    chunks = {"n": 0}
    progress = runner.Runner._progress

    def interrupt(self, *args):
        progress(self, *args)
        chunks["n"] += 1
        if chunks["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.Runner, "_progress", interrupt)
    with pytest.raises(KeyboardInterrupt):
        head_transport.run(config, tmp_path)
    monkeypatch.setattr(runner.Runner, "_progress", progress)
    resumed = head_transport.run(config, tmp_path)
    assert resumed["runs"] == full["runs"]
    assert len(_finite_rows(tmp_path)) == config.tasks * len(config.runs) * len(config.seeds)


@pytest.mark.parametrize(
    "preset",
    [*presets.PRESETS, "cpu", "paper", "smoke"]
    + [f"{p}_{s}" for p in presets.PRESETS for s in ("smoke", "paper")],
)
def test_every_preset_builds_a_valid_config(preset):
    config = presets.get_config(preset)
    head_transport.check(config)
    ids = [spec["id"] for spec in config.runs]
    assert len(ids) == len(set(ids)) and "dense" in ids
    if preset in ("table10", "table10_paper"):
        assert sorted(s["k"] for s in config.runs) == [0, 2, 4, 6, 12]
    if preset.endswith("smoke"):  # one program for every smoke preset
        assert config.runs == presets.get_config("smoke").runs


def _with_run(config, **changes):
    config.unlock()
    config.runs = [{**config.runs[0], **changes}, *config.runs[1:]]
    return config


def test_bad_presets_and_configs_are_refused():
    with pytest.raises(ValueError, match="unknown preset 'table12'"):
        presets.get_config("table12")
    cases = [
        ({"k": 13}, r"k = 13 must be in \[0, model.heads = 12\]"),
        ({"selection": "oracle"}, "unknown selection 'oracle'"),
        ({"variant": "dropout"}, "unknown variant 'dropout'"),
        ({"selection": "fisher_top", "dense_tasks": 0, "score_after": 1}, "score_after"),
        ({"dense_tasks": 5}, r"dense_tasks must be in \[0, tasks = 5\)"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            head_transport.check(_with_run(presets.get_config("table10_smoke"), **changes))
    config = presets.get_config("table11_smoke")
    config.unlock()
    config.fisher_batches = 8
    with pytest.raises(ValueError, match="lower fisher_batches"):
        head_transport.check(config)
