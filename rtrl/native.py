"""A CPU kernel (XLA FFI custom call) for ring-sparse RTRL and eligibility traces of a vanilla RNN.

The step it computes, per batch element, with M [n, n, m] the sensitivity tensor of h, d = φ'(z_t)
[n], v = [h_{t-1}; x_t; 1] [m], w [n, k] the selected weights W_rec[i, (i + o_s) mod n], offsets
o_s (static, signed) and γ the trace decay:

    M_t[i] = d_i (Σ_s w[i, s] M_{t-1}[(i + o_s) mod n] + I_t[i]) + γ M_{t-1}[i]  (Eqs. 3, 6, 8)
    g      = Σ_i coef_i M_{t-1}[i]                                                [n, m]

is the same as `rtrl.sweep.update_and_contract` for the vanilla cell; the kernel does it in one
in-place pass over M (read once, written once; source: native/ring_sweep.cc). XLA:CPU runs the
sweep's in-place fused loop on one core, unpartitioned, at about 1.5 G elements/s (n = 256,
k = 4: 10.4 ms per step, 5.9× a plain read-and-write of M); the kernel is vectorised, updates
rows in blocks of 4 from one load of their shared window, splits M in column tiles over XLA's
intra-op thread pool and keeps the rows still needed in cache (3.0 ms, 1.7×).

The kernel is compiled on first use with the system's C++ compiler (`$CXX`, default g++) against
the headers that ship with jaxlib, and cached under `$CREDIT_CACHE` (default ~/.cache/credit).
`available()` is False, and callers use the XLA program instead, when there is no compiler, the
build fails (a warning says why), or `CREDIT_NATIVE=0` is set.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name("native") / "ring_sweep.cc"
TARGET = "credit_ring_sweep"
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-w"]


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("CREDIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "credit"
    )
    return pathlib.Path(root)


def _cpu_signature() -> str:
    """The CPU's model and feature flags (Linux), else the machine type: -march=native code built
    on one CPU may not run on another that shares the cache directory."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [ln for ln in info if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def library_path() -> pathlib.Path:
    """Where the compiled kernel lives: named by a hash of the source, the compiler, its flags,
    the CPU and the jaxlib headers it was built against, so any change rebuilds it."""
    compiler = os.environ.get("CXX", "g++")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), " ".join(FLAGS).encode()):
        key.update(part)
    key.update(_cpu_signature().encode())
    key.update(jax.ffi.include_dir().encode())
    key.update(jax.__version__.encode())
    return _cache_dir() / f"ring_sweep-{key.hexdigest()[:16]}.so"


def build() -> pathlib.Path:
    """Compile the kernel if it is not cached yet; returns the shared library's path.
    Raises RuntimeError (with the compiler's message) when it cannot be built."""
    path = library_path()
    if path.exists():
        return path
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (install g++ or set $CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename: concurrent test workers may build at once.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building {SOURCE.name} failed:\n{' '.join(cmd)}\n{result.stderr}")
    os.replace(tmp, path)
    return path


def available() -> bool:
    """Whether the kernel may be used: not switched off by `CREDIT_NATIVE=0`, built and
    registered with XLA (the build and registration happen once per process)."""
    return os.environ.get("CREDIT_NATIVE", "1") != "0" and _registered()


@functools.cache
def _registered() -> bool:
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
    except (RuntimeError, OSError) as error:
        warnings.warn(
            f"rtrl.native: the CPU kernel is unavailable, using the XLA program instead ({error})",
            stacklevel=3,
        )
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.CreditRingSweep), platform="cpu")
    return True


def ring_sweep(M, w, d, v, coef, offsets, decay):
    """(M_t [n, n, m], g [n, m]) of the module docstring; M is updated in place when XLA can
    donate it (it can inside a scan step whose only other use of M is this call).

    M [n, n, m], w [n, k], d [n], coef [n], v [m], all one float dtype (float32 or float64);
    offsets: k distinct signed ints in (−n, n); decay: a Python float. vmap adds leading batch
    axes to every operand (the kernel runs the batch in the same pass).
    """
    n, rows, m = M.shape
    offsets = [int(o) for o in offsets]
    if rows != n:
        raise ValueError(f"ring_sweep is for the vanilla cell, M [n, n, m]; got {M.shape}")
    if w.shape != (n, len(offsets)) or d.shape != (n,) or coef.shape != (n,) or v.shape != (m,):
        raise ValueError(
            f"ring_sweep: shapes w {w.shape}, d {d.shape}, v {v.shape}, coef {coef.shape} do not"
            f" match M {M.shape} and {len(offsets)} offsets"
        )
    if any(not -n < o < n for o in offsets) or len({o % n for o in offsets}) != len(offsets):
        raise ValueError(f"offsets must be distinct modulo n = {n} and lie in (-n, n): {offsets}")
    if M.dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"ring_sweep supports float32 and float64, got {M.dtype}")
    w, d, v, coef = (jnp.asarray(a, M.dtype) for a in (w, d, v, coef))
    call = jax.ffi.ffi_call(
        TARGET,
        (jax.ShapeDtypeStruct(M.shape, M.dtype), jax.ShapeDtypeStruct((n, m), M.dtype)),
        input_output_aliases={0: 0},
        vmap_method="broadcast_all",
    )
    return call(M, w, d, v, coef, offsets=np.asarray(offsets, np.int64), decay=np.float64(decay))
