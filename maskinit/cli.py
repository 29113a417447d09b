"""The `maskinit` command line: parses options, calls the library, prints with rich.

Every command is a thin wrapper over a plain function; a `MaskinitError` becomes one red line and
exit code 2 (`--debug` shows the traceback instead).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import MaskinitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train Mask R-CNN from scratch on Detectron2.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}
# detectron2.model_zoo imports pkg_resources; setuptools<81 is pinned, its notice is noise here.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(command):
    """Turn `MaskinitError` (and bad files) into one red line and exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if not STATE["debug"]:
            warnings.filterwarnings("ignore")
        try:
            return command(*args, **kwargs)
        except MaskinitError as error:
            if STATE["debug"]:
                raise
            fail(str(error))

    return wrapper


def version_callback(value: bool):
    if value:
        console.print(f"maskinit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
):
    """Train Mask R-CNN from scratch on Detectron2."""
    STATE["debug"] = debug or bool(os.environ.get("MASKINIT_DEBUG"))


@app.command()
def doctor():
    """Check the install: Python, torch, torchvision, detectron2, pycocotools, fast COCO eval."""
    from .doctor import run_checks

    checks = run_checks()
    table = Table(title="maskinit doctor")
    for column in ("component", "status", "detail"):
        table.add_column(column)
    for check in checks:
        status = "[green]ok[/]" if check.ok else "[red]broken[/]"
        if not check.required and "missing" in check.detail:
            status = "[yellow]optional[/]"
        table.add_row(check.name, status, check.detail)
    console.print(table)
    broken = [check for check in checks if not check.ok and check.required]
    for check in broken:
        err_console.print(f"[red]{check.name}[/]: fix: {check.fix}")
    raise typer.Exit(1 if broken else 0)


PRESET_HELP = "Named starting point under configs/ (r50-fpn, tiny, ...)."
NORM_HELP = "Norm variant NAME[:key=value] (GN, GNWS, SyncBN, BN, naiveSyncBN, none)."
INIT_HELP = "Initializer NAME[:key=value] (kaiming_normal, xavier_uniform, c2, ...)."
PLUGIN_HELP = "Python module (or .py file) registering initializers/norms; repeatable."
OVERRIDES_HELP = "Trailing KEY VALUE pairs overriding config keys, as Detectron2's opts."


@app.command("export-config")
@handles_errors
def export_config_command(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="A complete config (from export-config) to start from."),
    base: Optional[str] = typer.Option(None, help="Detectron2 model-zoo config name or local YAML (default: Mask R-CNN R50-FPN 3x)."),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    norm: Optional[str] = typer.Option(None, help=NORM_HELP),
    init: Optional[str] = typer.Option(None, help=INIT_HELP),
    schedule: Optional[str] = typer.Option(None, help="Detectron2 schedule 1x|3x|6x|9x (1x = 90k iterations at batch 16)."),
    ims_per_batch: Optional[int] = typer.Option(None, help="Total batch; LR and iterations rescale linearly."),
    num_classes: Optional[int] = typer.Option(None, help="Number of object classes."),
    plugin: Optional[List[str]] = typer.Option(None, help=PLUGIN_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    plain: bool = typer.Option(False, help="Only keys stock Detectron2 knows (for tools/train_net.py)."),
    explain: bool = typer.Option(False, help="Print every key that differs from the base, with the reason."),
):
    """Write a complete Detectron2 YAML for training Mask R-CNN from scratch."""
    from .config import build_config, export_config

    options = dict(
        path=config, base=base, preset=preset, norm=norm, init=init, overrides=overrides or (), schedule=schedule,
        ims_per_batch=ims_per_batch, num_classes=num_classes, plugins=plugin or (),
    )
    text = export_config(output, plain=plain, **options)
    if explain:
        table = Table(title="keys that differ from the base config")
        table.add_column("key", no_wrap=True)
        for column in ("base", "maskinit", "why"):
            table.add_column(column, overflow="fold")
        for key, old, new, reason in build_config(**options).differences():
            table.add_row(key, str(old), str(new), reason)
        err_console.print(table)
    if output is None:
        sys.stdout.write(text)
    else:
        err_console.print(f"wrote {output}")


@app.command("list")
@handles_errors
def list_command(
    plugin: Optional[List[str]] = typer.Option(None, help=PLUGIN_HELP),
):
    """List presets, norm variants and initializers."""
    from .config import list_presets
    from .initializers import INITIALIZER_REGISTRY
    from .norms import NORM_REGISTRY
    from .plugins import load_plugins

    load_plugins(plugin or ())
    table = Table(title="presets")
    table.add_column("preset")
    for name in list_presets():
        table.add_row(name)
    console.print(table)
    table = Table(title="norm variants")
    table.add_column("name")
    table.add_column("description")
    for name, cls in sorted(NORM_REGISTRY):
        table.add_row(name, cls.description or (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)
    table = Table(title="initializers")
    table.add_column("name")
    table.add_column("description")
    for name, fn in sorted(INITIALIZER_REGISTRY):
        table.add_row(name, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
    console.print(table)


if __name__ == "__main__":
    app()
