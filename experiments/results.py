"""Writing run outputs under a workdir: config.json, metrics.jsonl, summary.json, table.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically writes text (temp file, flush, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def json_line(row: dict) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def write_jsonl(path: str | os.PathLike, rows) -> None:
    write_text(path, "".join(json_line(row) for row in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def as_saved(obj):
    """obj as it reads back from JSON (tuples become lists), for comparing with a saved file."""
    return json.loads(json.dumps(obj))


def finished_run(workdir: str | os.PathLike, config: dict) -> tuple[str, dict] | None:
    """(table, summary) of a finished run with this exact config, else None."""
    workdir = Path(workdir)
    try:
        saved = json.loads((workdir / "config.json").read_text())
        summary = json.loads((workdir / "summary.json").read_text())
        table = (workdir / "table.md").read_text()
    except (OSError, ValueError):
        return None
    return (table, summary) if saved == as_saved(config) and summary.get("finished") else None


def mean_std(
    values, fmt: str = ".3f", std_fmt: str | None = None, *, signed=False, finite_only=False
) -> str:
    """ "mean ± std" of values (population std); one value prints alone.

    fmt / std_fmt: format specs of the mean and the std (std_fmt defaults to fmt); signed: a
    leading + on positive means; finite_only: drop non-finite values first ("diverged" when none
    is left). A mean that rounds to zero prints without a minus sign.
    """
    arr = np.asarray(values, np.float64).ravel()
    if finite_only:
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return "diverged"
    mean = float(np.mean(arr))
    if mean == 0 or float(format(mean, fmt.lstrip("+"))) == 0:
        mean = 0.0
    text = format(mean, ("+" if signed else "") + fmt)
    if arr.size == 1 and not finite_only:
        return text
    return f"{text} ± {format(float(np.std(arr)), std_fmt or fmt)}"
