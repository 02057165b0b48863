"""The shared study runner on a toy study: SIGKILL resume, re-print, refusals, policies, devices."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import runner as runner_lib
from tests.experiments import toy_study

REPO = Path(__file__).resolve().parents[2]


def _npz(workdir, run_id):
    with np.load(Path(workdir) / "runs" / f"{run_id}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _strip(summary):
    return {k: v for k, v in summary.items() if k not in ("elapsed_s", "runtime")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("toy") / "full"
    return workdir, toy_study.run(toy_study.get_config(), workdir)


def test_toy_study_probe_feeds_the_sweep_and_records_divergence(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["finished"] and summary["best_lr"] == 0.1
    # lr 5 diverges on both probe seeds: recorded with the step, the probe went on.
    diverged = summary["probe"]["diverged"]
    assert diverged[:4] == [-1, -1, -1, -1] and all(d > 0 for d in diverged[4:])
    train = _npz(workdir, "train")
    assert train["loss"].shape == (3, 30) and np.all(np.isfinite(train["loss"]))
    assert train["chunk__w_norm"].shape == (3, 5)  # one value per chunk of 7 steps (30 = 4·7 + 2)
    assert train["loss"][:, -1].max() < 1e-3 < train["loss"][:, 0].min()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 6 + 5 * 3  # one row per lane per chunk
    assert {r["run"] for r in rows} == {"probe", "train"} and rows[-1]["step"] == 30
    assert summary["runtime"]["devices"] == len(jax.devices())


def test_sigkill_resume_is_bit_identical(uninterrupted, tmp_path):
    full_dir, full = uninterrupted
    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tests.experiments.toy_study", str(workdir)]
    env = {**os.environ, "TOY_SLEEP": "0.4"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 120
    seen = []
    for line in proc.stdout:  # kill inside the second (train) run, after two of its chunks
        seen.append(line.decode())
        if "[train] step 14/30" in seen[-1] or time.time() > deadline:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert not (workdir / "summary.json").exists()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming from" in out.stdout and "1 runs done, train at step" in out.stdout
    resumed = json.loads((workdir / "summary.json").read_text())
    assert _strip(resumed) == _strip(full)
    for run_id in ("probe", "train"):
        got, want = _npz(workdir, run_id), _npz(full_dir, run_id)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    strip_rows = lambda path: path.read_text().splitlines()  # noqa: E731
    assert strip_rows(workdir / "metrics.jsonl") == strip_rows(full_dir / "metrics.jsonl")


def test_finished_study_reprints_without_training(uninterrupted, capsys, monkeypatch):
    workdir, summary = uninterrupted
    monkeypatch.setattr(runner_lib.Runner, "run", lambda *a: pytest.fail("trained again"))
    assert toy_study.run(toy_study.get_config(), workdir) == summary
    assert "| 0.1 |" in capsys.readouterr().out


def test_lost_checkpoint_resumes_after_the_finished_runs(uninterrupted, tmp_path, capsys):
    """runs/done.json carries the finished runs when checkpoint/ is gone (e.g. a fresh clone)."""
    full_dir, full = uninterrupted
    workdir = tmp_path / "lost"
    config = toy_study.get_config()
    runner = runner_lib.Runner(config.to_dict(), workdir)
    runner.start()
    probe_lanes = [{"seed": s, "lr": lr} for lr in config.lrs for s in config.seeds[:2]]
    runner.run(toy_study._run(config, "probe", probe_lanes, "record"))
    assert set(json.loads((workdir / "runs" / "done.json").read_text())["done"]) == {"probe"}
    shutil.rmtree(workdir / "checkpoint")
    trained = []
    original = runner_lib.Runner._program

    def program(self, run, *a):
        trained.append(run.id)
        return original(self, run, *a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_lib.Runner, "_program", program)
        resumed = toy_study.run(config, workdir)
    assert "resuming from runs/done.json (no checkpoint): 1 runs done" in capsys.readouterr().out
    assert set(trained) == {"train"}
    assert _strip(resumed) == _strip(full)
    lines = lambda path: path.read_text().splitlines()  # noqa: E731
    assert lines(workdir / "metrics.jsonl") == lines(full_dir / "metrics.jsonl")
    ledger = json.loads((workdir / "runs" / "done.json").read_text())
    assert set(ledger["done"]) == {"probe", "train"}
    ledger["config"]["steps"] = 31
    (workdir / "runs" / "done.json").write_text(json.dumps(ledger))
    shutil.rmtree(workdir / "checkpoint")
    (workdir / "config.json").unlink()
    with pytest.raises(ValueError, match="runs/done.json was written by another config"):
        runner_lib.Runner(config.to_dict(), workdir).start()


def test_another_config_is_refused(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    with pytest.raises(ValueError, match="another config"):
        toy_study.run(toy_study.get_config(steps=31), workdir)
    partial = tmp_path / "partial"
    config = toy_study.get_config()
    runner = runner_lib.Runner(config.to_dict(), partial)
    runner.start()
    runner.run(toy_study._run(config, "probe", [{"seed": 0, "lr": 0.1}], "record"))
    with pytest.raises(ValueError, match="another config"):
        runner_lib.Runner(toy_study.get_config(chunk=5).to_dict(), partial).start()


def test_stop_policy_names_run_lane_quantity_and_step(tmp_path):
    config = toy_study.get_config()
    runner = runner_lib.Runner(config.to_dict(), tmp_path)
    runner.start()
    bad = toy_study._run(config, "hot", [{"seed": 0, "lr": 0.1}, {"seed": 1, "lr": 5.0}], "stop")
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss .* in hot, step 2\d \(seed 1, lr 5"
    ):
        runner.run(bad)


def test_lax_map_groups_give_the_vmap_numbers(tmp_path):
    config = toy_study.get_config()
    lanes = [{"seed": s, "lr": 0.1} for s in range(3)]
    out = {}
    for group in (0, 2):
        runner = runner_lib.Runner(config.to_dict(), tmp_path / f"g{group}")
        runner.start()
        run = toy_study._run(config, "train", lanes, "stop")
        run.group = group
        runner.run(run)
        out[group] = runner.records("train")
    np.testing.assert_allclose(out[2]["loss"], out[0]["loss"], rtol=1e-4, atol=1e-6)  # float32


def test_eight_devices_give_the_one_device_numbers(uninterrupted, tmp_path):
    """6 and 3 lanes over an 8-device CPU mesh (padded to 8): the 1-device numbers."""
    full_dir, full = uninterrupted
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    workdir = tmp_path / "mesh8"
    cmd = [sys.executable, "-m", "tests.experiments.toy_study", str(workdir)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["runtime"]["devices"] == 8 and summary["runtime"]["mesh"] == {"lanes": 8}
    assert summary["best_lr"] == full["best_lr"]
    for run_id in ("probe", "train"):
        got, want = _npz(workdir, run_id), _npz(full_dir, run_id)
        np.testing.assert_array_equal(got["diverged"], want["diverged"])
        finite = np.isfinite(want["loss"])
        # float32 rounding only: one lane per device runs other kernel shapes than 8 vmapped
        np.testing.assert_allclose(got["loss"][finite], want["loss"][finite], rtol=1e-4, atol=1e-7)


def test_bad_runs_fail_clearly():
    kwargs = dict(id="x", label="x", lanes=[{}], init=lambda: 0, step=None, batches=None)
    with pytest.raises(ValueError, match="on_nonfinite"):
        runner_lib.Run(**kwargs, steps=1, chunk=1, finish=None, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        runner_lib.Run(**kwargs, steps=1, chunk=0, finish=None)


def test_seed_keys_recipes():
    typed = runner_lib.seed_keys([3, 4], 2)
    assert typed.shape == (2, 2)
    np.testing.assert_array_equal(
        jax.random.key_data(typed[1]), jax.random.key_data(jax.random.split(jax.random.key(4), 2))
    )
    raw = runner_lib.seed_keys([3], 2, root=0)
    want = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 3), 1)
    np.testing.assert_array_equal(raw[0, 1], want)
    assert jnp.issubdtype(raw.dtype, jnp.uint32)
