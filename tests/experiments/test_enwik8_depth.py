"""The depth study end to end on the smoke preset: outputs, identical data, resume after SIGKILL."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import checkpoint, enwik8_depth, results, runner
from experiments.configs import enwik8_depth as depth_config
from experiments.data import text

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILE = REPO / "experiments" / "configs" / "enwik8_depth.py"
TIMING_FIELDS = {"tokens_per_s"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One uninterrupted smoke sweep: (config, workdir, summary, printed output)."""
    workdir = tmp_path_factory.mktemp("smoke")
    config = depth_config.get_config("smoke")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ENWIK8", raising=False)
        patch.chdir(workdir)  # no data/enwik8 here: the labelled GCIDE stand-in is used
        with pytest.warns(UserWarning, match="stand-in"):
            summary = enwik8_depth.run(config, workdir / "run")
    return config, workdir / "run", summary


def _comparable(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def test_smoke_writes_every_output_with_finite_bpb(smoke):
    config, workdir, summary = smoke
    for name in (
        "config.json",
        "metrics.jsonl",
        "lr_probe.md",
        "table.md",
        "summary.json",
        "bpb_vs_depth.png",
        "training_curves.png",
    ):
        assert (workdir / name).stat().st_size > 0, name
    assert summary["data"]["corpus"] == "gcide" and summary["data"]["is_standin"]
    table = (workdir / "table.md").read_text()
    assert "STAND-IN" in table and "carried across windows" in table
    assert "valid: 4,032 of 1,997,616 bytes scored (cap 4,096)" in table
    for depth in config.depths:
        assert table.count(f"\n| {depth} | ") == 2  # a valid row and a test row
        for trainer in config.trainers:
            cell = summary["runs"][f"train/{trainer}/depth{depth}"]
            bpb = np.asarray(cell["valid_bpb"] + cell["test_bpb"])
            assert bpb.shape == (2 * config.num_seeds,) and np.all(np.isfinite(bpb))
            assert np.all((bpb > 1.0) & (bpb < 10.0))
    probe = (workdir / "lr_probe.md").read_text()
    assert probe.count("**winner**") == len(config.trainers) * len(config.lr_probe.depths)
    rows = results.read_jsonl(workdir / "metrics.jsonl")
    train = [r for r in rows if r["phase"] == "train"]
    n_chunks = config.steps // config.chunk_steps
    assert len(train) == len(config.trainers) * len(config.depths) * config.num_seeds * n_chunks
    assert all(np.isfinite(r["train_bpb"]) and r["tokens_per_s"] > 0 for r in train)
    for r in train:  # the local trainer also logs each layer's own loss (denoising MSE, then CE)
        if r["trainer"] == "local":
            assert len(r["layer_losses"]) == r["depth"]
            assert r["layer_losses"][-1] == pytest.approx(r["train_loss_nats"], rel=1e-5)
        else:
            assert "layer_losses" not in r


def test_both_trainers_see_identical_batches(smoke):
    config, workdir, _ = smoke
    rows = [r for r in results.read_jsonl(workdir / "metrics.jsonl") if r["phase"] == "train"]
    by_step = {}
    for r in rows:
        by_step.setdefault(r["step"], set()).add(r["batches_crc32"])
        by_step.setdefault(("who", r["step"]), set()).add((r["trainer"], r["depth"]))
    for step in range(config.chunk_steps, config.steps + 1, config.chunk_steps):
        assert len(by_step[step]) == 1, step  # one digest for every trainer and depth
        assert len(by_step[("who", step)]) == len(config.trainers) * len(config.depths)


def test_depth_one_trainers_agree(smoke):
    """Depth 1: both trainers follow the same gradient, so the final bpb agree within 0.01."""
    _, _, summary = smoke
    bptt, local = summary["runs"]["train/bptt/depth1"], summary["runs"]["train/local/depth1"]
    assert bptt["lr"] == local["lr"]
    np.testing.assert_allclose(local["valid_bpb"], bptt["valid_bpb"], atol=0.01)
    np.testing.assert_allclose(local["test_bpb"], bptt["test_bpb"], atol=0.01)


def test_finished_sweep_reprints_its_table_without_training(smoke, capsys, monkeypatch):
    config, workdir, summary = smoke

    def fail(self, run):
        raise AssertionError("a finished sweep must not train again")

    monkeypatch.setattr(runner.Runner, "run", fail)
    capsys.readouterr()
    again = enwik8_depth.run(config, workdir)
    assert again == summary
    assert "| 2 |" in capsys.readouterr().out


def test_resume_after_sigkill_and_a_corrupt_checkpoint_gives_identical_results(
    smoke, tmp_path, monkeypatch, capsys
):
    """Kill -9 mid-sweep, damage the newest checkpoint, re-run: the same numbers as the
    uninterrupted run, bit for bit (float32 arithmetic is deterministic on one CPU)."""
    config, reference_dir, reference = smoke
    workdir = tmp_path / "run"
    # The test process runs with x64 enabled; PYTHONPATH pins this checkout's code.
    env = {**os.environ, "JAX_ENABLE_X64": "1", "PYTHONPATH": str(REPO)}
    env.pop("ENWIK8", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.enwik8_depth",
            f"--config={CONFIG_FILE}:smoke",
            f"--workdir={workdir}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (workdir / "checkpoint" / "ckpt-00000008.msgpack").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (workdir / "summary.json").exists()
    newest = sorted((workdir / "checkpoint").glob("ckpt-*.msgpack"))[-1]
    newest.write_bytes(newest.read_bytes()[:-100])  # a truncated file

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENWIK8", raising=False)
    with pytest.warns(UserWarning, match="checksum mismatch.*falling back"):
        resumed = enwik8_depth.run(config, workdir)
    # Killed inside a training cell (after at least one of its chunks), resumed from there.
    assert re.search(
        r"resuming from ckpt-\d+\.msgpack: \d runs done, train/\w+/depth\d at step [36]",
        capsys.readouterr().out,
    )
    assert resumed["runs"].keys() == reference["runs"].keys()
    for cell_id, cell in reference["runs"].items():
        for field in ("valid_bpb", "test_bpb", "winner", "lr"):
            assert resumed["runs"][cell_id].get(field) == cell.get(field), (cell_id, field)
    assert _comparable(results.read_jsonl(workdir / "metrics.jsonl")) == _comparable(
        results.read_jsonl(reference_dir / "metrics.jsonl")
    )


def test_truncated_bptt_and_online_trainers_run_in_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENWIK8", raising=False)
    config = depth_config.get_config("smoke")
    config.trainers = ["tbptt", "online"]
    config.depths = [2]
    config.lr_probe.depths = [2]
    with pytest.warns(UserWarning, match="stand-in"):
        summary = enwik8_depth.run(config, tmp_path / "run")
    table = (tmp_path / "run" / "table.md").read_text()
    assert "tbptt (w=4) (bpb)" in table and "online (k=4) (bpb)" in table
    assert "gap" not in table.split("\n\n")[2]  # no BPTT/local pair, so no gap column
    for trainer in config.trainers:
        assert np.all(np.isfinite(summary["runs"][f"train/{trainer}/depth2"]["valid_bpb"]))


def test_non_finite_loss_names_trainer_depth_step_and_quantity(tmp_path, monkeypatch):
    monkeypatch.delenv("ENWIK8", raising=False)
    monkeypatch.chdir(tmp_path)
    config = depth_config.get_config("smoke")
    run_dir = runner.Runner(config.to_dict(), tmp_path)
    with pytest.warns(UserWarning, match="stand-in"):
        study = enwik8_depth.DepthStudy(config, run_dir)
    lanes = [{"seed": 0, "lr": 3e-3}, {"seed": 1, "lr": 3e-3}]
    train = study.make_run("train", "local", 4, lanes, 6)
    metrics = {"loss": np.ones((2, 3)), "grad_norm": np.ones((2, 3))}
    metrics["grad_norm"][1, 2] = np.nan
    diverged = np.full(2, -1)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite grad_norm \(nan\) in train local depth 4, step 6 "
        r"\(seed 1, lr 0.003\): lower the learning rate",
    ):
        run_dir._check_finite(train, metrics, 3, diverged)
    probe = study.make_run(
        "probe", "local", 4, [{"seed": 0, "lr": 3e-3}, {"seed": 0, "lr": 1.0}], 6
    )
    run_dir._check_finite(probe, metrics, 3, diverged)  # a probe only marks the lane
    assert diverged.tolist() == [-1, 6]


def test_bad_configs_are_rejected_with_the_field_to_fix(tmp_path):
    config = depth_config.get_config("smoke")
    config.trainers = ["bptt", "sgd"]
    with pytest.raises(ValueError, match=r"config.trainers=\['bptt', 'sgd'\]: choose from"):
        enwik8_depth.run(config, tmp_path)
    config = depth_config.get_config("smoke")
    config.trainers = ["tbptt"]
    config.tbptt_window = 5
    with pytest.raises(ValueError, match="tbptt window=5 must be a positive int dividing"):
        enwik8_depth.run(config, tmp_path)
    config = depth_config.get_config("smoke")
    config.model.d_model = 0
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        enwik8_depth.run(config, tmp_path)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        depth_config.get_config("fast")


def test_misspelled_override_is_rejected_by_the_locked_config(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.enwik8_depth",
            f"--config={CONFIG_FILE}:smoke",
            "--config.stepz=3",
            f"--workdir={tmp_path}",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "stepz" in proc.stderr
    assert not (tmp_path / "config.json").exists()


def test_another_configs_checkpoint_is_not_resumed(tmp_path):
    config = depth_config.get_config("smoke")
    other = config.to_dict()
    other["steps"] = 999
    checkpoint.save(tmp_path / "checkpoint", {"config": other, "done": {}})
    with pytest.raises(ValueError, match="written by another config"):
        enwik8_depth.run(config, tmp_path)


def test_eval_streams_cover_each_byte_once_and_reject_tiny_splits():
    split = np.arange(1000, dtype=np.int64).astype(np.uint8)
    streams, n_scored = text.eval_streams(split, n_streams=3, window=10, cap=0)
    assert streams.shape == (3, 331) and n_scored == 990
    predicted = np.concatenate([np.arange(1000)[1 + 330 * i : 331 + 330 * i] for i in range(3)])
    assert np.array_equal(streams[:, 1:].ravel(), predicted.astype(np.uint8))
    _, capped = text.eval_streams(split, n_streams=3, window=10, cap=500)
    assert capped == 480
    with pytest.raises(ValueError, match="cannot fill 3 streams of one 400-byte window"):
        text.eval_streams(split, n_streams=3, window=400, cap=0)


def test_saved_config_json_matches_the_run(smoke):
    config, workdir, _ = smoke
    assert json.loads((workdir / "config.json").read_text()) == config.to_dict()


def test_eight_devices_give_the_one_device_numbers(smoke, tmp_path):
    """The smoke sweep with its lanes sharded over an 8-device CPU mesh (2 or 4 lanes, padded)."""
    _, _, reference = smoke
    env = {
        **os.environ,
        "JAX_ENABLE_X64": "1",
        "PYTHONPATH": str(REPO),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    env.pop("ENWIK8", None)
    workdir = tmp_path / "mesh8"
    cmd = [sys.executable, "-m", "experiments.enwik8_depth", f"--config={CONFIG_FILE}:smoke"]
    proc = subprocess.run(
        [*cmd, f"--workdir={workdir}"], cwd=tmp_path, env=env, capture_output=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["runtime"]["devices"] == 8
    for run_id, run in reference["runs"].items():
        got = summary["runs"][run_id]
        assert got.get("winner") == run.get("winner") and got.get("lr") == run.get("lr")
        for field in ("valid_bpb", "test_bpb"):
            if field in run:
                np.testing.assert_allclose(got[field], run[field], rtol=1e-5, err_msg=run_id)
