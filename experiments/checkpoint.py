"""Atomic, checksummed, data-only checkpoints (msgpack via flax.serialization; never pickle).

A checkpoint file `ckpt-<seq>.msgpack` is MAGIC + sha256(payload) + payload, where the payload
is the msgpack of {"meta": JSON text, "arrays": flax state dict of a pytree}. Writing goes to a
temp file that is flushed, fsynced and renamed, so a kill at any moment leaves either the old
or the new file. Reading verifies the checksum; a truncated or corrupt file is reported and the
next older one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import flax.serialization
import jax
import numpy as np

MAGIC = b"CREDITCKPT1\n"
_NAME = re.compile(r"ckpt-(\d{8})\.msgpack$")


class CorruptCheckpointError(ValueError):
    pass


def _files(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save(directory: str | os.PathLike, meta: dict, arrays=None, keep: int = 2) -> Path:
    """Writes checkpoint number (last + 1) holding meta (JSON-able) and a pytree of arrays."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = _files(directory)
    seq = existing[-1][0] + 1 if existing else 0
    state = {} if arrays is None else flax.serialization.to_state_dict(jax.device_get(arrays))
    payload = flax.serialization.msgpack_serialize(
        {"meta": json.dumps(meta, sort_keys=True), "arrays": state}
    )
    path = directory / f"ckpt-{seq:08d}.msgpack"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(MAGIC + hashlib.sha256(payload).digest() + payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    for _, old in existing[: max(0, len(existing) + 1 - keep)]:
        old.unlink(missing_ok=True)
    return path


def read(path: str | os.PathLike) -> tuple[dict, dict]:
    """(meta, raw array state dict) of one checkpoint; CorruptCheckpointError if damaged."""
    blob = Path(path).read_bytes()
    head = len(MAGIC) + 32
    if len(blob) < head or not blob.startswith(MAGIC):
        raise CorruptCheckpointError(f"{path}: not a checkpoint file (bad header or truncated)")
    digest, payload = blob[len(MAGIC) : head], blob[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpointError(f"{path}: checksum mismatch (truncated or corrupt)")
    try:
        content = flax.serialization.msgpack_restore(payload)
        return json.loads(content["meta"]), content["arrays"]
    except Exception as err:  # any decoding failure means the file cannot be trusted
        raise CorruptCheckpointError(f"{path}: cannot decode ({err})") from err


def load_latest(directory: str | os.PathLike) -> tuple[dict, dict, Path] | None:
    """The newest readable checkpoint as (meta, raw arrays, path), or None if there is none.

    Damaged files are reported with a warning and skipped in favour of the previous one.
    """
    for _, path in reversed(_files(Path(directory))):
        try:
            meta, arrays = read(path)
        except CorruptCheckpointError as err:
            warnings.warn(f"{err}; falling back to the previous checkpoint", stacklevel=2)
            continue
        return meta, arrays, path
    return None


def restore(target, arrays: dict):
    """The pytree `target` (for structure, shapes and dtypes) with the values of `arrays`.

    NumPy leaves come back as writable copies: msgpack decoding may hand out read-only views
    of the file buffer (it does in some flax versions), and callers fill restored buffers in place.
    """
    restored = flax.serialization.from_state_dict(target, arrays)
    restored = jax.tree_util.tree_map(
        lambda x: np.array(x) if isinstance(x, np.ndarray) else x, restored
    )
    mismatched = [
        (np.shape(a), np.shape(b))
        for a, b in zip(
            jax.tree_util.tree_leaves(target), jax.tree_util.tree_leaves(restored), strict=True
        )
        if np.shape(a) != np.shape(b)
    ]
    if mismatched:
        raise CorruptCheckpointError(f"checkpoint arrays do not match the run: {mismatched[:3]}")
    return restored
