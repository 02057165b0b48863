"""The command line shared by the study entry points: --config (locked), --workdir."""

from __future__ import annotations

from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags


def run_study(study: str, run: Callable, help_text: str) -> None:
    """Parses `--config=experiments/configs/<study>.py[:preset]` (unknown override keys are
    rejected) and `--workdir` (default results/<study>/<preset>), then calls run(config, workdir).

    Flags are defined here, at call time, so importing several study modules never collides.
    """
    config_flag = config_flags.DEFINE_config_file(
        "config", f"experiments/configs/{study}.py", help_text, lock_config=True
    )
    workdir_flag = flags.DEFINE_string(
        "workdir", None, f"Output directory (default results/{study}/<preset>)."
    )

    def main(argv):
        del argv
        config = config_flag.value
        run(config, workdir_flag.value or f"results/{study}/{config.preset}")

    app.run(main)
