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
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import Interrupted, MaskinitError, exit_code, signal_name
from .printing import (
    SEVERITY_STYLES,
    ap_text,
    console,
    err_console,
    number,
    param_text,
    print_ap_table,
    print_data_lines,
    print_key_rows,
    print_plan,
    print_trials_table,
    print_written,
    summary_table,
    verdict_line,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train Mask R-CNN from scratch on Detectron2.",
    pretty_exceptions_enable=False,
)
STATE = {"debug": False}
# detectron2.model_zoo imports pkg_resources; setuptools<81 is pinned, its notice is noise here.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(command):
    """Turn `MaskinitError` (and bad files) into one red line and the exit code of its kind (`EXIT_CODES`)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if not STATE["debug"]:
            warnings.filterwarnings("ignore")
        try:
            return command(*args, **kwargs)
        except MaskinitError as error:
            if STATE["debug"]:
                raise
            fail(str(error), exit_code(error))
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (see `main`)
            if STATE["debug"]:
                raise
            fail(f"interrupted by {signal_name(interrupt)}", exit_code(interrupt))

    return wrapper


def _terminate(signum, frame):
    raise Interrupted("SIGTERM")


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
    # SIGTERM stops a command as Ctrl-C does, so that it too ends with one line saying so
    signal.signal(signal.SIGTERM, _terminate)
    if not STATE["debug"]:
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


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


FIT_HELP = ("Fit the config to your training data: safe (default: pixel statistics, anchors, counts; a larger input or "
            "RoI batch only within 1.2x the preset's s/iter), full (the input and RoIs the objects need, at any cost), off.")


PRESET_HELP = "Named starting point under configs/ (r50-fpn, tiny, ...)."
RECIPE_HELP = "Published from-scratch recipe under configs/recipes/, in place of --preset (see `maskinit list`)."
NORM_HELP = "Norm variant NAME[:key=value] (GN, GNWS, SyncBN, BN, naiveSyncBN, none)."
INIT_HELP = "Initializer NAME[:key=value] (kaiming_normal, xavier_uniform, c2, ...)."
PLUGIN_HELP = "Python module (or .py file) registering initializers/norms; repeatable."
OVERRIDES_HELP = "Trailing KEY VALUE pairs overriding config keys, as Detectron2's opts."
# Commands with trailing KEY VALUE overrides: a negative value (`SOLVER.MAX_ITER -1`) is an argument, not an option.
OVERRIDES_CONTEXT = {"ignore_unknown_options": True}
DATA_HELP = ("Your annotations: a folder (or data.yaml) in any format maskinit reads: COCO, label images, one mask per "
             "instance, YOLO-seg, LabelMe, VIA, CVAT, Pascal VOC; the format is detected (docs/data-formats.md).")
FORMAT_HELP = "The format of --data, when detection cannot tell: coco, label-image, instance-masks, yolo, labelme, via, cvat, voc."
VAL_FRACTION_HELP = ("Share of the images of a --data source with one split held back for validation (seeded, by image; "
                     "default 0.2; 0: none); a source with a val split keeps it.")
SPLIT_SEED_HELP = "Seed of the --val-fraction split (the same seed holds back the same images)."
# Options several commands share, declared once (typer reads the help and the flag from the annotation).
Overrides = Annotated[Optional[List[str]], typer.Argument(help=OVERRIDES_HELP)]
Preset = Annotated[Optional[str], typer.Option(help=PRESET_HELP)]
Norm = Annotated[Optional[str], typer.Option(help=NORM_HELP)]
Init = Annotated[Optional[str], typer.Option(help=INIT_HELP)]
Plugins = Annotated[Optional[List[str]], typer.Option(help=PLUGIN_HELP)]
DataFormat = Annotated[Optional[str], typer.Option("--format", help=FORMAT_HELP)]
SplitSeed = Annotated[int, typer.Option("--split-seed", help=SPLIT_SEED_HELP)]
IMS_PER_BATCH_HELP = ("Total batch; iterations rescale against it, the LR linearly for SGD and by the "
                      "square root for Adam/AdamW.")


def renamed(value, old_value, name: str, old_name: str, required: bool = False):
    """The value given under an option's name or under its old, hidden one (not two different ones)."""
    if value is not None and old_value is not None and value != old_value:
        raise MaskinitError(f"{old_name} is the old name of {name}: give it once")
    value = old_value if value is None else value
    if value is None and required:
        raise MaskinitError(f"{name} is required")
    return value


