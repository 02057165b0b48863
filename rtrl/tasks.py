"""Synthetic online streams for the RTRL studies, each a pure function of one PRNG key.

Every generator returns a `Stream` of T steps that a learner consumes in order, one step at a
time, with no resets (episodic tasks are concatenated episodes). Lengths, frequencies and other
sizes are static Python arguments, so `jax.jit(spec.make)` and `jax.jit(jax.vmap(spec.make))(keys)`
trace once. Arrays use the default float dtype (float64 when `jax_enable_x64` is on).

Registry (`get(name, **overrides)`) and defaults; the source paper leaves most of them implicit,
so these are our choices:

- "sine" (`sine_stream`): x_t = sin(φ + Σ_{s<t} ω_s), φ ~ U[0, 2π) from the key,
  ω_s = 0.1 for s < shift_at = 1000 and 0.3 after, in radians per step (unit="rad"; the paper
  gives "frequency 0.1 → 0.3" without a unit; read as cycles per step, unit="cycles", every
  method including decayed traces tracks both sines to MSE < 3e-3 and there is no gap to
  measure). The phase is accumulated, so it is continuous across the shift. length = 2000;
  xs[t] = x_t, ys[t] = x_{t+1}; "mse".
- "lorenz" (`lorenz_stream`): dx = σ(y − x), dy = x(ρ − z) − y, dz = xy − βz with σ = 10,
  β = 8/3, ρ = 28 before shift_at = 1000 and ρ = 20 from it on; classic RK4, dt = 0.01, one step
  per observation; start (1, 1, 1) + N(0, 1) noise, then 1000 burn-in steps at ρ = 28.
  Observations (x/20, y/20, (z − 25)/20), fixed constants so the shift stays visible.
  length = 2000; xs[t] = obs_t, ys[t] = obs_{t+1}; "mse".
- "delayed_sine" (`delayed_sine_stream`): the "sine" signal with target ys[t] = x_{t−50} (recall
  50 steps back; weight 0 for t < 50); length = 2000, shift_at = 1000; "mse".
- "multi_sine" (`multi_sine_stream`): as "sine" with 4 regimes of 1000 steps at frequencies
  (0.1, 0.3, 0.05, 0.2); length = 4000, shifts = (1000, 2000, 3000); "mse".
- "copy" (`copy_stream`): copy task (Hochreiter & Schmidhuber 1997), 1000 episodes of
  2 · seq_len = 10 steps, seq_len = 5 symbols from n_symbols = 8. Input phase: one-hot symbol on
  channels 0..7, "go" channel 8 = 0, weight 0, target 0. Output phase: symbol channels 0, go = 1,
  target one-hot of the episode's symbols in order, weight 1; `delay` blank steps (all inputs 0,
  weight 0) between the phases (default 0). n_in = 9, n_out = 8, "xent", chance accuracy 1/8;
  length = (2 · seq_len + delay) · n_episodes = 10000.
- "adding" (`adding_stream`): adding problem (Hochreiter & Schmidhuber 1997), 500 episodes of
  T = 50 steps. Channel 0 = value ~ U(0, 1), channel 1 = marker; exactly two markers per episode,
  one uniform in the first half [0, T//2) and one in the second half [T//2, T). Target = sum of the
  two marked values, scored (weight 1) only at the episode's last step, 0 elsewhere. n_in = 2,
  n_out = 1, "mse"; predicting 1.0 has expected MSE Var(U1 + U2) = 1/6 ≈ 0.167. length = 25000.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Stream(NamedTuple):
    """One online stream of T steps."""

    xs: jax.Array  # inputs, [T, n_in]
    ys: jax.Array  # targets, [T, n_out] (classification: one-hot float)
    weights: jax.Array  # per-step loss weight, [T]: 1 where the step is scored, 0 elsewhere


class TaskSpec(NamedTuple):
    """Static description of a task, with its generator's arguments bound."""

    name: str
    n_in: int
    n_out: int
    loss: str  # "mse" or "xent"
    length: int  # T
    shifts: tuple[int, ...]  # steps at which the distribution changes (empty if none)
    make: Callable[[jax.Array], Stream]  # key -> Stream


# ---------------------------------------------------------------------------------------------
# Sine streams

UNITS = {"rad": 2.0 * math.pi, "cycles": 1.0}  # per-step frequency -> cycles per step divisor


