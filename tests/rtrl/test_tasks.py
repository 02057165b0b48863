"""The synthetic streams: recurrences, RK4 against a numpy oracle, episode structure, registry."""

import math

import jax
import numpy as np
import pytest

from rtrl import tasks


def _sine_recurrence_residual(x: np.ndarray, freq: float, ts: range) -> float:
    """max_t |x_{t+1} − 2cos(ω) x_t + x_{t−1}| over ts (0 for any sinusoid of angular frequency
    ω = freq radians per step)."""
    t = np.asarray(ts)
    return float(np.max(np.abs(x[t + 1] - 2.0 * math.cos(freq) * x[t] + x[t - 1])))


def _series(stream: tasks.Stream) -> np.ndarray:
    """x_0 .. x_T of a next-step stream, [T + 1, n]."""
    return np.concatenate([np.asarray(stream.xs), np.asarray(stream.ys[-1:])])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sine_next_step_and_recurrence(seed):
    spec = tasks.get("sine")
    s = spec.make(jax.random.key(seed))
    assert (spec.n_in, spec.n_out, spec.loss, spec.length, spec.shifts) == (
        1,
        1,
        "mse",
        2000,
        (1000,),
    )
    assert s.xs.shape == s.ys.shape == (2000, 1)
    np.testing.assert_array_equal(s.ys[:-1], s.xs[1:])
    np.testing.assert_array_equal(s.weights, np.ones(2000))
    x = _series(s)[:, 0]
    # f_s = 0.1 for s < 1000: the recurrence at t needs f_{t−1} = f_t, i.e. t ∈ [1, 999].
    assert _sine_recurrence_residual(x, 0.1, range(1, 1000)) < 1e-9
    assert _sine_recurrence_residual(x, 0.3, range(1001, 2000)) < 1e-9
    # The frequencies really differ: the wrong recurrence fails on each side.
    assert _sine_recurrence_residual(x, 0.3, range(1, 1000)) > 0.05
    assert _sine_recurrence_residual(x, 0.1, range(1001, 2000)) > 0.05
    # Continuous phase: x_t = sin(φ + 0.1·min(t, 1000) + 0.3·max(t − 1000, 0)) (radians).
    phi = math.asin(x[0])
    phi = phi if math.isclose(math.sin(phi + 0.1), x[1]) else math.pi - phi
    t = np.arange(2001)
    radians = 0.1 * np.minimum(t, 1000) + 0.3 * np.maximum(t - 1000, 0)
    np.testing.assert_allclose(x, np.sin(phi + radians), atol=1e-9)


def test_sine_in_cycles_per_step():
    x = _series(tasks.get("sine", unit="cycles").make(jax.random.key(0)))[:, 0]
    assert _sine_recurrence_residual(x, 2 * math.pi * 0.1, range(1, 1000)) < 1e-9
    assert _sine_recurrence_residual(x, 2 * math.pi * 0.3, range(1001, 2000)) < 1e-9
    with pytest.raises(ValueError, match="unit"):
        tasks.get("sine", unit="hertz").make(jax.random.key(0))


def test_sine_keys_differ_and_jit_vmap():
    spec = tasks.get("sine")
    keys = jax.random.split(jax.random.key(0), 3)
    batch = jax.jit(jax.vmap(spec.make))(keys)
    assert batch.xs.shape == batch.ys.shape == (3, 2000, 1)
    assert batch.weights.shape == (3, 2000)
    first = np.asarray(batch.xs[:, 0, 0])
    assert len(np.unique(np.round(first, 6))) == 3
    np.testing.assert_allclose(batch.xs[1], spec.make(keys[1]).xs, rtol=1e-12, atol=1e-12)


