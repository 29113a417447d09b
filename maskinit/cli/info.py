"""Commands about the install and the building blocks: `doctor`, `export-config`, `list`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from ..printing import console, err_console, print_key_rows
from .app import app, handles_errors
from .options import (
    IMS_PER_BATCH_HELP,
    OVERRIDES_CONTEXT,
    RECIPE_HELP,
    Init,
    Norm,
    Overrides,
    Plugins,
    Preset,
)


@app.command()
def doctor():
    """Check the install: Python, torch, torchvision, detectron2, pycocotools, fast COCO eval."""
    from ..doctor import run_checks

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


@app.command("export-config", context_settings=OVERRIDES_CONTEXT)
@handles_errors
def export_config_command(
    overrides: Overrides = None,
    config: Path | None = typer.Option(None, "--config", help="A complete config (from export-config) to start from."),
    base: str | None = typer.Option(
        None,
        help=(
            "Detectron2 model-zoo config name or local YAML (default: Mask R-CNN R50-FPN 3x); a stated base keeps its "
            "backbone (depth, groups, width)."
        ),
    ),
    preset: Preset = None,
    recipe: str | None = typer.Option(None, help=RECIPE_HELP),
    norm: Norm = None,
    init: Init = None,
    schedule: str | None = typer.Option(
        None, help="Detectron2 schedule 1x|3x|6x|9x (1x = 90k iterations at batch 16)."
    ),
    ims_per_batch: int | None = typer.Option(None, help=IMS_PER_BATCH_HELP),
    num_classes: int | None = typer.Option(None, help="Number of object classes."),
    plugin: Plugins = None,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    plain: bool = typer.Option(False, help="Only keys stock Detectron2 knows (for tools/train_net.py)."),
    explain: bool = typer.Option(False, help="Print every key that differs from the base, with the reason."),
):
    """Write a complete Detectron2 YAML for training Mask R-CNN from scratch."""
    from ..config import build_config, export_config

    options = dict(
        path=config,
        base=base,
        preset=preset,
        norm=norm,
        init=init,
        overrides=overrides or (),
        schedule=schedule,
        ims_per_batch=ims_per_batch,
        num_classes=num_classes,
        plugins=plugin or (),
        recipe=recipe,
    )
    text = export_config(output, plain=plain, **options)
    if explain:
        # piped, only the key lines: `--explain 2> explain.txt` is one line per key
        print_key_rows(
            "keys that differ from the base config" if err_console.is_terminal else "",
            build_config(**options).differences(),
            ("base", "maskinit", "why"),
            err_console,
        )
    if output is None:
        sys.stdout.write(text)
    else:
        err_console.print(f"wrote {output}")


@app.command("list")
@handles_errors
def list_command(
    plugin: Plugins = None,
):
    """List presets, published recipes (with their COCO AP), norm variants and initializers."""
    from ..initializers import INITIALIZER_REGISTRY
    from ..norms import NORM_REGISTRY
    from ..plugins import load_plugins
    from ..recipes import RECIPES, list_presets, list_recipes

    load_plugins(plugin or ())
    table = Table(title="presets")
    table.add_column("preset")
    for name in list_presets():
        table.add_row(name)
    console.print(table)
    table = Table(title="recipes (published COCO val2017 AP)")
    table.add_column("recipe", no_wrap=True)
    table.add_column("box AP", justify="right")
    table.add_column("mask AP", justify="right")
    table.add_column("source", overflow="fold")
    for name in list_recipes():
        recipe = RECIPES[name]
        table.add_row(name, f"{recipe.box_ap:.1f}", f"{recipe.mask_ap:.1f}", recipe.source)
    console.print(table)
    table = Table(title="norm variants")
    table.add_column("name")
    table.add_column("description")
    for name, cls in sorted(NORM_REGISTRY):
        table.add_row(name, cls.description or next(iter((cls.__doc__ or "").strip().splitlines()), ""))
    console.print(table)
    table = Table(title="initializers")
    table.add_column("name")
    table.add_column("description")
    for name, fn in sorted(INITIALIZER_REGISTRY):
        table.add_row(name, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
    console.print(table)
