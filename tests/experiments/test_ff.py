"""The ff study: the smoke preset end to end (every table section, finite numbers, the bootstrap
CI brackets its estimate, parameter counts, PNGs), a finished study re-prints its table without
computing, every preset builds a valid config, and bad configs are refused."""

import json

import numpy as np
import pytest

from experiments import ff
from experiments.configs import ff as presets

SECTIONS = (
    "## Test accuracy",
    "## Paired differences (DTG-FF − baseline)",
    "## Pre-specified low-K vs high-K contrast",
    "## Train–test gap",
    "## DTG-FF per-layer accuracy",
    "## Parameter counts",
)


def test_smoke_preset_end_to_end_and_resume_reprints(tmp_path, capsys):
    config = presets.get_config("smoke")
    summary = ff.run(config, tmp_path)
    assert summary["finished"]
    table = (tmp_path / "table.md").read_text()
    for section in SECTIONS:
        assert section in table
    assert "+1.37" in table and "[+0.59, +2.15]" in table  # the paper's contrast beside ours
    S = len(config.seeds)
    for k in config.classes:
        for m in config.methods:
            out = summary["runs"][f"K{k}/{m}"]
            for split in ("test_accuracy", "train_accuracy"):
                acc = np.asarray(out[split], np.float64)
                assert acc.shape == (S,) and np.all((acc >= 0) & (acc <= 1))
            assert out["diverged"] == [-1] * S
            assert np.all(np.isfinite(np.asarray(out["final_loss"], np.float64)))
            curve = np.asarray(out["curve"]["test_acc"], np.float64)
            assert curve.shape == (S, config.steps // config.chunk)
        layers = np.asarray(summary["runs"][f"K{k}/dtg_ff"]["curve"]["layer_test_acc"])
        assert layers.shape == (S, config.steps // config.chunk, config.depth)
    # the students learn the teacher a little even in 60 steps: above chance for every method
    for m in config.methods:
        acc = np.mean([summary["runs"][f"K{k}/{m}"]["test_accuracy"] for k in config.classes])
        assert acc > 1.0 / min(config.classes)
    c = summary["contrast"]
    assert c["n_low"] == S * len(config.low_k) and c["n_high"] == S * len(config.high_k)
    assert c["ci"][0] <= c["diff"] <= c["ci"][1] and c["ci"][0] < c["ci"][1]
    diffs = summary["paired"]["bp_deepsup"]
    assert all(
        np.isfinite(d["mean"]) and d["ci"][0] <= d["mean"] <= d["ci"][1] for d in diffs.values()
    )
    counts = summary["parameter_counts"][str(config.count_k)]
    assert counts["bp_ensemble"] == config.ensemble_members * counts["bp"]
    for png in ("accuracy_vs_k.png", "paired_deepsup_vs_k.png"):
        assert (tmp_path / png).stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(config.classes) * len(config.methods) * S * (
        config.steps // config.chunk
    )

    capsys.readouterr()
    again = ff.run(config, tmp_path)  # finished: re-prints, computes nothing
    assert again == summary
    printed = capsys.readouterr().out
    assert "## Pre-specified low-K vs high-K contrast" in printed and "compiled" not in printed


def test_paper_sized_counts_and_every_preset_is_valid():
    config = presets.get_config("synthetic")
    assert ff.parameter_counts(config, 10) == {
        "dtg_ff": 56_068,
        "bp": 57_354,
        "bp_deepsup": 61_224,
        "bp_ensemble": 229_416,
        "dtg_ff_buffers": 5_160,
    }
    for preset in presets.PRESETS:
        ff.check(presets.get_config(preset))


def test_bootstrap_contrast_by_hand():
    config = presets.get_config("smoke")
    diffs = np.asarray([[1.0, 1.0], [3.0, 3.0]])  # K = 3 (low), K = 4 (high): no spread
    out = ff.report.bootstrap_contrast(diffs, config, 500, 0)
    assert out["diff"] == 2.0 and out["ci"] == [2.0, 2.0]


def test_bad_presets_and_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get_config("cifar")
    for key, value, match in [
        ("methods", ("dtg_ff", "hebb"), "unknown methods"),
        ("low_k", (3, 4), "disjoint subsets"),
        ("chunk", 7, "multiple of chunk"),
        ("eval_batch", 100, "multiple of eval_batch"),
    ]:
        config = presets.get_config("smoke")
        setattr(config, key, value)
        with pytest.raises(ValueError, match=match):
            ff.run(config, tmp_path / key)
