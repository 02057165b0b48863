"""The feedback-alignment audit study: every preset's smoke variant end to end (tables written,
verdicts and measurements finite where they must be), resume after an interruption, bad presets
and configs refused."""

import json

import numpy as np
import pytest

from experiments import fa_audit
from experiments.configs import fa_audit as presets


def test_smoke_preset_writes_every_table(tmp_path):
    config = presets.get_config("smoke")
    summary = fa_audit.run(config, tmp_path)
    assert summary["finished"]
    table = (tmp_path / "table.md").read_text()
    for name in config.tables:
        assert f"## {fa_audit.report.BUILDERS[name][0]}" in table
    assert "stand-in" in table or "synthetic" in table or "fashion" in table.lower()
    for spec in config.runs:
        out = summary["runs"][spec["id"]]
        acc = np.asarray(out["test_accuracy"])
        assert acc.shape == (len(config.seeds),) and np.all((acc >= 0) & (acc <= 1))
        growth = np.asarray(out["epochs"]["growth"], np.float64)
        assert growth.shape[:2] == (len(config.seeds), config.epochs)
        assert np.all(np.isfinite(growth)) and np.all(growth > 0)
        assert np.all(np.isfinite(np.asarray(out["epochs"]["g_norm"], np.float64)))
        if spec["method"] == "dfa" and not spec["frozen"]:
            null = np.asarray(out["null_deep_cos"], np.float64)
            assert null.shape[:2] == (len(config.seeds), config.null_draws)
    for png in ("growth.png", "grad_floor.png", "accuracy.png"):
        assert (tmp_path / png).stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["run"] for r in rows} == {spec["id"] for spec in config.runs}
    bp = summary["runs"]["mlp/bp"]["epochs"]  # BP's own credit is its gradient, at any epoch:
    np.testing.assert_allclose(np.asarray(bp["deep_cos"], np.float64), 1.0, rtol=1e-5)
    assert np.all(np.asarray(bp["deep_rho"], np.float64) > 0.9)  # ρ near the Taylor ceiling
    np.testing.assert_allclose(np.asarray(bp["gamma_flat"], np.float64), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "preset", [*presets.PRESETS, "paper"] + [f"{p}_smoke" for p in presets.PRESETS]
)
def test_every_preset_builds_a_valid_config(preset):
    config = presets.get_config(preset)
    fa_audit.check(config)
    ids = [spec["id"] for spec in config.runs]
    assert len(ids) == len(set(ids))
    archs = {spec["arch"] for spec in config.runs}
    assert all(any(s["frozen"] and s["arch"] == a for s in config.runs) for a in archs)


def test_bad_presets_and_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get_config("table9")
    config = presets.get_config("audit_smoke")
    config.unlock()
    config.runs = [{**config.runs[0], "method": "hebb", "id": "mlp/hebb"}]
    with pytest.raises(ValueError, match="unknown method 'hebb'"):
        fa_audit.run(config, tmp_path)
