"""Command line entry point: ``python cli.py {fit,validate,test} --config configs/<name>.yaml``.

A thin LightningCLI: the model, the datamodule, callbacks and the logger are all ``class_path`` /
``init_args`` objects in YAML, the rollout settings are the ``rollout:`` group. See README.md ("Config
system"). A config value that cannot work exits with status 1 and one line per problem, before any model
is loaded.

Everything is imported under the ``__main__`` guard: verifier worker processes (spawn/forkserver) re-import
this file, and must not pay for importing Lightning.
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import sys

    from echorl_lightning.cli import main
    from echorl_lightning.config_checks import ConfigError
    from echorl_lightning.data.tables import DataSourceError
    from echorl_lightning.training.checkpoint_files import CheckpointFileError
    from echorl_lightning.training.checkpoint_safety import CheckpointRefused

    try:
        main()
    except (ConfigError, DataSourceError, CheckpointRefused, CheckpointFileError) as err:
        # the message names the key or file; a traceback adds nothing
        sys.stdout.flush()  # the log lines first: the error is the last line
        sys.exit(f"cli.py: {err}")
