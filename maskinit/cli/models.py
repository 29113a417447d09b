"""Commands on a trained model: `eval` (COCO AP), `predict` (images, folders, globs, videos) and `export`
(TorchScript, ONNX)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import MaskinitError
from ..printing import console, err_console, print_ap_table, summary_table
from .app import app, handles_errors
from .options import DataFormat, Plugins, SplitSeed, data_options, renamed, resolved_data


@app.command("eval")
@handles_errors
def eval_command(
    run_dir: Path | None = typer.Argument(
        None,
        metavar="[RUN_DIR]",
        show_default=False,
        help="A trained run's folder: its config.yaml, model_final.pth and the data it validated on.",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="config.yaml of the trained run (default RUN_DIR/config.yaml)."
    ),
    weights: Path | None = typer.Option(None, "--weights", help="Checkpoint (default RUN_DIR/model_final.pth)."),
    val_json: str | None = typer.Option(None, help="COCO instances JSON to evaluate on."),
    val_images: str | None = typer.Option(None, help="Image folder for --val-json."),
    dataset: str | None = typer.Option(None, help="A dataset name Detectron2 registers (e.g. coco_2017_val)."),
    data: Path | None = typer.Option(
        None, "--data", help="Annotations in any format maskinit reads: its val split (or all of it) is evaluated."
    ),
    format: DataFormat = None,
    val_fraction: float | None = typer.Option(
        None,
        "--val-fraction",
        help=(
            "Evaluate on the part of a one-split --data source that train held back with this fraction (and "
            "--split-seed)."
        ),
    ),
    split_seed: SplitSeed = 0,
    device: str | None = typer.Option(None, help="cpu or cuda."),
    num_gpus: int = typer.Option(1, help="Processes (GPUs, or CPU processes over gloo)."),
    json_out: Path | None = typer.Option(None, help="Write Detectron2's result dict here."),
    vis_dir: Path | None = typer.Option(None, help="Write ground truth | prediction PNGs here."),
    vis_count: int = typer.Option(8, help="How many images --vis-dir draws."),
    plugin: Plugins = None,
    skip_bad: bool = typer.Option(False, help="Drop bad annotations and images instead of refusing the data."),
):
    """COCO box and mask AP of a trained model: `maskinit eval RUN_DIR` on the data the run validated on."""
    from ..config import load_config
    from ..data.sources import evaluation_data, recorded_data, validate_data
    from ..devices import with_device
    from ..evaluation import evaluate_run

    config, weights = run_files(run_dir, config, weights)
    cfg = with_device(load_config(path=config, plugins=plugin or ()), device, num_gpus)  # before any data work
    given = data_options(
        data,
        format,
        val_fraction if val_fraction is not None else (0.0 if data else None),
        split_seed,
        val_json=val_json,
        val_images=val_images,
        dataset=dataset,
    )
    if given == type(given)():  # no data options: the data the run validated on, as its config records it
        recorded = recorded_data(cfg)
        if recorded is not None:
            given = evaluation_data(resolved_data(recorded), str(config))
    elif data is not None:
        given = evaluation_data(resolved_data(given), str(data), whole_if_one_split=True)
    checked = validate_data(given, skip_bad)
    for line in checked.notes:
        err_console.print(line)
    results = evaluate_run(
        cfg,
        weights,
        checked.data,
        device=device,
        num_gpus=num_gpus,
        json_out=json_out,
        vis_dir=vis_dir,
        vis_count=vis_count,
    )
    print_ap_table(results)
    if json_out:
        console.print(f"results in {json_out}")
    if vis_dir:
        console.print(f"drawings in {vis_dir}")


def run_files(run_dir: Path | None, config: Path | None, weights: Path | None) -> tuple[Path, Path]:
    """config.yaml and the weights of a run: given, or found in RUN_DIR (model_final.pth)."""
    if run_dir is not None:
        if not run_dir.is_dir():
            raise MaskinitError(f"run folder {run_dir} not found")
        config = config or run_dir / "config.yaml"
        weights = weights or run_dir / "model_final.pth"
        if not Path(config).is_file():
            raise MaskinitError(f"{run_dir} holds no config.yaml: not a maskinit run folder (or give --config)")
    if config is None or weights is None:
        raise MaskinitError("give a run folder (maskinit eval RUN_DIR) or --config and --weights")
    return Path(config), Path(weights)


MODEL_ARGUMENT_HELP = "A run folder (its config.yaml and model_final.pth) or a file from maskinit export."


@app.command()
@handles_errors
def predict(
    model: Path | None = typer.Argument(
        None, metavar="[RUN_DIR|EXPORTED]", show_default=False, help=MODEL_ARGUMENT_HELP
    ),
    config: Path | None = typer.Option(None, "--config", help="config.yaml of the trained run (with --weights)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Checkpoint (e.g. model_final.pth) or a file from maskinit export."
    ),
    input: str = typer.Option(
        ..., "--input", help="An image, a folder, a glob ('scans/**/*.tif', quoted), a .txt list of paths, or a video."
    ),
    recursive: bool = typer.Option(
        False, "--recursive", help="With a folder as --input: also the images in its subfolders."
    ),
    every: int = typer.Option(
        1, "--every", help="With a video as --input: every Nth frame (outputs named by frame index)."
    ),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", show_default=False, help="Folder for drawings and predictions.json (required)."
    ),
    output: Path | None = typer.Option(None, "--output", hidden=True, help="Old name of --output-dir."),
    score_threshold: float = typer.Option(0.5, help="Keep instances scoring at least this."),
    format: str = typer.Option(
        "coco",
        "--format",
        help=(
            "coco: predictions.json (RLE masks); label-image: labels/NAME.png (16-bit instance labels) + classes.json; "
            "yolo: labels/NAME.txt (YOLO-seg) + classes.txt."
        ),
    ),
    device: str | None = typer.Option(
        None, help="cpu or cuda (a checkpoint's model; an exported one runs on the CPU)."
    ),
    threads: int | None = typer.Option(None, help="Threads of an exported model's runtime (onnxruntime or torch)."),
    plugin: Plugins = None,
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."
    ),
):
    """Predict instances on images or video frames: PNG drawings, and COCO JSON, label images or YOLO-seg."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..predict import resolve_model
    from ..visualize import predict as run_prediction

    output_dir = renamed(output_dir, output, "--output-dir", "--output", required=True)
    if not 0 <= score_threshold <= 1:
        raise MaskinitError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if threads is not None and threads < 1:
        raise MaskinitError(f"--threads must be at least 1, got {threads}")
    if device:
        from ..devices import DEVICES, check_device

        if device not in DEVICES:
            raise MaskinitError(f"--device must be cpu or cuda, got {device!r}")
        check_device(device)
    source = resolve_model(model, config, weights)
    cfg = None
    if not source.exported:
        from ..config import load_config
        from ..devices import with_device

        cfg = with_device(load_config(path=source.config, plugins=plugin or ()), device)
    rows: list[dict] = []
    show_bar = err_console.is_terminal if progress is None else progress
    bar = Progress(
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        transient=True,
        disable=not show_bar,
    )
    task = bar.add_task("", total=None)

    def advance(row: dict, done: int, total: int | None) -> None:
        rows.append(row)
        bar.update(task, completed=done, total=total, description=escape(row["file"]))

    with bar:
        path = run_prediction(
            cfg,
            source.weights,
            input,
            output_dir,
            score_threshold=score_threshold,
            recursive=recursive,
            every=every,
            progress=advance,
            threads=threads,
            output_format=format,
        )
    console.print(summary_table(rows))
    done = [row for row in rows if "error" not in row]
    seconds = sum(row["seconds"] for row in done)
    rate = f", {len(done) / seconds:.1f} images/s" if seconds > 0 else ""
    console.print(
        f"{len(done)} images, {sum(row['instances'] for row in done)} instances"
        f"{f', {len(rows) - len(done)} skipped' if len(rows) > len(done) else ''}{rate}; predictions in {path}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("export")
@handles_errors
def export_command(
    run: Path | None = typer.Argument(
        None, metavar="[RUN_DIR]", show_default=False, help="A run folder (its config.yaml and model_final.pth)."
    ),
    config: Path | None = typer.Option(None, "--config", help="config.yaml of the trained run (with --weights)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Checkpoint (default: the run folder's model_final.pth)."
    ),
    format: str = typer.Option(..., "--format", help="torchscript or onnx."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="The file to write; its settings also go beside it as FILE.json."
    ),
    score_threshold: float = typer.Option(
        0.5, help="The exported model's default score threshold (an input of the graph)."
    ),
    no_check: bool = typer.Option(
        False, "--no-check", help="Write without comparing the exported model with Detectron2's."
    ),
    plugin: Plugins = None,
):
    """Export a trained model as TorchScript or ONNX, to run without Detectron2 (maskinit.deploy, docs/deploy.md)."""
    from ..config import load_config
    from ..export import export_model
    from ..predict import resolve_model

    source = resolve_model(run, config, weights)
    if source.exported:
        raise MaskinitError(f"{source.weights} is already an exported model")
    cfg = load_config(path=source.config, plugins=plugin or ())
    result = export_model(
        cfg, source.weights, format.lower(), output, score_threshold=score_threshold, check=not no_check
    )
    info, meta = result.metadata["input"], result.metadata
    table = Table(title=f"exported {escape(str(result.path))}")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("format", f"{result.format} ({result.path.stat().st_size / 2**20:.1f} MiB)"),
        ("weights", f"{meta['weights']['file']}{' (weight average)' if meta['weights']['weight_average'] else ''}"),
        (
            "input",
            (
                f"{info['channels']} channel{'s' if info['channels'] != 1 else ''} ({info['channel_order']}), "
                f"shorter side {info['min_size']}, longer at most {info['max_size']}"
            ),
        ),
        (
            "pixel mean / std",
            f"{[round(v, 2) for v in info['pixel_mean']]} / {[round(v, 2) for v in info['pixel_std']]}",
        ),
        ("classes", ", ".join(f"{c['name']} ({c['id']})" for c in meta["classes"])),
        ("score threshold", f"{meta['score_threshold']:g} (default; the runner can pass another)"),
    ]
    if result.checks:
        worst = max(check["box"] for check in result.checks)
        rows.append(
            (
                "checked",
                (
                    f"{len(result.checks)} runs on generated images against Detectron2: "
                    f"{sum(c['detections'] for c in result.checks)} detections, boxes within {worst:.1e} of the image"
                ),
            )
        )
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    console.print(f"settings beside it in {result.metadata_path}", highlight=False, soft_wrap=True)