@app.command("export-config", context_settings=OVERRIDES_CONTEXT)
@handles_errors
def export_config_command(
    overrides: Overrides = None,
    config: Optional[Path] = typer.Option(None, "--config", help="A complete config (from export-config) to start from."),
    base: Optional[str] = typer.Option(None, help="Detectron2 model-zoo config name or local YAML (default: Mask R-CNN R50-FPN 3x); a stated base keeps its backbone (depth, groups, width)."),
    preset: Preset = None,
    recipe: Optional[str] = typer.Option(None, help=RECIPE_HELP),
    norm: Norm = None,
    init: Init = None,
    schedule: Optional[str] = typer.Option(None, help="Detectron2 schedule 1x|3x|6x|9x (1x = 90k iterations at batch 16)."),
    ims_per_batch: Optional[int] = typer.Option(None, help=IMS_PER_BATCH_HELP),
    num_classes: Optional[int] = typer.Option(None, help="Number of object classes."),
    plugin: Plugins = None,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    plain: bool = typer.Option(False, help="Only keys stock Detectron2 knows (for tools/train_net.py)."),
    explain: bool = typer.Option(False, help="Print every key that differs from the base, with the reason."),
):
    """Write a complete Detectron2 YAML for training Mask R-CNN from scratch."""
    from .config import build_config, export_config

    options = dict(
        path=config, base=base, preset=preset, norm=norm, init=init, overrides=overrides or (), schedule=schedule,
        ims_per_batch=ims_per_batch, num_classes=num_classes, plugins=plugin or (), recipe=recipe,
    )
    text = export_config(output, plain=plain, **options)
    if explain:
        # piped, only the key lines: `--explain 2> explain.txt` is one line per key
        print_key_rows("keys that differ from the base config" if err_console.is_terminal else "",
                       build_config(**options).differences(), ("base", "maskinit", "why"), err_console)
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
    from .recipes import RECIPES, list_presets, list_recipes
    from .initializers import INITIALIZER_REGISTRY
    from .norms import NORM_REGISTRY
    from .plugins import load_plugins

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


def data_options(data=None, format=None, val_fraction=None, split_seed=0, **paths):
    """The data options of a command: `--data` (with --format, --val-fraction, --split-seed) or the COCO
    paths and registered names; `--data` and the others exclude each other."""
    from .run_options import DataOptions

    given = {name: value for name, value in paths.items() if value}
    if data is None:
        if format is not None:
            raise MaskinitError("--format names the format of --data: give --data PATH")
        if val_fraction is not None:
            raise MaskinitError("--val-fraction splits a --data source with one split: give --data PATH")
        return DataOptions(**{name: str(value) for name, value in given.items()})
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise MaskinitError(f"--data and {flags} exclude each other: give the data one way")
    return DataOptions(source=str(data), format=format, val_fraction=val_fraction, split_seed=split_seed)


def resolved_data(data):
    """`data` with a --data source converted to COCO files (the format and the split printed)."""
    from .data.convert import resolve_source

    resolved = resolve_source(data)
    print_data_lines(resolved.notes)
    return resolved.data


def train_setup(overrides, config, preset, recipe, norm, init, schedule, plugin, train_json, train_images, val_json,
                val_images, dataset, val_dataset, data=None, format=None, val_fraction=None, split_seed=0,
                from_scratch=True, **run_options):
    """What `train` and `tune` share: the config (the machine's default preset when none is named),
    the run options (a --data source converted to COCO files) and the keys the user set explicitly.
    `--resume` without data options or a config continues with the run's own (config.yaml)."""
    from .config import load_config
    from .run_options import TrainOptions

    data_given = data_options(data, format, val_fraction, split_seed, train_json=train_json, train_images=train_images,
                              val_json=val_json, val_images=val_images, dataset=dataset, val_dataset=val_dataset)
    saved = Path(run_options["output_dir"]) / "config.yaml"
    if run_options.get("resume") and saved.is_file():
        from .data.sources import recorded_data

        if not (config or preset or recipe):
            config = saved
        if data_given == type(data_given)():
            data_given = recorded_data(load_config(saved)) or data_given
    if not (config or preset or recipe):
        from .machine import default_preset

        preset, why = default_preset(run_options.get("device"))
        err_console.print(f"[bold]{escape(why)}[/]", highlight=False, soft_wrap=True)
    cfg = load_config(path=config, preset=preset, norm=norm, init=init, overrides=overrides or (), schedule=schedule,
                      plugins=plugin or (), recipe=recipe)
    run_options["output_dir"] = str(run_options["output_dir"])
    duration = run_options.pop("time", None)
    if duration is not None:
        from .budget import parse_duration

        run_options["time_budget"] = parse_duration(duration)
    options = TrainOptions(**run_options, data=resolved_data(data_given))
    return cfg, options, set((overrides or [])[::2])


