"""The sparse-RTRL study entry point: every preset's smoke variant end to end, resume, bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import rtrl_sparse, runner
from experiments.configs import rtrl_sparse as presets


def _grouped(table):
    return pytest.param(table, marks=pytest.mark.xdist_group(f"rtrl_sparse-{table}_smoke"))


@pytest.mark.parametrize("table", [_grouped(t) for t in sorted(presets.TABLES)])
def test_smoke_preset_writes_finite_results(table, smoke_run):
    config = presets.get_config(f"{table}_smoke")
    summary, tmp_path = smoke_run(rtrl_sparse, presets, f"{table}_smoke")
    for name in ("config.json", "metrics.jsonl", "summary.json", "table.md"):
        assert (tmp_path / name).exists(), name
    assert summary["finished"]
    table_md = (tmp_path / "table.md").read_text()
    for setting in config.settings:
        assert f"## {setting['name']}" in table_md
        methods = summary["settings"][setting["name"]]["methods"]
        assert set(methods) == {m["label"] for m in setting["methods"]}
        for label, run in methods.items():
            post = np.asarray(run["post"], float)
            assert post.shape == (len(setting.get("seeds") or config.seeds),)
            assert np.all(np.isfinite(post)), (setting["name"], label)
        shift_metric = setting["metric"] in ("shift", "first_shift")
        if shift_metric and setting.get("full") and setting.get("floor"):
            # R is 0 for the floor and 1 for full RTRL by construction, per seed.
            np.testing.assert_allclose(methods[setting["full"]]["R"], 1.0, atol=1e-12)
            np.testing.assert_allclose(methods[setting["floor"]]["R"], 0.0, atol=1e-12)
        if setting["metric"] in ("shift", "first_shift") or setting["task"] == "copy":
            assert list(tmp_path.glob("mse_*.png"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(v) for r in rows for v in r["loss"])


@pytest.mark.xdist_group("rtrl_sparse-fisher_smoke")
def test_fisher_preset_shares_the_dense_phase(smoke_run):
    """Every method of the Fisher comparison is full RTRL until the shift: the same pre-shift
    losses and an exact gradient there (cosine 1 to the shadow), then different selections."""
    config = presets.get_config("fisher_smoke")
    summary, tmp_path = smoke_run(rtrl_sparse, presets, "fisher_smoke")
    methods = summary["settings"][config.settings[0]["name"]]["methods"]
    pre = [np.asarray(run["pre"]) for run in methods.values()]
    for other in pre[1:]:
        np.testing.assert_allclose(other, pre[0], rtol=1e-6)
    for label in ("random", "fisher", "anti_fisher"):
        np.testing.assert_allclose(methods[label]["cos_pre"], 1.0, atol=1e-5)
        assert all(spread > 1.0 for spread in methods[label]["fisher_spread"])
    posts = {label: tuple(methods[label]["post"]) for label in ("random", "fisher", "anti_fisher")}
    assert len(set(posts.values())) == 3, posts
    assert "max_j F_j / min_j F_j" in (tmp_path / "table.md").read_text()


@pytest.mark.xdist_group("rtrl_sparse-table3_smoke")
def test_k_at_least_n_keeps_every_path_but_self_in_the_study(smoke_run):
    """In the smoke table3 (n = 8), k = 8, 16, 32 all keep the paper's ring's 7 paths (every
    neighbour, never the self path): one algorithm, identical numbers, close to full RTRL."""
    summary, tmp_path = smoke_run(rtrl_sparse, presets, "table3_smoke")
    methods = next(iter(summary["settings"].values()))["methods"]
    for label in ("k=16", "k=32"):
        np.testing.assert_array_equal(methods[label]["post"], methods["k=8"]["post"])
    assert np.all(np.asarray(methods["k=8"]["cos_post"]) > 0.9)
    # BPTT with window 1 is the immediate derivative, i.e. k = 0.
    np.testing.assert_allclose(methods["BPTT w=1 (ref)"]["post"], methods["k=0"]["post"], rtol=1e-5)
    # A rerun of a finished run prints its table and returns the same summary without computing.
    assert rtrl_sparse.run(presets.get_config("table3_smoke"), tmp_path) == summary


@pytest.mark.xdist_group("rtrl_sparse-table5_smoke")
def test_resume_after_interruption_is_exact(tmp_path, monkeypatch, smoke_run):
    """Interrupted and resumed, the table5 smoke gives the uninterrupted run's numbers."""
    full, _ = smoke_run(rtrl_sparse, presets, "table5_smoke")
    config = presets.get_config("table5_smoke")
    with config.unlocked():  # a tuple in the config reads back from config.json as a list
        first = {**config.settings[0], "seeds": tuple(config.settings[0]["seeds"])}
        config.settings = [first, *config.settings[1:]]

    calls = {"n": 0}
    real_save = runner.checkpoint.save

    def crash_after_some_chunks(*args, **kwargs):
        path = real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 11:  # inside the third method's stream
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(runner.checkpoint, "save", crash_after_some_chunks)
    with pytest.raises(KeyboardInterrupt):
        rtrl_sparse.run(config, tmp_path / "resumed")
    monkeypatch.setattr(runner.checkpoint, "save", real_save)
    resumed = rtrl_sparse.run(config, tmp_path / "resumed")
    assert rtrl_sparse.run(config, tmp_path / "resumed") == resumed  # finished: re-read, not rerun
    for name, setting in full["settings"].items():
        for label, run in setting["methods"].items():
            got = resumed["settings"][name]["methods"][label]
            np.testing.assert_array_equal(got["post"], run["post"])
            np.testing.assert_array_equal(got["pre"], run["pre"])


