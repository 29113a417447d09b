"""`inspect-init`: one forward and backward pass of the initialized model, its scale stage by stage."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import MaskinitError
from ..printing import console, err_console, number, verdict_line
from .app import app, handles_errors
from .options import OVERRIDES_CONTEXT, Init, Norm, Overrides, Plugins, Preset, renamed


@app.command("inspect-init", context_settings=OVERRIDES_CONTEXT)
@handles_errors
def inspect_init_command(
    overrides: Overrides = None,
    config: Path | None = typer.Option(None, "--config", help="A complete config (from export-config) to start from."),
    base: str | None = typer.Option(None, help="Detectron2 model-zoo config name or local YAML."),
    preset: Preset = None,
    norm: Norm = None,
    init: Init = None,
    plugin: Plugins = None,
    train_json: Path | None = typer.Option(
        None, help="COCO instances JSON: inspect on its first images (default: a synthetic batch)."
    ),
    train_images: Path | None = typer.Option(None, help="Image folder for --train-json."),
    lr: float | None = typer.Option(None, help="LR of the update ratio lr*|grad|/|w| (default SOLVER.BASE_LR)."),
    compare: list[str] | None = typer.Option(
        None, help="Initializer specs side by side, each for every component: kaiming_normal,xavier_uniform,..."
    ),
    plot: Path | None = typer.Option(None, help="Write activation std and gradient norm by depth to this PNG."),
    json_out: Path | None = typer.Option(None, "--json-out", help="Write the measurements and the verdict as JSON."),
    json_path: Path | None = typer.Option(None, "--json", hidden=True, help="Old name of --json-out."),
    seed: int = typer.Option(0, help="Seed of the weights and the synthetic batch."),
):
    """One forward+backward on CPU: activation, gradient and update scale per stage; exit 1 on a problem."""
    from ..config import load_config
    from ..diagnostics import coco_batch, inspect_init, write_json
    from ..diagnostics import compare as compare_inits
    from ..diagnostics import plot as plot_results

    json_out = renamed(json_out, json_path, "--json-out", "--json")
    if (train_json is None) != (train_images is None):
        raise MaskinitError("--train-json and --train-images go together")
    cfg = load_config(
        path=config, base=base, preset=preset, norm=norm, init=init, overrides=overrides or (), plugins=plugin or ()
    )
    batch = None
    if train_json is not None:
        from ..data.fit import fit_to_data
        from ..run_options import DataOptions

        # the model inspect-init builds is the one train would build on this data (channels, pixel statistics, sizes)
        cfg, _ = fit_to_data(cfg, DataOptions(str(train_json), str(train_images)), keep=set((overrides or [])[::2]))
        cfg, batch = coco_batch(cfg, train_json, train_images)
    if compare:
        results = compare_inits(cfg, compare, lr=lr, batch=batch, seed=seed)
        table = Table(title=f"init comparison (norm {cfg.MASKINIT.NORM}): activation std / gradient norm")
        table.add_column("stage")
        for result in results:
            table.add_column(result.init, justify="right", overflow="fold")
        for index, row in enumerate(results[0].stages):
            cells = [result.stages[index] for result in results]
            table.add_row(row.name, *(f"{number(c.activation_std, 2)} / {number(c.grad_norm, 2)}" for c in cells))
        table.add_row("verdict", *(f"{r.verdict}" + (f" at {r.stage}" if r.stage else "") for r in results))
        console.print(table)
    else:
        results = [inspect_init(cfg, lr=lr, batch=batch, seed=seed)]
        result = results[0]
        table = Table(
            title=f"init {result.init}, norm {result.norm}, lr {result.lr:g} (input std {result.input_std:.3g})"
        )
        for column in ("stage", "act mean", "act std", "std / input", "grad norm", "step / |w|"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for row in result.stages:
            table.add_row(
                row.name,
                number(row.activation_mean),
                number(row.activation_std),
                number(result.relative_std(row)),
                number(row.grad_norm),
                number(row.update_ratio),
            )
        console.print(table)
    for result in results:
        console.print(verdict_line(result), highlight=False, soft_wrap=True)
    if json_out is not None:
        err_console.print(f"wrote {write_json(results if compare else results[0], json_out)}")
    if plot is not None:
        err_console.print(f"wrote {plot_results(results, plot)}")
    raise typer.Exit(0 if all(result.ok for result in results) else 1)
