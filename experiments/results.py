"""Writing run outputs under a workdir: config.json, metrics.jsonl, summary.json, table.md."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomically writes JSON (temp file, flush, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows) -> None:
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def finished_table(workdir: str | os.PathLike, config: dict) -> str | None:
    """The saved table of a finished run with this exact config, else None."""
    workdir = Path(workdir)
    try:
        saved = json.loads((workdir / "config.json").read_text())
        summary = json.loads((workdir / "summary.json").read_text())
        table = (workdir / "table.md").read_text()
    except (OSError, ValueError):
        return None
    return table if saved == config and summary.get("finished") else None


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())