@pytest.mark.xdist_group("rtrl_sparse-table3_smoke")
def test_bad_presets_and_overrides_fail_clearly(tmp_path, smoke_run):
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get_config("table99")
    config = presets.get_config("table3_smoke")
    config.unlock()
    config.optimizer = "lbfgs"
    with pytest.raises(ValueError, match="unknown optimizer"):
        rtrl_sparse.run(config, tmp_path / "a")
    config = presets.get_config("table3_smoke")
    config.settings[0]["methods"][2]["options"]["k"] = 99
    with pytest.raises(ValueError, match="k must satisfy"):
        rtrl_sparse.run(config, tmp_path / "b")
    config = presets.get_config("table3_smoke")
    config.settings[0]["methods"][0]["algo"] = "rtrll"
    with pytest.raises(ValueError, match="unknown algorithm"):
        rtrl_sparse.run(config, tmp_path / "c")

    _, finished = smoke_run(rtrl_sparse, presets, "table3_smoke")
    with pytest.raises(ValueError, match="another config"):
        rtrl_sparse.run(presets.get_config("table5_smoke"), finished)


@pytest.mark.xdist_group("rtrl_sparse-table3_smoke")
def test_eight_devices_give_the_one_device_numbers(tmp_path, smoke_run):
    """table3_smoke with its 2 seed lanes sharded over an 8-device CPU mesh (padded to 8)."""
    reference, _ = smoke_run(rtrl_sparse, presets, "table3_smoke")
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "JAX_ENABLE_X64": "1",
        "PYTHONPATH": str(repo),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    config_file = repo / "experiments" / "configs" / "rtrl_sparse.py"
    cmd = [sys.executable, "-m", "experiments.rtrl_sparse", f"--config={config_file}:table3_smoke"]
    proc = subprocess.run(
        [*cmd, f"--workdir={tmp_path / 'mesh8'}"], cwd=tmp_path, env=env, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = json.loads((tmp_path / "mesh8" / "summary.json").read_text())
    assert summary["runtime"]["devices"] == 8
    for name, setting in reference["settings"].items():
        for label, run in setting["methods"].items():
            got = summary["settings"][name]["methods"][label]
            for field in ("pre", "post", "cos_post", "cond"):
                if field in run:
                    np.testing.assert_allclose(got[field], run[field], rtol=1e-4, err_msg=label)
