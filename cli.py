"""Command line entry point: ``python cli.py {fit,validate,test} --config configs/<name>.yaml``.

A thin LightningCLI: the model, the datamodule, callbacks and the logger are all ``class_path`` /
``init_args`` objects in YAML. See README.md ("Config system").
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from echorl_lightning.cli import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
