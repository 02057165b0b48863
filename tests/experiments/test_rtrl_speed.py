"""Smoke run of the rtrl benchmark (`make bench`) at a toy size: every row is timed, every program
is traced once, and the implementations it times agree (the timings themselves are not asserted)."""

from experiments.benchmarks import rtrl_speed


def test_rtrl_speed_smoke():
    cfg = {
        "sizes": [8],
        "lstm_sizes": [8],
        "steps": 5,
        "repeats": 1,
        "seeds": 2,
        "k": 2,
        "decay": 0.9,
        "numpy_steps": 3,
        "numpy_seconds": 5.0,
    }
    text, numbers = rtrl_speed.run(cfg)
    measured = numbers["sizes"]["8"]
    rows = measured["rows"]
    for label in (*rtrl_speed.FLOOR_OF, rtrl_speed.UORO, rtrl_speed.BPTT, rtrl_speed.NUMPY):
        assert rows[label]["us_per_step"] > 0, label
    assert rows[rtrl_speed.NUMPY]["steps_run"] == 3
    assert set(measured["compilations"].values()) == {1}  # one trace per jitted program
    assert len(measured["compilations"]) == 2 * (len(rtrl_speed.FLOOR_OF) + 2)  # single + vmap each
    checks = measured["checks"]
    assert len(checks) == 6 and max(checks.values()) <= rtrl_speed.CHECK_RTOL, checks
    assert rows[rtrl_speed.SPARSE]["floor"] == rtrl_speed.TOUCH_FLOOR
    assert len(numbers["verdicts"]) == 7
    assert "| 8 | sparse_rtrl XLA program |" in text
    lstm = numbers["lstm_sizes"]["8"]
    assert set(lstm["compilations"].values()) == {1}
    assert len(lstm["compilations"]) == 12  # 5 algorithms + bptt, single and vmapped
    assert max(lstm["checks"].values()) <= rtrl_speed.CHECK_RTOL, lstm["checks"]
    assert "LSTM (n_in = n_out = 1" in text