def _regime_sine(
    key: jax.Array,
    freqs: tuple[float, ...],
    starts: tuple[int, ...],
    length: int,
    unit: str = "rad",
):
    """x_t = sin(φ + 2π c_t), t = 0..length, with c_t = Σ_{s<t} f_s / u and f_s piecewise constant
    (u = 2π for unit "rad": f is an angular frequency ω in radians per step; u = 1 for "cycles").

    The cycle count c_t does not depend on the key, so it is computed once in float64 numpy and
    reduced mod 1 before entering jnp: the phase stays accurate in float32 for long streams.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown frequency unit {unit!r}; use one of {sorted(UNITS)}")
    f = np.empty(length, np.float64)
    bounds = (*starts, length)
    for k, freq in enumerate(freqs):
        f[bounds[k] : bounds[k + 1]] = freq
    cycles = np.concatenate([[0.0], np.cumsum(f / UNITS[unit])]) % 1.0  # [length + 1]
    phi = jax.random.uniform(key, (), minval=0.0, maxval=2.0 * math.pi)
    return jnp.sin(phi + 2.0 * math.pi * jnp.asarray(cycles))  # [length + 1]


def _next_step_stream(series: jax.Array) -> Stream:
    """series [T + 1, n] -> xs = series[:-1], ys = series[1:], all weights 1."""
    if series.ndim == 1:
        series = series[:, None]
    return Stream(xs=series[:-1], ys=series[1:], weights=jnp.ones(series.shape[0] - 1))


def sine_stream(
    key: jax.Array,
    *,
    length: int = 2000,
    shift_at: int = 1000,
    freq_before: float = 0.1,
    freq_after: float = 0.3,
    unit: str = "rad",
) -> Stream:
    """Next-step prediction of a sine whose frequency jumps at `shift_at`.

    x_t = sin(φ + Σ_{s<t} ω_s), ω_s = freq_before for s < shift_at else freq_after (unit "rad",
    the default: radians per step; unit "cycles": ω = 2π f), φ ~ U[0, 2π).
    Returns xs[t] = x_t, ys[t] = x_{t+1} ([T, 1] each), weights ones [T].
    Within a regime x_{t+1} = 2 cos(ω) x_t − x_{t−1}.
    """
    _check_shift(length, shift_at)
    series = _regime_sine(key, (freq_before, freq_after), (0, shift_at), length, unit)
    return _next_step_stream(series)


def delayed_sine_stream(
    key: jax.Array,
    *,
    length: int = 2000,
    shift_at: int = 1000,
    delay: int = 50,
    freq_before: float = 0.1,
    freq_after: float = 0.3,
    unit: str = "rad",
) -> Stream:
    """Recall the input `delay` steps back, on `sine_stream`'s signal (the immediate-derivative
    paper's "Delayed (+50)", our reading: its text keeps only the name).

    xs[t] = x_t, ys[t] = x_{t−delay} ([T, 1] each), weights 0 for t < delay, 1 after.
    """
    _check_shift(length, shift_at)
    if not 0 < delay < length:
        raise ValueError(f"need 0 < delay < length, got delay {delay}, length {length}")
    series = _regime_sine(key, (freq_before, freq_after), (0, shift_at), length, unit)[:length]
    xs = series[:, None]
    ys = jnp.concatenate([jnp.zeros((delay, 1), xs.dtype), xs[:-delay]])
    weights = (jnp.arange(length) >= delay).astype(xs.dtype)
    return Stream(xs=xs, ys=ys, weights=weights)


def multi_sine_stream(
    key: jax.Array,
    *,
    freqs: tuple[float, ...] = (0.1, 0.3, 0.05, 0.2),
    regime_length: int = 1000,
    unit: str = "rad",
) -> Stream:
    """As `sine_stream` with len(freqs) regimes of `regime_length` steps each.

    f_s = freqs[s // regime_length]; T = len(freqs) · regime_length; continuous phase.
    Returns xs, ys [T, 1] and weights ones [T].
    """
    freqs = tuple(freqs)
    if not freqs or regime_length < 1:
        raise ValueError(
            f"need >= 1 frequency and regime_length >= 1, got {freqs}, {regime_length}"
        )
    length = len(freqs) * regime_length
    starts = tuple(k * regime_length for k in range(len(freqs)))
    return _next_step_stream(_regime_sine(key, freqs, starts, length, unit))


# ---------------------------------------------------------------------------------------------
# Lorenz


def _lorenz_field(state: jax.Array, rho, sigma: float, beta: float) -> jax.Array:
    x, y, z = state[0], state[1], state[2]
    return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])


def _rk4_step(state: jax.Array, rho, sigma: float, beta: float, dt: float) -> jax.Array:
    f = functools.partial(_lorenz_field, rho=rho, sigma=sigma, beta=beta)
    k1 = f(state)
    k2 = f(state + 0.5 * dt * k1)
    k3 = f(state + 0.5 * dt * k2)
    k4 = f(state + dt * k3)
    return state + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def lorenz_stream(
    key: jax.Array,
    *,
    length: int = 2000,
    shift_at: int = 1000,
    rho_before: float = 28.0,
    rho_after: float = 20.0,
    sigma: float = 10.0,
    beta: float = 8.0 / 3.0,
    dt: float = 0.01,
    burn_in: int = 1000,
    init_noise: float = 1.0,
    scale: float = 20.0,
    z_offset: float = 25.0,
) -> Stream:
    """Next-step prediction of the Lorenz system whose ρ changes at `shift_at`.

    dx = σ(y − x), dy = x(ρ_t − z) − y, dz = xy − βz, one classic RK4 step of size dt per
    observation: s_{t+1} = RK4(s_t; ρ_t), ρ_t = rho_before for t < shift_at else rho_after.
    s_0 is (1, 1, 1) + init_noise · N(0, I) after `burn_in` RK4 steps at rho_before.
    obs_t = (x_t / scale, y_t / scale, (z_t − z_offset) / scale).
    Returns xs[t] = obs_t, ys[t] = obs_{t+1} ([T, 3] each), weights ones [T].
    """
    _check_shift(length, shift_at)
    step = functools.partial(_rk4_step, sigma=sigma, beta=beta, dt=dt)
    s = jnp.ones(3) + init_noise * jax.random.normal(key, (3,))
    s = jax.lax.fori_loop(0, burn_in, lambda _, s: step(s, rho_before), s)

    def body(s, rho):
        s_next = step(s, rho)
        return s_next, s_next

    rhos = jnp.where(jnp.arange(length) < shift_at, rho_before, rho_after)  # ρ_t, [T]
    _, states = jax.lax.scan(body, s, rhos)  # s_1 .. s_T, [T, 3]
    states = jnp.concatenate([s[None], states])  # s_0 .. s_T, [T + 1, 3]
    obs = (states - jnp.array([0.0, 0.0, z_offset])) / scale
    return _next_step_stream(obs)


# ---------------------------------------------------------------------------------------------
# Episodic streams (no resets between episodes)


def copy_stream(
    key: jax.Array,
    *,
    n_episodes: int = 1000,
    seq_len: int = 5,
    n_symbols: int = 8,
    delay: int = 0,
) -> Stream:
    """Copy task: per episode, read `seq_len` symbols, wait `delay` blank steps, then on "go"
    emit them in order.

    Episode e (2 · seq_len + delay steps), symbols a_{e,0..L−1} ~ U{0..n_symbols−1}, L = seq_len,
    D = delay:
      step i < L:       x = [onehot(a_{e,i}), 0],  y = 0,                weight 0
      step L + j < L+D: x = [0, 0],                y = 0,                weight 0   (the delay)
      step L + D + i:   x = [0, 1],                y = onehot(a_{e,i}),  weight 1
    xs [T, n_symbols + 1], ys [T, n_symbols], weights [T], T = (2 · L + D) · n_episodes.
    """
    if delay < 0:
        raise ValueError(f"delay must be >= 0 blank steps, got {delay}")
    L, C, D = seq_len, n_symbols, delay
    symbols = jax.random.randint(key, (n_episodes, L), 0, C)  # [E, L]
    onehot = jax.nn.one_hot(symbols, C)  # [E, L, C]
    zeros = jnp.zeros_like(onehot)
    blank = jnp.zeros((n_episodes, D, C + 1))
    no_go, go = jnp.zeros((n_episodes, L, 1)), jnp.ones((n_episodes, L, 1))
    xs = jnp.concatenate(
        [jnp.concatenate([onehot, no_go], -1), blank, jnp.concatenate([zeros, go], -1)], axis=1
    )  # [E, 2L + D, C + 1]
    ys = jnp.concatenate([zeros, blank[..., :C], onehot], axis=1)  # [E, 2L + D, C]
    weights = jnp.tile(jnp.concatenate([jnp.zeros(L + D), jnp.ones(L)]), n_episodes)
    return Stream(xs=xs.reshape(-1, C + 1), ys=ys.reshape(-1, C), weights=weights)


def adding_stream(key: jax.Array, *, n_episodes: int = 500, episode_len: int = 50) -> Stream:
    """Adding problem: sum the two marked values of each episode, scored at its last step.

    Episode e (T_e = episode_len steps): v_{e,t} ~ U(0, 1); markers at i ~ U{0..T_e//2 − 1} and
    j ~ U{T_e//2..T_e − 1}; x_t = [v_{e,t}, 1[t ∈ {i, j}]]. Target y = v_{e,i} + v_{e,j} with
    weight 1 at t = T_e − 1 only; targets and weights 0 elsewhere.
    xs [T, 2], ys [T, 1], weights [T], T = episode_len · n_episodes.
    """
    T = episode_len
    if T < 2:
        raise ValueError(f"episode_len must be >= 2 (one marker per half), got {T}")
    k_val, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_val, (n_episodes, T))  # [E, T]
    first = jax.random.randint(k_first, (n_episodes,), 0, T // 2)
    second = jax.random.randint(k_second, (n_episodes,), T // 2, T)
    markers = jax.nn.one_hot(first, T) + jax.nn.one_hot(second, T)  # [E, T]
    target = jnp.sum(values * markers, axis=-1)  # [E]
    last = jax.nn.one_hot(jnp.full((n_episodes,), T - 1), T)  # [E, T]
    xs = jnp.stack([values, markers], axis=-1).reshape(-1, 2)
    ys = (last * target[:, None]).reshape(-1, 1)
    return Stream(xs=xs, ys=ys, weights=last.reshape(-1))


# ---------------------------------------------------------------------------------------------
# Registry


def _check_shift(length: int, shift_at: int) -> None:
    if length < 1 or not 0 < shift_at <= length:
        raise ValueError(f"need length >= 1 and 0 < shift_at <= length, got {length}, {shift_at}")


def _single_shift(p) -> tuple[int, ...]:
    return (p["shift_at"],) if p["shift_at"] < p["length"] else ()


class _Entry(NamedTuple):
    generator: Callable[..., Stream]
    describe: Callable[[dict], tuple[int, int, str, int, tuple[int, ...]]]  # n_in, n_out, ...


_REGISTRY: dict[str, _Entry] = {
    "sine": _Entry(sine_stream, lambda p: (1, 1, "mse", p["length"], _single_shift(p))),
    "lorenz": _Entry(lorenz_stream, lambda p: (3, 3, "mse", p["length"], _single_shift(p))),
    "delayed_sine": _Entry(
        delayed_sine_stream, lambda p: (1, 1, "mse", p["length"], _single_shift(p))
    ),
    "multi_sine": _Entry(
        multi_sine_stream,
        lambda p: (
            1,
            1,
            "mse",
            len(p["freqs"]) * p["regime_length"],
            tuple(k * p["regime_length"] for k in range(1, len(p["freqs"]))),
        ),
    ),
    "copy": _Entry(
        copy_stream,
        lambda p: (
            p["n_symbols"] + 1,
            p["n_symbols"],
            "xent",
            (2 * p["seq_len"] + p["delay"]) * p["n_episodes"],
            (),
        ),
    ),
    "adding": _Entry(
        adding_stream, lambda p: (2, 1, "mse", p["episode_len"] * p["n_episodes"], ())
    ),
}


def names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(_REGISTRY)


def get(name: str, **overrides) -> TaskSpec:
    """The TaskSpec of task `name`, with `overrides` replacing the generator's defaults.

    Unknown name -> ValueError listing the known names; unknown override -> TypeError naming it
    and the accepted ones. Resolve outside jit: the result's `make` is key -> Stream.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    params = {
        p.name: p.default
        for p in inspect.signature(entry.generator).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise TypeError(
            f"task {name!r} has no argument(s) {', '.join(unknown)}; accepted: {', '.join(params)}"
        )
    params.update(overrides)
    if "freqs" in params:
        params["freqs"] = tuple(params["freqs"])
    n_in, n_out, loss, length, shifts = entry.describe(params)
    return TaskSpec(
        name=name,
        n_in=n_in,
        n_out=n_out,
        loss=loss,
        length=length,
        shifts=shifts,
        make=functools.partial(entry.generator, **params),
    )


def shift_segments(spec: TaskSpec) -> list[tuple[int, int]]:
    """Regime boundaries [(0, s_1), (s_1, s_2), ..., (s_k, T)] as half-open step ranges."""
    bounds = (0, *spec.shifts, spec.length)
    return list(zip(bounds[:-1], bounds[1:], strict=True))
