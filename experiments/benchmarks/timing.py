"""Timing helpers and machine floors measured in the same process as the benchmark."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def seconds_per_call(fn, *args, min_seconds: float = 2.0, max_reps: int = 50) -> float:
    """Median wall time of `fn(*args)` after one warm-up (compile) call, blocking on results."""
    jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def streaming_bandwidth(n_bytes: int, steps: int = 64) -> float:
    """Bytes/s of x <- a·x + b over a float32 buffer of n_bytes, repeated `steps` times in a scan.

    Each step reads and writes the buffer once (2·n_bytes of traffic), which is the access
    pattern of a trace update; a buffer of the traces' size measures the bandwidth at that
    working-set size (cache or DRAM, whichever holds it).
    """
    x = jnp.ones((max(n_bytes // 4, 1),), jnp.float32)

    @jax.jit
    def touch(x):
        def body(x, _):
            return 0.999 * x + 1e-3, None

        return jax.lax.scan(body, x, None, length=steps)[0]

    return 2 * x.nbytes * steps / seconds_per_call(touch, x)


def round_robin(calls: dict, repeats: int) -> dict:
    """{name: (best, median) seconds} of each `fn(*args)` in calls {name: (fn, args)}.

    Every program is compiled and warmed up first, then the programs are called in turn,
    `repeats` rounds, blocking on each result, so that machine noise hits them alike and their
    ratios are comparable within one run.
    """
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}
