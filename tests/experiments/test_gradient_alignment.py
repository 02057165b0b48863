"""Smoke run of the gradient-alignment diagnostic into a temporary workdir."""

import json

import numpy as np
import pytest

from experiments import gradient_alignment
from experiments.configs import gradient_alignment as alignment_config


def test_smoke_run_writes_outputs_and_exact_trace_cosines(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ENWIK8", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/enwik8 here: the labelled GCIDE stand-in is used
    config = alignment_config.get_config("smoke")
    with pytest.warns(UserWarning, match="stand-in"):
        summary = gradient_alignment.run(config, tmp_path)
    for name in ("config.json", "metrics.jsonl", "summary.json", "table.md", "alignment.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == config.num_seeds * sum(config.depths)
    per_depth = summary["per_depth"]
    for depth in config.depths:
        vs_autodiff = np.asarray(per_depth[str(depth)]["vs_autodiff"])
        vs_bptt = np.asarray(per_depth[str(depth)]["vs_bptt"])
        assert vs_autodiff.shape == vs_bptt.shape == (config.num_seeds, depth)
        assert np.all(vs_autodiff > 0.9999)  # float32 exactness of the traces
        # The last layer's local loss is the task loss: identical gradient to BPTT.
        np.testing.assert_allclose(vs_bptt[:, -1], 1.0, atol=1e-4)
    # Below the top, the local gradient is a different object from the end-to-end one.
    assert np.all(np.asarray(per_depth["3"]["vs_bptt"])[:, 0] < 0.99)
    table = (tmp_path / "table.md").read_text()
    assert "STAND-IN" in table and "| 3 |" in table
    # A finished run with the same config prints its table without recomputing.
    capsys.readouterr()
    gradient_alignment.run(config, tmp_path)
    assert "| 3 |" in capsys.readouterr().out


def test_unknown_model_key_is_rejected(tmp_path):
    config = alignment_config.get_config("smoke")
    config.model.d_modle = 4
    with pytest.raises(ValueError, match="unknown lru_local.Config key"):
        gradient_alignment.run(config, tmp_path)
