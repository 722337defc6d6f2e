"""Command line entry point: ``python cli.py {fit,validate,test} --config configs/<name>.yaml``.

A thin LightningCLI: the model, the datamodule, callbacks and the logger are all ``class_path`` /
``init_args`` objects in YAML. See README.md ("Config system").

Everything is imported under the ``__main__`` guard: verifier worker processes (spawn/forkserver) re-import
this file, and must not pay for importing Lightning.
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from echorl_lightning.cli import main

    main()
