"""Smoke run of the rtrl benchmark (`make bench`) at a toy size: every row is timed, every program
is traced once, and the implementations it times agree (the timings themselves are not asserted)."""

from experiments.benchmarks import rtrl_speed


def test_rtrl_speed_smoke():
    cfg = {
        "sizes": [8],
        "lstm_sizes": [8],
        "diagonal_sizes": [8, 16],
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
    timed = (*rtrl_speed.FLOOR_OF, rtrl_speed.TRACES, rtrl_speed.UORO, rtrl_speed.BPTT)
    for label in (*timed, rtrl_speed.NUMPY):
        assert rows[label]["us_per_step"] > 0, label
    assert rows[rtrl_speed.NUMPY]["steps_run"] == 3
    assert set(measured["compilations"].values()) == {1}  # one trace per jitted program
    assert len(measured["compilations"]) == 2 * len(timed)  # single + vmap each
    checks = measured["checks"]
    assert len(checks) == 5 and max(checks.values()) <= rtrl_speed.CHECK_RTOL, checks
    assert rows[rtrl_speed.SPARSE]["floor"] == rtrl_speed.TOUCH_FLOOR
    assert len(numbers["verdicts"]) == 9
    assert "| 8 | sparse_rtrl XLA program |" in text
    lstm = numbers["lstm_sizes"]["8"]
    assert set(lstm["compilations"].values()) == {1}
    assert len(lstm["compilations"]) == 10  # 4 algorithms + bptt, single and vmapped
    assert max(lstm["checks"].values()) <= rtrl_speed.CHECK_RTOL, lstm["checks"]
    assert "LSTM (n_in = n_out = 1" in text


def test_diagonal_table_smoke():
    """The diagonal-M table at toy sizes: traces and sparse_rtrl k=0 timed, their state the
    n·(n + n_in + 1) values of M's diagonal plus the carry, full RTRL sized from its formula."""
    cfg = {"diagonal_sizes": [8, 16], "steps": 5, "repeats": 1, "decay": 0.9}
    diagonal = {n: rtrl_speed.measure_diagonal(n, cfg) for n in cfg["diagonal_sizes"]}
    for n, measured in diagonal.items():
        rows = measured["rows"]
        assert set(measured["compilations"].values()) == {1}
        for label in (rtrl_speed.TRACES, rtrl_speed.SPARSE_K0):
            assert rows[label]["us_per_step"] > 0
            assert rows[label]["m_bytes"] == 4 * n * (n + 2)
            assert rows[label]["state_bytes"] == 4 * (n * (n + 2) + n)
            assert 0 < rows[label]["footprint_bytes"] < rows[rtrl_speed.RTRL]["m_bytes"]
        assert rows[rtrl_speed.RTRL]["m_bytes"] == rtrl_speed.m_bytes(n) == 4 * n * n * (n + 2)
        assert rows[rtrl_speed.RTRL]["footprint_bytes"] > 2 * rtrl_speed.m_bytes(n)  # M in, out
    lines = rtrl_speed.diagonal_verdicts(diagonal)
    assert len(lines) == 2 and lines[0].startswith("traces state at n=16") and ": met (" in lines[0]
    table = rtrl_speed.diagonal_table(diagonal)
    assert "| 16 | sparse_rtrl k=0 |" in table and "rtrl (full M; compiled, not run)" in table
