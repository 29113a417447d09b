"""The `maskinit` command line: parses options, calls the library, prints with rich.

Every command is a thin wrapper over a plain function; a `MaskinitError` becomes one red line and
the exit code of its kind, `errors.EXIT_CODES`: 2 for bad input, 1 for a failed run, 3 for a diverged
one, 130/143 for SIGINT/SIGTERM (`--debug` shows the traceback instead).

One vocabulary for every command (an older name stays as a hidden alias):
- a COCO dataset given by its role is `--train-json/--train-images` or `--val-json/--val-images`; a
  command about one dataset (`check-data`, `analyze-data`) takes its JSON as the argument and the image
  folder as `--images` (alias `--json FILE`);
- a folder of outputs is `--output-dir` (`train`, `predict`; alias `--output`), drawings `--vis-dir`;
- a trained model is its run folder as the argument (`predict`, `export`) or `--config` with `--weights`;
- a JSON report is `--json-out` (`eval`, `inspect-init` (alias `--json`), `check-data`, `analyze-data`);
  a figure `--plot`; `export-config` writes its YAML to stdout or `-o/--output FILE`.

The commands live by subject: `info` (doctor, export-config, list), `training` (train, tune),
`inspection` (inspect-init), `models` (eval, predict, export) and `datasets` (check-data, analyze-data,
convert, split); `app` holds the app and the error handling every command shares, `options` the options
several commands share. Importing the package registers every command, in the order `--help` lists them.
"""

from .app import app

# Each module registers its commands on `app` when imported; `--help` lists them in this order.
# isort: off
from . import info, training, inspection, models, datasets  # noqa: E402, F401
# isort: on

__all__ = ["app"]