@app.command(context_settings=OVERRIDES_CONTEXT)
@handles_errors
def train(
    overrides: Overrides = None,
    from_scratch: bool = typer.Option(True, "--from-scratch", show_default=False, help="Always on, with or without the flag: maskinit only trains from random weights and never loads pretrained ones (there is no --no-from-scratch)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config from export-config."),
    preset: Preset = None,
    recipe: Optional[str] = typer.Option(None, help=RECIPE_HELP),
    norm: Norm = None,
    init: Init = None,
    schedule: Optional[str] = typer.Option(None, help="Detectron2 schedule 1x|3x|6x|9x."),
    plugin: Plugins = None,
    train_json: Optional[str] = typer.Option(None, help="COCO instances JSON for training."),
    train_images: Optional[str] = typer.Option(None, help="Image folder for --train-json."),
    val_json: Optional[str] = typer.Option(None, help="COCO instances JSON for evaluation."),
    val_images: Optional[str] = typer.Option(None, help="Image folder for --val-json."),
    dataset: Optional[str] = typer.Option(None, help="A dataset name Detectron2 registers (e.g. coco_2017_train)."),
    val_dataset: Optional[str] = typer.Option(None, help="Registered dataset name to evaluate on (with --dataset)."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    format: DataFormat = None,
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help=VAL_FRACTION_HELP),
    split_seed: SplitSeed = 0,
    output_dir: Path = typer.Option(Path("output"), help="Where config, checkpoints, metrics and eval go."),
    max_iter: Optional[int] = typer.Option(None, help="Iterations; LR steps and warmup rescale unless given explicitly."),
    ims_per_batch: Optional[int] = typer.Option(None, help=IMS_PER_BATCH_HELP),
    lr: Optional[float] = typer.Option(None, help="Base learning rate."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda."),
    num_gpus: int = typer.Option(1, help="Processes per machine (GPUs, or CPU processes over gloo with --device cpu)."),
    num_machines: int = typer.Option(1, help="Machines."),
    machine_rank: int = typer.Option(0, help="This machine's rank."),
    dist_url: str = typer.Option("auto", help="Rendezvous URL for several processes (tcp://HOST:PORT of machine 0)."),
    dist_timeout: float = typer.Option(1800, help="Seconds the processes wait for each other (joining, and in collective calls) before the run ends saying which are missing."),
    resume: bool = typer.Option(False, help="Continue the run in --output-dir from its last checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --output-dir: its checkpoints, metrics, log and evaluation are removed (other files stay)."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (bf16 where supported, else fp16; off on CPU)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (per process: seed + rank)."),
    eval_period: Optional[int] = typer.Option(None, help="Evaluate every N iterations (0: only at the end)."),
    checkpoint_period: Optional[int] = typer.Option(None, help="Save a checkpoint every N iterations."),
    optimizer: Optional[str] = typer.Option(None, help="sgd, adam or adamw (the presets use adamw)."),
    lr_schedule: Optional[str] = typer.Option(None, help="step, cosine or plateau."),
    warmup_iters: Optional[int] = typer.Option(None, help="Linear warmup length in iterations."),
    clip_grad: Optional[float] = typer.Option(None, help="Clip the gradient norm at this value."),
    precise_bn: bool = typer.Option(False, help="Recompute BN statistics before each evaluation (BN variants)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    skip_bad: bool = typer.Option(False, help="Drop bad annotations and images (counted in the log) instead of refusing the data."),
    fit: Optional[str] = typer.Option(None, help=FIT_HELP),
    epochs: Optional[float] = typer.Option(None, help="The run's length in passes over the training images (instead of --max-iter)."),
    time: Optional[str] = typer.Option(None, "--time", help="The run's length as training time on this machine (2h, 90m, 1h30m): the iterations that fit at the s/iter measured here first (instead of --max-iter)."),
    launcher: str = typer.Option("none", help="slurm: submit this run as a SLURM job through submitit (one task per GPU; requeued and resumed after preemption); none: run here."),
    nodes: int = typer.Option(1, help="--launcher slurm: nodes of the job."),
    gpus_per_node: int = typer.Option(1, help="--launcher slurm: GPUs (one task each) per node."),
    partition: Optional[str] = typer.Option(None, help="--launcher slurm: the SLURM partition."),
    time_limit: str = typer.Option("1h", help="--launcher slurm: the job's time limit (90m, 24h); the run saves and requeues before it."),
):
    """Train Mask R-CNN from scratch with Detectron2's trainer, then evaluate."""
    params = dict(locals())  # first: locals() are exactly the parameters
    launch = {name: params.pop(name) for name in ("launcher", "nodes", "gpus_per_node", "partition", "time_limit")}
    cfg, options, explicit_keys = train_setup(**params)
    if launch["launcher"] != "none":
        submit_to_slurm(launch, Path(options.output_dir) / "slurm")
        return
    from .train import train as run_training

    summary = run_training(cfg, options, explicit_keys=explicit_keys, announce=print_plan)
    for warning in summary.get("warnings", ()):
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if "eval" in summary:  # every machine prints rank 0's results, whatever folder it was given
        import json

        written = output_dir / "eval.json"
        print_ap_table(json.loads(written.read_text()) if written.is_file() else summary["eval"])
    speed = f"{summary['seconds_per_iter']:.3f} s/iter" if summary.get("seconds_per_iter") else "speed not measured"
    console.print(
        f"trained {summary['iterations']} iterations in {summary['seconds']:.0f} s "
        f"({speed}); from scratch: "
        f"{summary['from_scratch']['pretrained_tensors_loaded']} pretrained tensors loaded"
    )
    console.print(f"outputs in {summary.get('output_dir', output_dir)}/: config.yaml, model_final.pth, metrics.json, eval.json, "
                  "curves.png, run_summary.json")


def submit_to_slurm(launch: dict, folder: Path) -> None:
    """`train --launcher slurm`: the same `maskinit train` arguments, submitted as one SLURM job."""
    import math

    from .budget import parse_duration
    from .slurm import SlurmOptions, submit

    if launch["launcher"] != "slurm":
        raise MaskinitError(f"--launcher {launch['launcher']}: expected slurm or none")
    if "train" not in sys.argv:
        raise MaskinitError("--launcher slurm submits the command line it was given: run it as maskinit train ...")
    minutes = math.ceil(parse_duration(launch["time_limit"]) / 60)
    options = SlurmOptions(nodes=launch["nodes"], gpus_per_node=launch["gpus_per_node"],
                           partition=launch["partition"], time_limit_min=minutes, folder=str(folder))
    job = submit(sys.argv[sys.argv.index("train") + 1:], options)
    console.print(f"submitted SLURM job {job.job_id}: {options.nodes} node(s) x {options.gpus_per_node} task(s), "
                  f"{minutes} min; its logs are in {options.folder}/", highlight=False, soft_wrap=True)


def shares_options(source, exclude=()):
    """Give a command the options of `source` (another command) that it does not declare itself, but
    `exclude`: the shared ones arrive in its `**kwargs`, and are declared (help, defaults) once."""
    import inspect

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        mine = [p for p in own.parameters.values() if p.kind != p.VAR_KEYWORD]
        shared = [p for name, p in inspect.signature(source, eval_str=True).parameters.items()
                  if name not in own.parameters and name not in exclude]
        command.__signature__ = own.replace(parameters=mine + shared)
        return command

    return decorate


# the `train` options a tuning trial cannot take: a trial is one process, and each trial has its own folder
TUNE_EXCLUDED = ("from_scratch", "num_gpus", "num_machines", "machine_rank", "dist_url", "dist_timeout", "overwrite", "time",
                 "split_seed", "launcher", "nodes", "gpus_per_node", "partition", "time_limit")


@app.command("tune", context_settings=OVERRIDES_CONTEXT)
@handles_errors
@shares_options(train, exclude=TUNE_EXCLUDED)
def tune_command(
    trials: Optional[int] = typer.Option(None, help="Finished trials (complete, pruned or failed) the study should have in all, all workers together."),
    timeout: Optional[float] = typer.Option(None, help="Seconds after which no new trial starts (a running one finishes)."),
    search: Optional[List[str]] = typer.Option(None, help="KEY=low:high[:log|:int] or KEY=a,b,c: a config key to search (replaces the default dimension writing KEY); repeatable."),
    search_only: bool = typer.Option(False, help="Search only the --search keys, not the default space (LR, weight decay, warmup, optimizer, clipping)."),
    pruner: str = typer.Option("median", help="median, hyperband or none: stop hopeless trials at an evaluation."),
    baseline: bool = typer.Option(True, help="A new study's first trial runs the config's own values (the preset and your options), so the best is never a config that measured worse than where you started."),
    eval_period: Optional[int] = typer.Option(None, help="Evaluate (and maybe prune) each trial every N iterations (default: a quarter of the run)."),
    val_fraction: Optional[float] = typer.Option(None, help="Score the trials on this share of the training images, held back from their training (seeded split in OUTPUT_DIR/split/FRACTION-seedN/), so the search never selects on the validation set you report on; also tunes a set that has none."),
    storage: Optional[str] = typer.Option(None, help="Study storage several `maskinit tune` workers share: a database URL (postgresql://user:password@host/db with `pip install maskinit[postgres]`, mysql://...; sqlite:///FILE on one machine) or a journal file on a shared filesystem (journal:///PATH, or a path ending .log/.journal). Default: study.db in --output-dir."),
    grace_period: int = typer.Option(180, help="Seconds without a heartbeat after which a running trial's worker is taken for dead: its trial is failed and run again by another worker (any machine)."),
    study_name: Optional[str] = typer.Option(None, help="Study name in --storage (default: the output dir's name)."),
    output_dir: Path = typer.Option(Path("output/tune"), help="The study's folder: trial-NNNN/ per trial, study.db, trials.json, best_config.yaml, plots/."),
    resume: bool = typer.Option(False, help="Continue the study in --output-dir (finished trials are kept; killed ones run again)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes on this machine, one trial each, each on its own GPU (default: one per GPU with CUDA, else 1)."),
    **train_options,
):
    """Search LR, weight decay, warmup, optimizer and clipping (and any --search KEY) with Optuna: each trial is a short maskinit training run."""
    cfg, options, explicit_keys = train_setup(
        **train_options, output_dir=output_dir, eval_period=eval_period, resume=False, overwrite=False,
        num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto",
    )
    from .tune import run_workers, storage_url, study_name_for, study_report, tune

    if workers is None:
        workers = max(1, _gpu_count()) if (options.device or "cuda").startswith("cuda") else 1
    kwargs = dict(explicit_keys=explicit_keys, storage=storage, study_name=study_name, pruner=pruner,
                  default_space=not search_only, grace_period=grace_period)
    if workers != 1:  # run_workers refuses fewer than 1
        def started(index, pid, place, log):
            err_console.print(f"worker {index} ({place}): pid {pid}, log {log}", highlight=False, soft_wrap=True)

        run_workers(workers, sys.argv[1:], output_dir, storage or storage_url(output_dir, None),
                    study_name_for(output_dir, storage, study_name), resume=resume, default_storage=storage is None,
                    device=options.device, gpus=_gpu_count(), grace_period=grace_period, on_start=started)
        result = study_report(cfg, options, search or (), **kwargs)
    else:
        result = tune(cfg, options, search or (), trials, timeout, resume=resume, baseline=baseline,
                      val_fraction=val_fraction, **kwargs)
    for line in result.space:
        err_console.print(f"searched: {escape(line)}", highlight=False, soft_wrap=True)
    print_trials_table(result)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if result.plots:
        console.print(f"plots: {', '.join(str(path) for path in result.plots)}", highlight=False, soft_wrap=True)
    console.print(f"study {result.study_name} in {result.storage}; trials in {output_dir}/trial-NNNN/, table in {output_dir}/trials.json",
                  highlight=False, soft_wrap=True)
    if result.best is None:
        err_console.print("[bold red]no trial completed[/]: nothing to retrain", highlight=False)
        raise typer.Exit(1)
    console.print(f"best: trial {result.best.number}, mask AP {ap_text(result.best.ap)} ({escape(param_text(result.best.params))})",
                  highlight=False, soft_wrap=True)
    console.print(f"best config: {result.best_config}\nretrain with: {result.retrain_command}", highlight=False, soft_wrap=True)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@app.command("inspect-init", context_settings=OVERRIDES_CONTEXT)
@handles_errors
def inspect_init_command(
    overrides: Overrides = None,
    config: Optional[Path] = typer.Option(None, "--config", help="A complete config (from export-config) to start from."),
    base: Optional[str] = typer.Option(None, help="Detectron2 model-zoo config name or local YAML."),
    preset: Preset = None,
    norm: Norm = None,
    init: Init = None,
    plugin: Plugins = None,
    train_json: Optional[Path] = typer.Option(None, help="COCO instances JSON: inspect on its first images (default: a synthetic batch)."),
    train_images: Optional[Path] = typer.Option(None, help="Image folder for --train-json."),
    lr: Optional[float] = typer.Option(None, help="LR of the update ratio lr*|grad|/|w| (default SOLVER.BASE_LR)."),
    compare: Optional[List[str]] = typer.Option(None, help="Initializer specs side by side, each for every component: kaiming_normal,xavier_uniform,..."),
    plot: Optional[Path] = typer.Option(None, help="Write activation std and gradient norm by depth to this PNG."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Write the measurements and the verdict as JSON."),
    json_path: Optional[Path] = typer.Option(None, "--json", hidden=True, help="Old name of --json-out."),
    seed: int = typer.Option(0, help="Seed of the weights and the synthetic batch."),
):
    """One forward+backward on CPU: activation, gradient and update scale per stage; exit 1 on a problem."""
    from .config import load_config
    from .diagnostics import coco_batch, compare as compare_inits, inspect_init, plot as plot_results, write_json

    json_out = renamed(json_out, json_path, "--json-out", "--json")
    if (train_json is None) != (train_images is None):
        raise MaskinitError("--train-json and --train-images go together")
    cfg = load_config(path=config, base=base, preset=preset, norm=norm, init=init, overrides=overrides or (), plugins=plugin or ())
    batch = None
    if train_json is not None:
        from .data.fit import fit_to_data
        from .run_options import DataOptions

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
        table = Table(title=f"init {result.init}, norm {result.norm}, lr {result.lr:g} (input std {result.input_std:.3g})")
        for column in ("stage", "act mean", "act std", "std / input", "grad norm", "step / |w|"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for row in result.stages:
            table.add_row(row.name, number(row.activation_mean), number(row.activation_std),
                          number(result.relative_std(row)), number(row.grad_norm), number(row.update_ratio))
        console.print(table)
    for result in results:
        console.print(verdict_line(result), highlight=False, soft_wrap=True)
    if json_out is not None:
        err_console.print(f"wrote {write_json(results if compare else results[0], json_out)}")
    if plot is not None:
        err_console.print(f"wrote {plot_results(results, plot)}")
    raise typer.Exit(0 if all(result.ok for result in results) else 1)


@app.command("eval")
@handles_errors
def eval_command(
    run_dir: Optional[Path] = typer.Argument(None, metavar="[RUN_DIR]", show_default=False, help="A trained run's folder: its config.yaml, model_final.pth and the data it validated on."),
    config: Optional[Path] = typer.Option(None, "--config", help="config.yaml of the trained run (default RUN_DIR/config.yaml)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint (default RUN_DIR/model_final.pth)."),
    val_json: Optional[str] = typer.Option(None, help="COCO instances JSON to evaluate on."),
    val_images: Optional[str] = typer.Option(None, help="Image folder for --val-json."),
    dataset: Optional[str] = typer.Option(None, help="A dataset name Detectron2 registers (e.g. coco_2017_val)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Annotations in any format maskinit reads: its val split (or all of it) is evaluated."),
    format: DataFormat = None,
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Evaluate on the part of a one-split --data source that train held back with this fraction (and --split-seed)."),
    split_seed: SplitSeed = 0,
    device: Optional[str] = typer.Option(None, help="cpu or cuda."),
    num_gpus: int = typer.Option(1, help="Processes (GPUs, or CPU processes over gloo)."),
    json_out: Optional[Path] = typer.Option(None, help="Write Detectron2's result dict here."),
    vis_dir: Optional[Path] = typer.Option(None, help="Write ground truth | prediction PNGs here."),
    vis_count: int = typer.Option(8, help="How many images --vis-dir draws."),
    plugin: Plugins = None,
    skip_bad: bool = typer.Option(False, help="Drop bad annotations and images instead of refusing the data."),
):
    """COCO box and mask AP of a trained model: `maskinit eval RUN_DIR` on the data the run validated on."""
    from .config import load_config
    from .data.sources import evaluation_data, recorded_data, validate_data
    from .devices import with_device
    from .evaluation import evaluate_run

    config, weights = run_files(run_dir, config, weights)
    cfg = with_device(load_config(path=config, plugins=plugin or ()), device, num_gpus)  # before any data work
    given = data_options(data, format, val_fraction if val_fraction is not None else (0.0 if data else None), split_seed,
                         val_json=val_json, val_images=val_images, dataset=dataset)
    if given == type(given)():  # no data options: the data the run validated on, as its config records it
        recorded = recorded_data(cfg)
        if recorded is not None:
            given = evaluation_data(resolved_data(recorded), str(config))
    elif data is not None:
        given = evaluation_data(resolved_data(given), str(data), whole_if_one_split=True)
    checked = validate_data(given, skip_bad)
    for line in checked.notes:
        err_console.print(line)
    results = evaluate_run(cfg, weights, checked.data, device=device, num_gpus=num_gpus, json_out=json_out, vis_dir=vis_dir, vis_count=vis_count)
    print_ap_table(results)
    if json_out:
        console.print(f"results in {json_out}")
    if vis_dir:
        console.print(f"drawings in {vis_dir}")


def run_files(run_dir: Optional[Path], config: Optional[Path], weights: Optional[Path]) -> tuple[Path, Path]:
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
    model: Optional[Path] = typer.Argument(None, metavar="[RUN_DIR|EXPORTED]", show_default=False, help=MODEL_ARGUMENT_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="config.yaml of the trained run (with --weights)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint (e.g. model_final.pth) or a file from maskinit export."),
    input: str = typer.Option(..., "--input", help="An image, a folder, a glob ('scans/**/*.tif', quoted), a .txt list of paths, or a video."),
    recursive: bool = typer.Option(False, "--recursive", help="With a folder as --input: also the images in its subfolders."),
    every: int = typer.Option(1, "--every", help="With a video as --input: every Nth frame (outputs named by frame index)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", show_default=False, help="Folder for drawings and predictions.json (required)."),
    output: Optional[Path] = typer.Option(None, "--output", hidden=True, help="Old name of --output-dir."),
    score_threshold: float = typer.Option(0.5, help="Keep instances scoring at least this."),
    format: str = typer.Option("coco", "--format", help="coco: predictions.json (RLE masks); label-image: labels/NAME.png (16-bit instance labels) + classes.json; yolo: labels/NAME.txt (YOLO-seg) + classes.txt."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (a checkpoint's model; an exported one runs on the CPU)."),
    threads: Optional[int] = typer.Option(None, help="Threads of an exported model's runtime (onnxruntime or torch)."),
    plugin: Plugins = None,
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
):
    """Predict instances on unlabeled images or video frames: PNG drawings and the predictions as COCO JSON, label images or YOLO-seg."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .predict import resolve_model
    from .visualize import predict as run_prediction

    output_dir = renamed(output_dir, output, "--output-dir", "--output", required=True)
    if not 0 <= score_threshold <= 1:
        raise MaskinitError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if threads is not None and threads < 1:
        raise MaskinitError(f"--threads must be at least 1, got {threads}")
    if device:
        from .devices import DEVICES, check_device

        if device not in DEVICES:
            raise MaskinitError(f"--device must be cpu or cuda, got {device!r}")
        check_device(device)
    source = resolve_model(model, config, weights)
    cfg = None
    if not source.exported:
        from .config import load_config
        from .devices import with_device

        cfg = with_device(load_config(path=source.config, plugins=plugin or ()), device)
    rows: list[dict] = []
    show_bar = err_console.is_terminal if progress is None else progress
    bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.description}"), console=err_console, transient=True, disable=not show_bar)
    task = bar.add_task("", total=None)

    def advance(row: dict, done: int, total: Optional[int]) -> None:
        rows.append(row)
        bar.update(task, completed=done, total=total, description=escape(row["file"]))

    with bar:
        path = run_prediction(cfg, source.weights, input, output_dir, score_threshold=score_threshold,
                              recursive=recursive, every=every, progress=advance, threads=threads,
                              output_format=format)
    console.print(summary_table(rows))
    done = [row for row in rows if "error" not in row]
    seconds = sum(row["seconds"] for row in done)
    rate = f", {len(done) / seconds:.1f} images/s" if seconds > 0 else ""
    console.print(f"{len(done)} images, {sum(row['instances'] for row in done)} instances"
                  f"{f', {len(rows) - len(done)} skipped' if len(rows) > len(done) else ''}{rate}; predictions in {path}",
                  highlight=False, soft_wrap=True)


@app.command("export")
@handles_errors
def export_command(
    run: Optional[Path] = typer.Argument(None, metavar="[RUN_DIR]", show_default=False, help="A run folder (its config.yaml and model_final.pth)."),
    config: Optional[Path] = typer.Option(None, "--config", help="config.yaml of the trained run (with --weights)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint (default: the run folder's model_final.pth)."),
    format: str = typer.Option(..., "--format", help="torchscript or onnx."),
    output: Path = typer.Option(..., "-o", "--output", help="The file to write; its settings also go beside it as FILE.json."),
    score_threshold: float = typer.Option(0.5, help="The exported model's default score threshold (an input of the graph)."),
    no_check: bool = typer.Option(False, "--no-check", help="Write without comparing the exported model with Detectron2's."),
    plugin: Plugins = None,
):
    """Export a trained model as TorchScript or ONNX, to run without Detectron2 (maskinit.deploy, docs/deploy.md)."""
    from .config import load_config
    from .export import export_model
    from .predict import resolve_model

    source = resolve_model(run, config, weights)
    if source.exported:
        raise MaskinitError(f"{source.weights} is already an exported model")
    cfg = load_config(path=source.config, plugins=plugin or ())
    result = export_model(cfg, source.weights, format.lower(), output, score_threshold=score_threshold, check=not no_check)
    info, meta = result.metadata["input"], result.metadata
    table = Table(title=f"exported {escape(str(result.path))}")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("format", f"{result.format} ({result.path.stat().st_size / 2**20:.1f} MiB)"),
        ("weights", f"{meta['weights']['file']}{' (weight average)' if meta['weights']['weight_average'] else ''}"),
        ("input", (f"{info['channels']} channel{'s' if info['channels'] != 1 else ''} ({info['channel_order']}), "
                   f"shorter side {info['min_size']}, longer at most {info['max_size']}")),
        ("pixel mean / std", f"{[round(v, 2) for v in info['pixel_mean']]} / {[round(v, 2) for v in info['pixel_std']]}"),
        ("classes", ", ".join(f"{c['name']} ({c['id']})" for c in meta["classes"])),
        ("score threshold", f"{meta['score_threshold']:g} (default; the runner can pass another)"),
    ]
    if result.checks:
        worst = max(check["box"] for check in result.checks)
        rows.append(("checked", (f"{len(result.checks)} runs on generated images against Detectron2: "
                                 f"{sum(c['detections'] for c in result.checks)} detections, boxes within {worst:.1e} of the image")))
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    console.print(f"settings beside it in {result.metadata_path}", highlight=False, soft_wrap=True)


def data_files(data: Path, format: Optional[str], val_fraction: Optional[float] = None, split_seed: int = 0) -> list[tuple[str, Path, Path]]:
    """[(split, COCO file, image folder)] of a --data source (converted into the cache, the format
    printed; not split unless --val-fraction says so)."""
    from .data.convert import read_source, write_cached

    read = read_source(data, format, val_fraction, split_seed, default_fraction=0.0)
    print_data_lines([line for line in read.lines if "no validation during training" not in line])
    return [(split, json_file, images) for split, (json_file, images) in write_cached(read.dataset).items()]


@app.command("check-data")
@handles_errors
def check_data_command(
    json_file: Optional[Path] = typer.Argument(None, metavar="JSON", show_default=False, help="COCO instances JSON to check."),
    json_option: Optional[Path] = typer.Option(None, "--json", hidden=True, help="Old form of the JSON argument."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder the JSON's file_names are relative to."),
    data: Optional[Path] = typer.Option(None, "--data", help="Annotations in any format maskinit reads (instead of JSON): each split converted and checked."),
    format: DataFormat = None,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Accept fixable problems: show what training with --skip-bad leaves out, exit 0."),
    no_images: bool = typer.Option(False, "--no-images", help="Check the JSON only, not the image files."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Write the report as JSON here."),
):
    """Check a dataset before training; exit 0 ok, 1 fixable problems, 2 fatal ones."""
    json_file = renamed(json_file, json_option, "the COCO JSON argument (maskinit check-data JSON --images DIR)", "--json")
    if data is not None:
        if json_file is not None or images is not None:
            raise MaskinitError("--data and a COCO JSON exclude each other: give the data one way")
        checks = [(json_path, folder) for _, json_path, folder in data_files(data, format)]
    else:
        if format is not None:
            raise MaskinitError("--format names the format of --data: give --data PATH")
        if json_file is None:
            raise MaskinitError("the COCO JSON argument (maskinit check-data JSON --images DIR) is required, or --data DIR")
        if images is None and not no_images:
            raise MaskinitError("--images DIR is needed to check the image files (or pass --no-images)")
        checks = [(json_file, images)]
    codes = [check_one(path, folder, skip_bad, no_images, json_out if len(checks) == 1 else None) for path, folder in checks]
    raise typer.Exit(max(codes))


def check_one(json_file: Path, images: Optional[Path], skip_bad: bool, no_images: bool, json_out: Optional[Path]) -> int:
    """`check-data` of one COCO file: the table, the counts, the verdict; its exit code."""
    from .data.validate import check_coco, enforce_data_policy

    report = check_coco(json_file, images, check_images=not no_images)
    if json_out is not None:
        import json

        from .atomic import write_atomically

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
            table.add_row(escape(problem.label), f"[{style}]{problem.severity}[/]", str(problem.count),
                          escape("; ".join(problem.examples)))
        console.print(table)
    checked = "JSON and image files" if report.images_checked else "JSON only, image files not checked"
    console.print(f"{report.num_images} images, {report.num_annotations} annotations, "
                  f"{report.num_categories} categories ({checked})", highlight=False)
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
    json_file: Optional[Path] = typer.Argument(None, metavar="JSON", show_default=False, help="COCO instances JSON of the training set."),
    json_option: Optional[Path] = typer.Option(None, "--json", hidden=True, help="Old form of the JSON argument."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder the JSON's file_names are relative to."),
    data: Optional[Path] = typer.Option(None, "--data", help="Annotations in any format maskinit reads (instead of JSON): its training split is measured."),
    format: DataFormat = None,
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP + " The fitted keys are shown against it (default r50-fpn)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A complete config (from export-config) to fit against instead of a preset."),
    sample: int = typer.Option(100, help="Images read for the image kind and pixel statistics (a deterministic sample; 0: all)."),
    seed: int = typer.Option(0, help="Seed of the image sample."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a figure (PNG) of sizes, boxes against anchors, counts, classes and pixels."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Write the statistics and the fitted keys as JSON here."),
    fit: str = typer.Option("safe", help=FIT_HELP),
):
    """Measure a COCO training set and show the config keys fitted to it (pixel mean/std, sizes, anchors, ...) with their cost."""
    from .data.analysis import analyze_coco, plot_analysis, write_analysis_json
    from .data.fit import apply_fits, fit_config, fit_report

    json_file = renamed(json_file, json_option, "the COCO JSON argument (maskinit analyze-data JSON --images DIR)", "--json")
    if data is not None:
        if json_file is not None or images is not None:
            raise MaskinitError("--data and a COCO JSON exclude each other: give the data one way")
        _, json_file, images = next(files for files in data_files(data, format) if files[0] == "train")
    elif json_file is None or images is None:
        raise MaskinitError("give the COCO JSON argument and --images DIR (maskinit analyze-data JSON --images DIR), or --data DIR")
    analysis = analyze_coco(json_file, images, sample=sample or None, seed=seed)
    table = Table(title=f"analyze-data {escape(str(json_file))}")
    table.add_column("statistic", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in analysis.summary():
        table.add_row(escape(name), escape(value))
    console.print(table)

    from .config import load_config  # Detectron2's config (and torch) only for the fitted keys

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
    source: Path = typer.Argument(..., metavar="SRC", help="Annotations in any format maskinit reads (a folder, data.yaml, JSON or XML file)."),
    output: Path = typer.Option(..., "-o", "--output", help="The COCO folder to write (new or empty): train.json, val.json, images/ with --copy-images."),
    format: DataFormat = None,
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Hold back this share of a one-split source's images as val.json (seeded, by image)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --val-fraction split."),
    copy_images: bool = typer.Option(False, "--copy-images", help="Copy the pictures under OUTPUT/images/ (default: referenced where they are)."),
):
    """Convert annotations to a checked COCO folder (train.json, val.json): all of it or nothing is written."""
    from .data.convert import convert

    written = convert(source, output, format, val_fraction, seed, copy_images)
    print_written(written)
    console.print(f"train on it with: maskinit train --data {escape(str(written.out))}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if all(report.ok for report in written.reports.values()) else 1)


@app.command("split")
@handles_errors
def split_command(
    json_file: Path = typer.Argument(..., metavar="COCO_JSON", help="The COCO instances JSON to split."),
    images: Path = typer.Option(..., "--images", help="Folder the JSON's file_names are relative to."),
    output: Path = typer.Option(..., "-o", "--output", help="The folder to write (new or empty): train.json and val.json."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of the images in val.json."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split: the same seed gives the same split."),
):
    """Split a COCO set by image (seeded), every class in both parts where it can be."""
    from .data.convert import split_file

    written = split_file(json_file, images, output, val_fraction, seed)
    print_written(written)
    console.print(f"train on it with: maskinit train --data {escape(str(written.out))}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
