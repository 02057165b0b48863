"""The immediate-derivative study: every preset's smoke variant end to end, the references
(R = 1 for full RTRL, 0 for the frozen model by construction), the switch and the probes."""

import json
import math
import types

import numpy as np
import pytest

from experiments import online_study, rtrl_immediate
from experiments.configs import rtrl_immediate as presets


def _grouped(table):
    return pytest.param(table, marks=pytest.mark.xdist_group(f"rtrl_immediate-{table}_smoke"))


@pytest.mark.parametrize("table", [_grouped(t) for t in sorted(presets.TABLES)])
def test_smoke_preset_writes_finite_results(table, smoke_run):
    if table == "streaming":
        pytest.importorskip("river", reason="the optional extra credit[streaming]")
    config = presets.get_config(f"{table}_smoke")
    summary, tmp_path = smoke_run(rtrl_immediate, presets, f"{table}_smoke")
    assert summary["finished"]
    table_md = (tmp_path / "table.md").read_text()
    for setting in config.settings:
        assert f"## {setting['name']}" in table_md
        methods = summary["settings"][setting["name"]]["methods"]
        assert set(methods) == {m["label"] for m in setting["methods"]}
        for label, run in methods.items():
            assert np.all(np.isfinite(run["post"])), (setting["name"], label)
            if setting.get("group_norms"):
                assert len(run["output_recurrent_ratio"]) == len(setting["seeds"])
        if setting.get("river_baselines"):  # ARF and logistic regression on the same streams
            river = summary["settings"][setting["name"]]["river"]
            assert set(river) == {"arf", "logistic"}
            assert all(0.0 < a <= 1.0 for accs in river.values() for a in accs)
            limits = setting.get("river_seeds") or {}
            for model, accs in river.items():
                assert len(accs) == limits.get(model, len(setting["seeds"]))
            assert "River arf (seeds 0 only)" in table_md
        if setting["full"]:
            np.testing.assert_allclose(methods[setting["full"]]["R"], 1.0, atol=1e-12)
            np.testing.assert_allclose(methods[setting["floor"]]["R"], 0.0, atol=1e-12)
    if any(s["metric"] == "shift" for s in config.settings):
        assert list(tmp_path.glob("mse_*.png"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(v) for r in rows for v in r["loss"])


@pytest.mark.xdist_group("rtrl_immediate-table1_smoke")
def test_the_frozen_model_stops_learning_at_the_shift(smoke_run):
    """Frozen and full RTRL share every step before the shift (same program, same optimizer
    state), and the frozen model's post-shift gradient norms are those of fixed parameters."""
    config = presets.get_config("table1_smoke")
    summary, tmp_path = smoke_run(rtrl_immediate, presets, "table1_smoke")
    methods = summary["settings"][config.settings[0]["name"]]["methods"]
    np.testing.assert_allclose(
        methods["frozen at the shift"]["pre"], methods["full RTRL"]["pre"], rtol=1e-6
    )
    assert methods["frozen at the shift"]["post"] != methods["full RTRL"]["post"]


@pytest.mark.xdist_group("rtrl_immediate-traces_smoke")
def test_traces_probe_and_jacobian_statistics(smoke_run):
    config = presets.get_config("traces_smoke")
    summary, tmp_path = smoke_run(rtrl_immediate, presets, "traces_smoke")
    run = summary["settings"][config.settings[0]["name"]]["methods"][
        config.settings[0]["methods"][0]["label"]
    ]
    assert all(r > 0.0 for r in run["probe_shadow_ratio"])
    assert all(-1.0 <= c <= 1.0 for c in run["probe_cosine"])
    assert all(0.0 < f < 1.0 for f in run["self_factor_pre"])  # tanh' |W_ii| on a small net
    assert all(r > 0.0 for r in run["spectral_radius_pre"])
    text = (tmp_path / "table.md").read_text()
    assert "traces(decay=0.95)" in text and "mean |J_ii|" in text


def test_bad_presets_fail_clearly():
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get_config("table9")
    config = presets.get_config("table1_smoke")
    config.unlock()
    config.settings[0]["methods"][0]["optimizer"] = "adagrad"
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        rtrl_immediate.check_config(config)


def test_adapter_training_updates_only_the_adapters():
    """ "train": "adapters" gives every base parameter a zero update (the frozen pretrained
    network) and the adapters the optimizer's; the LoRA cell equals its base at init (B = 0)."""
    import jax
    import jax.numpy as jnp

    import rtrl
    from experiments import online_study

    config = presets.get_config("lora_smoke")
    setting = config.settings[0]
    spec = online_study.task_spec(setting)
    method = setting["methods"][0]
    assert method["train"] == "adapters"
    cell = rtrl.cells.get(setting["cell"], spec.n_in, setting["n_hidden"], spec.n_out)
    params = cell.init(jax.random.key(0))
    tx = online_study.build_optimizer(config, method, spec, 1e-2)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for name, update in updates.items():
        moved = float(jnp.max(jnp.abs(update)))
        assert (moved > 0) == rtrl.cells.is_adapter(name), name
    base = rtrl.cells.get("lstm", spec.n_in, setting["n_hidden"], spec.n_out)
    x = jnp.ones((spec.n_in,))
    base_params = {k: v for k, v in params.items() if not rtrl.cells.is_adapter(k)}
    _, y_lora = cell.step(params, cell.initial_carry(), x)
    _, y_base = base.step(base_params, base.initial_carry(), x)
    np.testing.assert_allclose(y_lora, y_base, rtol=1e-6)


@pytest.mark.xdist_group("rtrl_immediate-lora_smoke")
def test_pretraining_is_saved_without_pickle_and_used(smoke_run):
    config = presets.get_config("lora_smoke")
    summary, tmp_path = smoke_run(rtrl_immediate, presets, "lora_smoke")
    saved = np.load(tmp_path / "pretrained" / "s0.npz", allow_pickle=False)
    assert saved["W_rec"].shape[0] == len(config.settings[0]["seeds"])
    np.testing.assert_array_equal(saved["W_rec_B"], 0.0)  # adapters untouched by pretraining
    methods = summary["settings"][config.settings[0]["name"]]["methods"]
    assert methods["frozen"]["post"] != methods["full fine-tuning + Adam"]["post"]


def test_river_baselines_resume_per_seed_and_respect_the_seed_limit(tmp_path, monkeypatch):
    """A run killed after one ARF stream keeps it: the next call computes only what is missing."""
    calls = []

    def fake(task, seeds, models, **options):
        calls.append((models[0], seeds[0]))
        return {models[0]: [0.5 + 0.01 * seeds[0]]}

    monkeypatch.setattr(online_study.streams_lib, "river_baselines", fake)
    runner_ = types.SimpleNamespace(workdir=tmp_path, writer=True)
    setting = {
        "name": "hyperplane",
        "task": "hyperplane",
        "task_options": {},
        "seeds": [3, 4, 5],
        "river_baselines": ["arf", "logistic"],
        "river_seeds": {"arf": 2},
    }
    path = tmp_path / "river_hyperplane.json"
    path.write_text(json.dumps({"arf": [0.53]}))  # seed 3's ARF done before the interruption
    out = online_study.river_baselines({}, setting, runner_)
    assert calls == [("arf", 4), ("logistic", 3), ("logistic", 4), ("logistic", 5)]
    assert out == {"arf": [0.53, 0.54], "logistic": [0.53, 0.54, 0.55]}
    assert json.loads(path.read_text()) == out
    calls.clear()
    assert online_study.river_baselines({}, setting, runner_) == out and not calls
