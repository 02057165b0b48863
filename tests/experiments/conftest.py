"""Shared fixtures for the study tests.

`smoke_run` runs a study preset once per test session and worker, so the tests that read one
preset's results (its tables, a property of one setting, the 8-device comparison) share one
training run. Tests that share a preset carry `pytest.mark.xdist_group(<preset>)`, and the suite
runs with `--dist loadgroup`, so they land on the same worker."""

import pytest


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """smoke_run(study, presets, preset) -> (summary, workdir) of `study.run(presets.get_config(
    preset), workdir)`, computed on first use. Callers must not modify the summary."""
    cache = {}

    def get(study, presets, preset):
        key = (study.__name__, preset)
        if key not in cache:
            workdir = tmp_path_factory.mktemp(f"{study.__name__.rsplit('.', 1)[-1]}-{preset}")
            cache[key] = study.run(presets.get_config(preset), workdir), workdir
        return cache[key]

    return get
