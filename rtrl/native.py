"""A CPU kernel (XLA FFI custom call) for ring-sparse RTRL (its decay term served full-M traces,
which now keep only M's diagonal blocks and need no pass).

With an elementwise core s_t = core(z_t, s_{t-1}) the sensitivity step is linear in the old
rows, with per-neuron coefficients. For carry leaves l (h; the LSTM's c), ring offsets o_s
(static, signed), selected weights w[g n + i, s] = W_rec[g n + i, (i + o_s) mod n], G gate rows
per neuron, J_z[i, l, g] = ∂s_l,i/∂z_{g n + i}, J_s[i, l, l'] = ∂s_l,i/∂s_l',i (the core's
per-neuron Jacobians) and γ the trace decay:

    A[i, l, s]  = Σ_g J_z[i, l, g] w[g n + i, s]          B = J_s (+ γ on h → h)      E = J_z
    M_l,t[i]    = Σ_s A[i, l, s] M_h,t-1[(i + o_s) mod n] + Σ_l' B[i, l, l'] M_l',t-1[i]
                  + Σ_g E[i, l, g] I_g[i]               (paper Eqs. 3, 6, 8; I: immediate term)
    g           = Σ_i Σ_l coef[i, l] M_l,t-1[i]          [R, m], the gradient contraction

which is `rtrl.inplace.update_and_contract` (for the vanilla cell A = φ'(z) w, B = γ, E = φ'(z)).
The kernel does it in one in-place pass over M (read once, written once; source:
native/ring_pass.cc). XLA:CPU runs the pass's in-place fused loop on one core, unpartitioned,
at about 1.5 G elements/s (vanilla n = 256, k = 4: 10.4 ms per step, 5.9× a plain read-and-write
of M); the kernel is vectorised, updates rows in blocks of 4 from one load of their shared window,
splits M in column tiles over XLA's intra-op thread pool and keeps the rows still needed in cache
(3.0 ms, 1.7×). The vanilla cell takes it for any ring offsets; the LSTM (two leaves) where the
banded path applies: ring order, k <= 8, n a multiple of 4 (`supports`).

The kernel is used only where the default backend is a CPU (`jax.default_backend()`; inside a
step, `jax.lax.platform_dependent` also keeps it out of programs lowered for another platform).
Elsewhere nothing is compiled, nothing is printed, and callers run the XLA program. On a CPU it
is compiled on first use (one line on stderr says what, about how long and where it goes) with
the system's C++ compiler (`$CXX`, default g++) against the headers that ship with jaxlib, and
cached under `$CREDIT_CACHE` (default ~/.cache/credit). `available()` is False, and callers use
the XLA program instead, when `CREDIT_NATIVE=0` is set, the backend is not a CPU, or (with one
warning that says why) jax lacks the `jax.ffi` API it needs (jax >= 0.5.0, `JAX_MIN`), there is
no compiler, or the build or registration fails.

The tiles of M are shared out to XLA's intra-op thread pool, but a call never waits on work that
has not started: the calling thread runs every tile no helper has claimed and then waits only
for the tiles that are running (see `Shared` in the source). So any number of concurrent calls
(Python threads, independent calls XLA schedules at once, vmap) complete.

The custom call has no differentiation rule of its own. The algorithms' steps give it one
(`rtrl.forward`): under `jax.jvp`, `jax.grad` or `jax.linearize` the derivative is that of the
XLA program (same values), while the primal still comes from the kernel.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from rtrl import cells as cells_lib

SOURCE = pathlib.Path(__file__).with_name("native") / "ring_pass.cc"
TARGETS = {1: "credit_ring_pass", 2: "credit_ring_pass2"}  # by number of carry leaves
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-w"]
# The first jax with the `jax.ffi` module (before it: `jax.extend.ffi`; jax CHANGELOG, 0.5.0:
# "The jax.extend.ffi submodule was moved to jax.ffi"), whose jaxlib headers have ffi::ThreadPool.
JAX_MIN = "0.5.0"
BUILD_SECONDS = 10  # g++ -O3 on this source, 2 cores: 8 s


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
    return _cache_dir() / f"ring_pass-{key.hexdigest()[:16]}.so"


def build() -> pathlib.Path:
    """Compile the kernel if it is not cached yet; returns the shared library's path.
    Raises RuntimeError (with the compiler's message) when it cannot be built. The first build
    prints one line to stderr."""
    path = library_path()
    if path.exists():
        return path
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (install g++ or set $CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"rtrl.native: compiling the CPU kernel {SOURCE.name} with {compiler} (once per source,"
        f" compiler and CPU; about {BUILD_SECONDS} s), cached as {path}",
        file=sys.stderr,
        flush=True,
    )
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
    """Whether the kernel may be used now: not switched off by `CREDIT_NATIVE=0`, the default
    backend is a CPU, and the kernel is built and registered with XLA (once per process; on any
    failure one warning says why and this stays False). On other backends it never builds."""
    if os.environ.get("CREDIT_NATIVE", "1") == "0" or jax.default_backend() != "cpu":
        return False
    return _registered()


def _missing_api() -> str | None:
    """What of the jax.ffi API the kernel needs this jax lacks ("no ..."), else None."""
    ffi = getattr(jax, "ffi", None)
    if ffi is None:
        return "no jax.ffi module"
    names = ("ffi_call", "register_ffi_target", "pycapsule", "include_dir")
    missing = [f"jax.ffi.{name}" for name in names if not hasattr(ffi, name)]
    return f"no {', '.join(missing)}" if missing else None


@functools.cache
def _registered() -> bool:
    missing = _missing_api()
    if missing:
        _unavailable(f"jax {jax.__version__} has {missing}; the kernel needs jax >= {JAX_MIN}")
        return False
    try:
        _probe()  # before the build: an API this jax lacks makes building pointless
        library = ctypes.cdll.LoadLibrary(str(build()))
        for symbol, target in (("CreditRingPass", TARGETS[1]), ("CreditRingPass2", TARGETS[2])):
            capsule = jax.ffi.pycapsule(getattr(library, symbol))
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except Exception as error:  # any failure here means: use the XLA program, never crash
        _unavailable(f"{type(error).__name__}: {error}")
        return False
    return True


def _unavailable(reason: str):
    warnings.warn(
        f"rtrl.native: the CPU kernel is unavailable, using the XLA program instead ({reason})",
        stacklevel=4,
    )


def _probe():
    """Trace (abstract evaluation only: no lowering, no run, no registration needed) one tiny
    call per target, so that an ffi_call API this jax does not have fails here, once, and not
    in a user's jit."""
    for L in (1, 2):
        n, m = 4, 2
        M = [jax.ShapeDtypeStruct((n, n, m), jnp.float32)] * L
        shapes = [(n, L, 1), (n, L, L), (n, L, 1), (m,), (n, L)]
        rest = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
        jax.eval_shape(lambda M, *rest: _ffi_call(M, *rest, [0]), M, *rest)


def supports(cell, offsets) -> bool:
    """Whether the kernel handles this cell and these ring offsets, from what the cell declares:
    a factorised cell whose hidden state is its first carry leaf, with one leaf (any offsets) or
    two (the banded path's conditions: offsets in ring order [0, 1, -1, 2, ...], k <= 8, n a
    multiple of 4 and at least 4 + (k - 1) // 2)."""
    if cells_lib.FACTORISED not in cell.capabilities or cell.hidden_leaf != 0:
        return False
    leaves, k, n = cells_lib.carry_leaves(cell), len(offsets), cell.n_hidden
    if leaves == 1:
        return True
    ring = list(offsets) == [[0, 1, -1, 2, -2, 3, -3, 4][s] for s in range(k)] if k <= 8 else False
    return leaves == 2 and ring and n % 4 == 0 and n >= 4 + (max(k, 1) - 1) // 2


def step_coefficients(cell, z, carry, w, decay):
    """(A [n, L, k], B [n, L, L], E [n, L, G]) of the module docstring for one step: the core's
    per-neuron Jacobians J_z, J_s by forward mode at (z_t [R], s_{t-1}), w [R, k]."""
    n = cell.n_hidden
    leaves, treedef = jax.tree.flatten(carry)
    L, G = len(leaves), z.shape[0] // n

    def one(z_i, s_i):  # one neuron: gate pre-activations [G], carry values [L] -> new carry [L]
        new = cell.core(z_i, jax.tree.unflatten(treedef, [s_i[l : l + 1] for l in range(L)]))
        return jnp.concatenate(jax.tree.leaves(new))

    z_n = z.reshape(G, n).T  # [n, G], gate g of neuron i is row g n + i
    J_z, J_s = jax.vmap(jax.jacfwd(one, argnums=(0, 1)))(z_n, jnp.stack(leaves, axis=1))
    A = jnp.einsum("ilg,gik->ilk", J_z, w.reshape(G, n, -1))
    B = J_s.at[:, 0, 0].add(decay) if decay else J_s  # leaf 0 is h (`supports`)
    return A, B, J_z


def ring_pass(M, A, B, E, v, coef, offsets):
    """(M_t, g [R, m]) of the module docstring; M is updated in place when XLA can donate it (it
    can inside a scan step whose only other use of M is this call).

    M: the sensitivity leaf [n, R, m] (one carry leaf) or the pair (M_h, M_c); A [n, L, k],
    B [n, L, L], E [n, L, G], v [m], coef [n, L]; one float dtype (float32 or float64); offsets:
    k distinct signed ints in (−n, n). vmap adds leading batch axes to every operand (the kernel
    runs the batch in the same pass).
    """
    leaves = list(M) if isinstance(M, tuple | list) else [M]
    L = len(leaves)
    n, R, m = leaves[0].shape
    G, k = R // n, len(offsets)
    offsets = [int(o) for o in offsets]
    if L not in (1, 2) or R % n or any(leaf.shape != (n, R, m) for leaf in leaves):
        raise ValueError(f"ring_pass: M must be one or two leaves [n, G n, m], got {leaves}")
    want = {"A": (n, L, k), "B": (n, L, L), "E": (n, L, G), "v": (m,), "coef": (n, L)}
    got = {"A": A.shape, "B": B.shape, "E": E.shape, "v": v.shape, "coef": coef.shape}
    if got != want:
        raise ValueError(f"ring_pass: shapes {got} do not match M {leaves[0].shape}: {want}")
    if any(not -n < o < n for o in offsets) or len({o % n for o in offsets}) != k:
        raise ValueError(f"offsets must be distinct modulo n = {n} and lie in (-n, n): {offsets}")
    dtype = leaves[0].dtype
    if dtype not in (jnp.float32, jnp.float64) or any(leaf.dtype != dtype for leaf in leaves):
        raise ValueError(f"ring_pass supports float32 and float64 leaves, got {dtype}")
    if L == 2 and not (k <= 8 and n % 4 == 0 and n >= 4 + (max(k, 1) - 1) // 2):
        raise ValueError("ring_pass: two leaves (LSTM) need k <= 8 and n a multiple of 4")
    if not available():
        raise RuntimeError(
            "rtrl.native.ring_pass: the kernel is unavailable here (CREDIT_NATIVE=0, a backend"
            " other than CPU, or a failed build; see the warning)"
        )
    A, B, E, v, coef = (jnp.asarray(a, dtype) for a in (A, B, E, v, coef))
    new, g = _ffi_call(leaves, A, B, E, v, coef, offsets)
    return (tuple(new) if L == 2 else new[0]), g


def _ffi_call(leaves, A, B, E, v, coef, offsets):
    """The custom call on checked operands: (list of new leaves, g)."""
    L = len(leaves)
    n, R, m = leaves[0].shape
    dtype = leaves[0].dtype
    leaf = jax.ShapeDtypeStruct((n, R, m), dtype)
    call = jax.ffi.ffi_call(
        TARGETS[L],
        (*[leaf] * L, jax.ShapeDtypeStruct((R, m), dtype)),
        input_output_aliases={l: l for l in range(L)},
        vmap_method="broadcast_all",
    )
    *new, g = call(*leaves, A, B, E, v, coef, offsets=np.asarray(offsets, np.int64))
    return new, g
