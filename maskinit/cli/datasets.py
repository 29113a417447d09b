"""Commands on annotations: `check-data`, `analyze-data` (the statistics and the keys fitted to them),
`convert` (any format to COCO) and `split`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import MaskinitError
from ..printing import SEVERITY_STYLES, console, err_console, print_data_lines, print_key_rows, print_written
from .app import app, handles_errors
from .options import FIT_HELP, PRESET_HELP, DataFormat, renamed


def data_files(
    data: Path, format: str | None, val_fraction: float | None = None, split_seed: int = 0
) -> list[tuple[str, Path, Path]]:
    """[(split, COCO file, image folder)] of a --data source (converted into the cache, the format
    printed; not split unless --val-fraction says so)."""
    from ..data.convert import read_source, write_cached

    read = read_source(data, format, val_fraction, split_seed, default_fraction=0.0)
    print_data_lines([line for line in read.lines if "no validation during training" not in line])
    return [(split, json_file, images) for split, (json_file, images) in write_cached(read.dataset).items()]


@app.command("check-data")
@handles_errors
def check_data_command(
    json_file: Path | None = typer.Argument(
        None, metavar="JSON", show_default=False, help="COCO instances JSON to check."
    ),
    json_option: Path | None = typer.Option(None, "--json", hidden=True, help="Old form of the JSON argument."),
    images: Path | None = typer.Option(None, "--images", help="Folder the JSON's file_names are relative to."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Annotations in any format maskinit reads (instead of JSON): each split converted and checked.",
    ),
    format: DataFormat = None,
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Accept fixable problems: show what training with --skip-bad leaves out, exit 0."
    ),
    no_images: bool = typer.Option(False, "--no-images", help="Check the JSON only, not the image files."),
    json_out: Path | None = typer.Option(None, "--json-out", help="Write the report as JSON here."),
):
    """Check a dataset before training; exit 0 ok, 1 fixable problems, 2 fatal ones."""
    json_file = renamed(
        json_file, json_option, "the COCO JSON argument (maskinit check-data JSON --images DIR)", "--json"
    )
    if data is not None:
        if json_file is not None or images is not None:
            raise MaskinitError("--data and a COCO JSON exclude each other: give the data one way")
        checks = [(json_path, folder) for _, json_path, folder in data_files(data, format)]
    else:
        if format is not None:
            raise MaskinitError("--format names the format of --data: give --data PATH")
        if json_file is None:
            raise MaskinitError(
                "the COCO JSON argument (maskinit check-data JSON --images DIR) is required, or --data DIR"
            )
        if images is None and not no_images:
            raise MaskinitError("--images DIR is needed to check the image files (or pass --no-images)")
        checks = [(json_file, images)]
    codes = [
        check_one(path, folder, skip_bad, no_images, json_out if len(checks) == 1 else None) for path, folder in checks
    ]
    raise typer.Exit(max(codes))


def check_one(json_file: Path, images: Path | None, skip_bad: bool, no_images: bool, json_out: Path | None) -> int:
    """`check-data` of one COCO file: the table, the counts, the verdict; its exit code."""
    from ..data.validate import check_coco, enforce_data_policy

    report = check_coco(json_file, images, check_images=not no_images)
    if json_out is not None:
        import json

        from ..atomic import write_atomically

        try:
            write_atomically(json_out, json.dumps(report.to_dict(), indent=2))
        except OSError as error:
            raise MaskinitError(f"cannot write {json_out}: {error.strerror}") from error
    if report.fatal:
        enforce_data_policy(report, skip_bad)  # raises: one line naming every fatal kind
    if report.problems:
        table = Table(title=f"check-data {escape(str(json_file))}")
        for column in ("kind", "severity", "count", "examples"):
            table.add_column(column, justify="right" if column == "count" else "left", overflow="fold")
        for problem in report.problems.values():
            style = SEVERITY_STYLES[problem.severity]
            table.add_row(
                escape(problem.label),
                f"[{style}]{problem.severity}[/]",
                str(problem.count),
                escape("; ".join(problem.examples)),
            )
        console.print(table)
    checked = "JSON and image files" if report.images_checked else "JSON only, image files not checked"
    console.print(
        f"{report.num_images} images, {report.num_annotations} annotations, "
        f"{report.num_categories} categories ({checked})",
        highlight=False,
    )
    if json_out is not None:
        err_console.print(f"wrote {json_out}")
    if report.ok:
        console.print("[green]ok[/]: nothing stops training")
        return 0
    if skip_bad:
        for line in enforce_data_policy(report, skip_bad=True):
            console.print(escape(line), highlight=False, soft_wrap=True)
        return 0
    console.print(
        f"[yellow]fixable problems[/]: training refuses this data; with --skip-bad it leaves out "
        f"{report.annotations_dropped} annotations and {len(report.bad_image_ids)} images",
        highlight=False,
    )
    return 1


@app.command("analyze-data")
@handles_errors
def analyze_data_command(
    json_file: Path | None = typer.Argument(
        None, metavar="JSON", show_default=False, help="COCO instances JSON of the training set."
    ),
    json_option: Path | None = typer.Option(None, "--json", hidden=True, help="Old form of the JSON argument."),
    images: Path | None = typer.Option(None, "--images", help="Folder the JSON's file_names are relative to."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Annotations in any format maskinit reads (instead of JSON): its training split is measured.",
    ),
    format: DataFormat = None,
    preset: str | None = typer.Option(
        None, help=PRESET_HELP + " The fitted keys are shown against it (default r50-fpn)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A complete config (from export-config) to fit against instead of a preset."
    ),
    sample: int = typer.Option(
        100, help="Images read for the image kind and pixel statistics (a deterministic sample; 0: all)."
    ),
    seed: int = typer.Option(0, help="Seed of the image sample."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write a figure (PNG) of sizes, boxes against anchors, counts, classes and pixels."
    ),
    json_out: Path | None = typer.Option(
        None, "--json-out", help="Write the statistics and the fitted keys as JSON here."
    ),
    fit: str = typer.Option("safe", help=FIT_HELP),
):
    """Measure a COCO training set; show the keys fitted to it (pixel statistics, sizes, anchors...) and their cost."""
    from ..data.analysis import analyze_coco, plot_analysis, write_analysis_json
    from ..data.fit import apply_fits, fit_config, fit_report

    json_file = renamed(
        json_file, json_option, "the COCO JSON argument (maskinit analyze-data JSON --images DIR)", "--json"
    )
    if data is not None:
        if json_file is not None or images is not None:
            raise MaskinitError("--data and a COCO JSON exclude each other: give the data one way")
        _, json_file, images = next(files for files in data_files(data, format) if files[0] == "train")
    elif json_file is None or images is None:
        raise MaskinitError(
            "give the COCO JSON argument and --images DIR (maskinit analyze-data JSON --images DIR), or --data DIR"
        )
    analysis = analyze_coco(json_file, images, sample=sample or None, seed=seed)
    table = Table(title=f"analyze-data {escape(str(json_file))}")
    table.add_column("statistic", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in analysis.summary():
        table.add_row(escape(name), escape(value))
    console.print(table)

    from ..config import load_config  # Detectron2's config (and torch) only for the fitted keys

    cfg = load_config(path=config, preset=preset, overrides=["MASKINIT.FIT", fit])
    fitted, applied = apply_fits(cfg, fit_config(cfg, analysis))
    report = fit_report(cfg, fitted, analysis, applied)
    if report.rows:
        title = f"keys fitted to the data, --fit {fit} (against {config or cfg.MASKINIT.PRESET or 'the config'})"
        print_key_rows(title, report.rows, ("preset", "fitted", "from"), console)
    for line in report.lines():
        console.print(escape(line), highlight=False, soft_wrap=True)
    if json_out is not None:
        err_console.print(f"wrote {write_analysis_json(json_out, analysis, report.rows, report.to_dict())}")
    if plot is not None:
        err_console.print(f"wrote {plot_analysis(plot, analysis, cfg, {f.key: f.value for f in applied})}")


@app.command("convert")
@handles_errors
def convert_command(
    source: Path = typer.Argument(
        ..., metavar="SRC", help="Annotations in any format maskinit reads (a folder, data.yaml, JSON or XML file)."
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="The COCO folder to write (new or empty): train.json, val.json, images/ with --copy-images.",
    ),
    format: DataFormat = None,
    val_fraction: float | None = typer.Option(
        None,
        "--val-fraction",
        help="Hold back this share of a one-split source's images as val.json (seeded, by image).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --val-fraction split."),
    copy_images: bool = typer.Option(
        False, "--copy-images", help="Copy the pictures under OUTPUT/images/ (default: referenced where they are)."
    ),
):
    """Convert annotations to a checked COCO folder (train.json, val.json): all of it or nothing is written."""
    from ..data.convert import convert

    written = convert(source, output, format, val_fraction, seed, copy_images)
    print_written(written)
    console.print(
        f"train on it with: maskinit train --data {escape(str(written.out))}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(0 if all(report.ok for report in written.reports.values()) else 1)


@app.command("split")
@handles_errors
def split_command(
    json_file: Path = typer.Argument(..., metavar="COCO_JSON", help="The COCO instances JSON to split."),
    images: Path = typer.Option(..., "--images", help="Folder the JSON's file_names are relative to."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="The folder to write (new or empty): train.json and val.json."
    ),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of the images in val.json."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split: the same seed gives the same split."),
):
    """Split a COCO set by image (seeded), every class in both parts where it can be."""
    from ..data.convert import split_file

    written = split_file(json_file, images, output, val_fraction, seed)
    print_written(written)