def _numpy_rk4(s, rho, sigma=10.0, beta=8.0 / 3.0, dt=0.01):
    def f(v):
        x, y, z = v
        return np.array([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    k1 = f(s)
    k2 = f(s + dt / 2 * k1)
    k3 = f(s + dt / 2 * k2)
    k4 = f(s + dt * k3)
    return s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def test_lorenz_rk4_steps_and_shift():
    spec = tasks.get("lorenz")
    assert (spec.n_in, spec.n_out, spec.loss, spec.length, spec.shifts) == (
        3,
        3,
        "mse",
        2000,
        (1000,),
    )
    s = spec.make(jax.random.key(0))
    assert s.xs.shape == s.ys.shape == (2000, 3)
    assert np.all(np.isfinite(s.xs)) and np.all(np.isfinite(s.ys))
    np.testing.assert_array_equal(s.ys[:-1], s.xs[1:])
    np.testing.assert_array_equal(s.weights, np.ones(2000))
    # Undo obs = (x/20, y/20, (z − 25)/20) and step the raw state with the numpy oracle.
    raw = np.asarray(s.xs) * 20.0 + np.array([0.0, 0.0, 25.0])
    raw_next = np.asarray(s.ys) * 20.0 + np.array([0.0, 0.0, 25.0])
    for t, rho in [(0, 28.0), (500, 28.0), (999, 28.0), (1000, 20.0), (1999, 20.0)]:
        np.testing.assert_allclose(raw_next[t], _numpy_rk4(raw[t], rho), rtol=1e-12, atol=1e-10)
    # ρ = 28 → 20: z settles toward the fixed point z = ρ − 1 = 19 below the chaotic mean ≈ 23.5.
    z = np.asarray(s.xs[:, 2])
    assert z[1000:].mean() < z[:1000].mean() - 0.1  # obs units: 0.1 ≙ 2 in z


def test_lorenz_jit_vmap_and_keys():
    keys = jax.random.split(jax.random.key(1), 3)
    batch = jax.jit(jax.vmap(tasks.get("lorenz", length=200, shift_at=100).make))(keys)
    assert batch.xs.shape == (3, 200, 3)
    assert not np.allclose(batch.xs[0], batch.xs[1])


def test_multi_sine_recurrence_per_regime():
    spec = tasks.get("multi_sine")
    assert spec.length == 4000 and spec.shifts == (1000, 2000, 3000)
    assert tasks.shift_segments(spec) == [(0, 1000), (1000, 2000), (2000, 3000), (3000, 4000)]
    s = spec.make(jax.random.key(3))
    assert s.xs.shape == (4000, 1)
    np.testing.assert_array_equal(s.ys[:-1], s.xs[1:])
    x = _series(s)[:, 0]
    freqs = (0.1, 0.3, 0.05, 0.2)
    for k, (lo, hi) in enumerate(tasks.shift_segments(spec)):
        assert _sine_recurrence_residual(x, freqs[k], range(lo + 1, hi)) < 1e-9
        wrong = freqs[(k + 1) % 4]
        assert _sine_recurrence_residual(x, wrong, range(lo + 1, hi)) > 1e-3


def test_copy_delay_separates_the_phases_with_blank_unscored_steps():
    spec = tasks.get("copy", n_episodes=3, seq_len=2, n_symbols=4, delay=3)
    assert spec.length == 3 * (2 * 2 + 3)
    s = spec.make(jax.random.key(0))
    xs = np.asarray(s.xs).reshape(3, 7, 5)
    ys = np.asarray(s.ys).reshape(3, 7, 4)
    np.testing.assert_array_equal(np.asarray(s.weights).reshape(3, 7), [[0, 0, 0, 0, 0, 1, 1]] * 3)
    np.testing.assert_array_equal(xs[:, 2:5], 0.0)  # the delay: no symbol, no go
    np.testing.assert_array_equal(xs[:, 5:, 4], 1.0)  # then go
    np.testing.assert_array_equal(ys[:, 5:].argmax(-1), xs[:, :2, :4].argmax(-1))  # recall in order
    with pytest.raises(ValueError, match="delay must be >= 0"):
        tasks.get("copy", delay=-1).make(jax.random.key(0))


def test_copy_episodes():
    spec = tasks.get("copy", n_episodes=50)
    assert (spec.n_in, spec.n_out, spec.loss, spec.length, spec.shifts) == (9, 8, "xent", 500, ())
    s = spec.make(jax.random.key(4))
    xs = np.asarray(s.xs).reshape(50, 10, 9)
    ys = np.asarray(s.ys).reshape(50, 10, 8)
    w = np.asarray(s.weights).reshape(50, 10)
    np.testing.assert_array_equal(w, np.tile([0.0] * 5 + [1.0] * 5, (50, 1)))
    # Input phase: one-hot symbols, go = 0, zero targets. Output phase: zeros + go = 1.
    np.testing.assert_array_equal(xs[:, :5, :8].sum(-1), 1.0)
    np.testing.assert_array_equal(xs[:, :5, 8], 0.0)
    np.testing.assert_array_equal(ys[:, :5], 0.0)
    np.testing.assert_array_equal(xs[:, 5:, :8], 0.0)
    np.testing.assert_array_equal(xs[:, 5:, 8], 1.0)
    # Targets in the output phase are the same episode's input symbols, in order.
    np.testing.assert_array_equal(ys[:, 5:], xs[:, :5, :8])
    # All 8 symbols occur (250 draws; missing one has probability < 8 · (7/8)^250).
    assert set(np.argmax(xs[:, :5, :8], -1).ravel()) == set(range(8))


def test_adding_episodes():
    spec = tasks.get("adding", n_episodes=2000)
    assert (spec.n_in, spec.n_out, spec.loss, spec.length, spec.shifts) == (2, 1, "mse", 100000, ())
    s = spec.make(jax.random.key(5))
    xs = np.asarray(s.xs).reshape(2000, 50, 2)
    ys = np.asarray(s.ys).reshape(2000, 50)
    w = np.asarray(s.weights).reshape(2000, 50)
    values, markers = xs[..., 0], xs[..., 1]
    assert np.all((values >= 0) & (values < 1))
    np.testing.assert_array_equal(markers[:, :25].sum(-1), 1.0)
    np.testing.assert_array_equal(markers[:, 25:].sum(-1), 1.0)
    np.testing.assert_array_equal(w, np.tile([0.0] * 49 + [1.0], (2000, 1)))
    np.testing.assert_array_equal(ys[:, :49], 0.0)
    np.testing.assert_allclose(ys[:, 49], (values * markers).sum(-1), rtol=1e-14)
    # Predict 1.0: E[(U1 + U2 − 1)²] = Var(U1 + U2) = 2/12 = 1/6; std of the mean over 2000
    # episodes is sqrt((1/15 − 1/36)/2000) ≈ 0.0044.
    mse = np.sum(w * (ys - 1.0) ** 2) / np.sum(w)
    assert abs(mse - 1 / 6) < 0.02


def test_registry():
    with pytest.raises(
        ValueError, match="known tasks: sine, lorenz, delayed_sine, multi_sine, copy, adding"
    ):
        tasks.get("sines")
    with pytest.raises(TypeError, match="shift"):
        tasks.get("sine", shift=3)
    spec = tasks.get("sine", length=100, shift_at=50)
    assert spec.length == 100 and spec.shifts == (50,)
    assert spec.make(jax.random.key(0)).xs.shape == (100, 1)
    assert tasks.get("sine", length=100, shift_at=100).shifts == ()
    spec = tasks.get("multi_sine", freqs=[0.1, 0.2], regime_length=30)
    assert spec.length == 60 and spec.shifts == (30,)
    assert spec.make(jax.random.key(0)).xs.shape == (60, 1)
    assert tasks.get("copy", seq_len=3, n_symbols=4, n_episodes=7).make(
        jax.random.key(0)
    ).xs.shape == (42, 5)
    assert set(tasks.names()) == {"sine", "lorenz", "delayed_sine", "multi_sine", "copy", "adding"}


def test_delayed_sine_recalls_the_input_delay_steps_back():
    spec = tasks.get("delayed_sine", length=300, shift_at=150, delay=50)
    stream = spec.make(jax.random.key(0))
    xs, ys, w = (np.asarray(a) for a in (stream.xs, stream.ys, stream.weights))
    assert xs.shape == ys.shape == (300, 1) and spec.shifts == (150,) and spec.loss == "mse"
    np.testing.assert_array_equal(ys[50:], xs[:-50])
    np.testing.assert_array_equal(w, (np.arange(300) >= 50).astype(w.dtype))
    sine = np.asarray(tasks.get("sine", length=300, shift_at=150).make(jax.random.key(0)).xs)
    np.testing.assert_allclose(xs, sine, rtol=0, atol=1e-12)  # the same signal as "sine"
    with pytest.raises(ValueError, match="delay"):
        tasks.get("delayed_sine", delay=0).make(jax.random.key(0))
