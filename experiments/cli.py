"""The command line shared by the study entry points: --config (locked), --workdir, and the
multi-host launch flags (--distributed, --coordinator, --num_processes, --process_id)."""

from __future__ import annotations

from collections.abc import Callable

import jax
from absl import app, flags
from ml_collections import config_flags


def run_study(study: str, run: Callable, help_text: str) -> None:
    """Parses `--config=experiments/configs/<study>.py[:preset]` (unknown override keys are
    rejected) and `--workdir` (default results/<study>/<preset>), then calls run(config, workdir).

    With --distributed, `jax.distributed.initialize` runs first (one process per host; the
    coordinator flags may be omitted under Slurm, Open MPI and on TPU pods, where JAX detects
    them), so the runner's device mesh spans every host's devices.

    Flags are defined here, at call time, so importing several study modules never collides.
    """
    config_flag = config_flags.DEFINE_config_file(
        "config", f"experiments/configs/{study}.py", help_text, lock_config=True
    )
    workdir_flag = flags.DEFINE_string(
        "workdir", None, f"Output directory (default results/{study}/<preset>)."
    )
    distributed = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
    coordinator = flags.DEFINE_string("coordinator", None, "host:port of process 0.")
    num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
    process_id = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")

    def main(argv):
        del argv
        if distributed.value:
            jax.distributed.initialize(coordinator.value, num_processes.value, process_id.value)
        config = config_flag.value
        run(config, workdir_flag.value or f"results/{study}/{config.preset}")

    app.run(main)
