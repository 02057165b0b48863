"""Study configs: `<study>.py` with `get_config(arg)`; shared helpers below."""


def unique_runs(runs: list[dict]) -> list[dict]:
    """runs with each "id" kept once, at its first occurrence (presets that share runs)."""
    seen, out = set(), []
    for run in runs:
        if run["id"] not in seen:
            seen.add(run["id"])
            out.append(run)
    return out
