"""Commands that train: `train` (here or submitted to SLURM) and `tune`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from ..errors import MaskinitError
from ..printing import (
    ap_text,
    console,
    err_console,
    param_text,
    print_ap_table,
    print_plan,
    print_trials_table,
)
from .app import app, handles_errors
from .options import (
    DATA_HELP,
    FIT_HELP,
    IMS_PER_BATCH_HELP,
    OVERRIDES_CONTEXT,
    RECIPE_HELP,
    VAL_FRACTION_HELP,
    DataFormat,
    Init,
    Norm,
    Overrides,
    Plugins,
    Preset,
    SplitSeed,
    data_options,
    resolved_data,
    shares_options,
)


def train_setup(
    overrides,
    config,
    preset,
    recipe,
    norm,
    init,
    schedule,
    plugin,
    train_json,
    train_images,
    val_json,
    val_images,
    dataset,
    val_dataset,
    data=None,
    format=None,
    val_fraction=None,
    split_seed=0,
    from_scratch=True,
    **run_options,
):
    """What `train` and `tune` share: the config (the machine's default preset when none is named),
    the run options (a --data source converted to COCO files) and the keys the user set explicitly.
    `--resume` without data options or a config continues with the run's own (config.yaml)."""
    from ..config import load_config
    from ..run_options import TrainOptions

    data_given = data_options(
        data,
        format,
        val_fraction,
        split_seed,
        train_json=train_json,
        train_images=train_images,
        val_json=val_json,
        val_images=val_images,
        dataset=dataset,
        val_dataset=val_dataset,
    )
    saved = Path(run_options["output_dir"]) / "config.yaml"
    if run_options.get("resume") and saved.is_file():
        from ..data.sources import recorded_data

        if not (config or preset or recipe):
            config = saved
        if data_given == type(data_given)():
            data_given = recorded_data(load_config(saved)) or data_given
    if not (config or preset or recipe):
        from ..machine import default_preset

        preset, why = default_preset(run_options.get("device"))
        err_console.print(f"[bold]{escape(why)}[/]", highlight=False, soft_wrap=True)
    cfg = load_config(
        path=config,
        preset=preset,
        norm=norm,
        init=init,
        overrides=overrides or (),
        schedule=schedule,
        plugins=plugin or (),
        recipe=recipe,
    )
    run_options["output_dir"] = str(run_options["output_dir"])
    duration = run_options.pop("time", None)
    if duration is not None:
        from ..budget import parse_duration

        run_options["time_budget"] = parse_duration(duration)
    options = TrainOptions(**run_options, data=resolved_data(data_given))
    return cfg, options, set((overrides or [])[::2])


@app.command(context_settings=OVERRIDES_CONTEXT)
@handles_errors
def train(
    overrides: Overrides = None,
    from_scratch: bool = typer.Option(
        True,
        "--from-scratch",
        show_default=False,
        help=(
            "Always on, with or without the flag: maskinit only trains from random weights and never loads pretrained "
            "ones (there is no --no-from-scratch)."
        ),
    ),
    config: Path | None = typer.Option(None, "--config", help="Config from export-config."),
    preset: Preset = None,
    recipe: str | None = typer.Option(None, help=RECIPE_HELP),
    norm: Norm = None,
    init: Init = None,
    schedule: str | None = typer.Option(None, help="Detectron2 schedule 1x|3x|6x|9x."),
    plugin: Plugins = None,
    train_json: str | None = typer.Option(None, help="COCO instances JSON for training."),
    train_images: str | None = typer.Option(None, help="Image folder for --train-json."),
    val_json: str | None = typer.Option(None, help="COCO instances JSON for evaluation."),
    val_images: str | None = typer.Option(None, help="Image folder for --val-json."),
    dataset: str | None = typer.Option(None, help="A dataset name Detectron2 registers (e.g. coco_2017_train)."),
    val_dataset: str | None = typer.Option(None, help="Registered dataset name to evaluate on (with --dataset)."),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    format: DataFormat = None,
    val_fraction: float | None = typer.Option(None, "--val-fraction", help=VAL_FRACTION_HELP),
    split_seed: SplitSeed = 0,
    output_dir: Path = typer.Option(Path("output"), help="Where config, checkpoints, metrics and eval go."),
    max_iter: int | None = typer.Option(None, help="Iterations; LR steps and warmup rescale unless given explicitly."),
    ims_per_batch: int | None = typer.Option(None, help=IMS_PER_BATCH_HELP),
    lr: float | None = typer.Option(None, help="Base learning rate."),
    device: str | None = typer.Option(None, help="cpu or cuda."),
    num_gpus: int = typer.Option(1, help="Processes per machine (GPUs, or CPU processes over gloo with --device cpu)."),
    num_machines: int = typer.Option(1, help="Machines."),
    machine_rank: int = typer.Option(0, help="This machine's rank."),
    dist_url: str = typer.Option("auto", help="Rendezvous URL for several processes (tcp://HOST:PORT of machine 0)."),
    dist_timeout: float = typer.Option(
        1800,
        help=(
            "Seconds the processes wait for each other (joining, and in collective calls) before the run ends saying "
            "which are missing."
        ),
    ),
    resume: bool = typer.Option(False, help="Continue the run in --output-dir from its last checkpoint."),
    overwrite: bool = typer.Option(
        False,
        help=(
            "Replace a run already in --output-dir: its checkpoints, metrics, log and evaluation are removed (other "
            "files stay)."
        ),
    ),
    amp: bool | None = typer.Option(
        None, "--amp/--no-amp", help="Mixed precision (bf16 where supported, else fp16; off on CPU)."
    ),
    seed: int | None = typer.Option(None, help="Random seed (per process: seed + rank)."),
    eval_period: int | None = typer.Option(None, help="Evaluate every N iterations (0: only at the end)."),
    checkpoint_period: int | None = typer.Option(None, help="Save a checkpoint every N iterations."),
    optimizer: str | None = typer.Option(None, help="sgd, adam or adamw (the presets use adamw)."),
    lr_schedule: str | None = typer.Option(None, help="step, cosine or plateau."),
    warmup_iters: int | None = typer.Option(None, help="Linear warmup length in iterations."),
    clip_grad: float | None = typer.Option(None, help="Clip the gradient norm at this value."),
    precise_bn: bool = typer.Option(False, help="Recompute BN statistics before each evaluation (BN variants)."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."
    ),
    skip_bad: bool = typer.Option(
        False, help="Drop bad annotations and images (counted in the log) instead of refusing the data."
    ),
    fit: str | None = typer.Option(None, help=FIT_HELP),
    epochs: float | None = typer.Option(
        None, help="The run's length in passes over the training images (instead of --max-iter)."
    ),
    time: str | None = typer.Option(
        None,
        "--time",
        help=(
            "The run's length as training time on this machine (2h, 90m, 1h30m): the iterations that fit at the s/iter "
            "measured here first, re-planned from the run's own steps (instead of --max-iter)."
        ),
    ),
    launcher: str = typer.Option(
        "none",
        help=(
            "slurm: submit this run as a SLURM job through submitit (one task per GPU; requeued and resumed after "
            "preemption); none: run here."
        ),
    ),
    nodes: int = typer.Option(1, help="--launcher slurm: nodes of the job."),
    gpus_per_node: int = typer.Option(1, help="--launcher slurm: GPUs (one task each) per node."),
    partition: str | None = typer.Option(None, help="--launcher slurm: the SLURM partition."),
    time_limit: str = typer.Option(
        "1h", help="--launcher slurm: the job's time limit (90m, 24h); the run saves and requeues before it."
    ),
):
    """Train Mask R-CNN from scratch with Detectron2's trainer, then evaluate."""
    params = dict(locals())  # first: locals() are exactly the parameters
    launch = {name: params.pop(name) for name in ("launcher", "nodes", "gpus_per_node", "partition", "time_limit")}
    cfg, options, explicit_keys = train_setup(**params)
    if launch["launcher"] != "none":
        submit_to_slurm(launch, Path(options.output_dir) / "slurm")
        return
    from ..train import train as run_training

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
    trained = (summary.get("time_budget") or {}).get("trained_seconds")
    if options.time_budget is not None and trained is not None:
        console.print(time_budget_line(options.time_budget, trained, summary["time_budget"]["planned_iter"],
                                       summary["iterations"]))
    console.print(
        f"outputs in {summary.get('output_dir', output_dir)}/: config.yaml, model_final.pth, metrics.json, eval.json, "
        "curves.png, run_summary.json"
    )


def time_budget_line(budget: float, trained: float, planned: int, iterations: int) -> str:
    """`--time`'s account at the end: the training time (wall-clock, evaluations apart) against the time
    given, and how the run's length moved from the one planned before it (re-planned as it went)."""
    from ..budget import describe_duration

    line = (f"--time {describe_duration(budget)}: training took {describe_duration(trained)} "
            f"({round((trained / budget - 1) * 100):+d}% of the time given), {iterations} iterations")
    if iterations != planned:
        line += f" (planned {planned} before the run, re-planned from its own steps)"
    if trained > 1.05 * budget:
        line += "; its last steps ran slower than the ones it was re-planned from"
    return line


def submit_to_slurm(launch: dict, folder: Path) -> None:
    """`train --launcher slurm`: the same `maskinit train` arguments, submitted as one SLURM job."""
    import math

    from ..budget import parse_duration
    from ..slurm import SlurmOptions, submit

    if launch["launcher"] != "slurm":
        raise MaskinitError(f"--launcher {launch['launcher']}: expected slurm or none")
    if "train" not in sys.argv:
        raise MaskinitError("--launcher slurm submits the command line it was given: run it as maskinit train ...")
    minutes = math.ceil(parse_duration(launch["time_limit"]) / 60)
    options = SlurmOptions(
        nodes=launch["nodes"],
        gpus_per_node=launch["gpus_per_node"],
        partition=launch["partition"],
        time_limit_min=minutes,
        folder=str(folder),
    )
    job = submit(sys.argv[sys.argv.index("train") + 1 :], options)
    console.print(
        f"submitted SLURM job {job.job_id}: {options.nodes} node(s) x {options.gpus_per_node} task(s), "
        f"{minutes} min; its logs are in {options.folder}/",
        highlight=False,
        soft_wrap=True,
    )


# the `train` options a tuning trial cannot take: a trial is one process, and each trial has its own folder
TUNE_EXCLUDED = (
    "from_scratch",
    "num_gpus",
    "num_machines",
    "machine_rank",
    "dist_url",
    "dist_timeout",
    "overwrite",
    "time",
    "split_seed",
    "launcher",
    "nodes",
    "gpus_per_node",
    "partition",
    "time_limit",
)


@app.command("tune", context_settings=OVERRIDES_CONTEXT)
@handles_errors
@shares_options(train, exclude=TUNE_EXCLUDED)
def tune_command(
    trials: int | None = typer.Option(
        None, help="Finished trials (complete, pruned or failed) the study should have in all, all workers together."
    ),
    timeout: float | None = typer.Option(
        None, help="Seconds after which no new trial starts (a running one finishes)."
    ),
    search: list[str] | None = typer.Option(
        None,
        help=(
            "KEY=low:high[:log|:int] or KEY=a,b,c: a config key to search (replaces the default dimension writing "
            "KEY); repeatable."
        ),
    ),
    search_only: bool = typer.Option(
        False,
        help="Search only the --search keys, not the default space (LR, weight decay, warmup, optimizer, clipping).",
    ),
    pruner: str = typer.Option("median", help="median, hyperband or none: stop hopeless trials at an evaluation."),
    baseline: bool = typer.Option(
        True,
        help=(
            "A new study's first trial runs the config's own values (the preset and your options), so the best is "
            "never a config that measured worse than where you started."
        ),
    ),
    eval_period: int | None = typer.Option(
        None, help="Evaluate (and maybe prune) each trial every N iterations (default: a quarter of the run)."
    ),
    val_fraction: float | None = typer.Option(
        None,
        help=(
            "Score the trials on this share of the training images, held back from their training (seeded split in "
            "OUTPUT_DIR/split/FRACTION-seedN/), so the search never selects on the validation set you report on; also "
            "tunes a set that has none."
        ),
    ),
    storage: str | None = typer.Option(
        None,
        help=(
            "Study storage several `maskinit tune` workers share: a database URL (postgresql://user:password@host/db "
            "with `pip install maskinit[postgres]`, mysql://...; sqlite:///FILE on one machine) or a journal file on a "
            "shared filesystem (journal:///PATH, or a path ending .log/.journal). Default: study.db in --output-dir."
        ),
    ),
    grace_period: int = typer.Option(
        180,
        help=(
            "Seconds without a heartbeat after which a running trial's worker is taken for dead: its trial is failed "
            "and run again by another worker (any machine)."
        ),
    ),
    keep_weights: str = typer.Option(
        "best",
        help="Checkpoints of the finished trials to keep: best (the best trial's), all, or none.",
    ),
    study_name: str | None = typer.Option(None, help="Study name in --storage (default: the output dir's name)."),
    output_dir: Path = typer.Option(
        Path("output/tune"),
        help="The study's folder: trial-NNNN/ per trial, study.db, trials.json, best_config.yaml, plots/.",
    ),
    resume: bool = typer.Option(
        False, help="Continue the study in --output-dir (finished trials are kept; killed ones run again)."
    ),
    workers: int | None = typer.Option(
        None,
        help=(
            "Worker processes on this machine, one trial each, each on its own GPU (default: one per GPU with CUDA, "
            "else 1)."
        ),
    ),
    **train_options,
):
    """Search LR, weight decay, warmup, optimizer, clipping (and any --search KEY) with Optuna, a short run a trial."""
    cfg, options, explicit_keys = train_setup(
        **train_options,
        output_dir=output_dir,
        eval_period=eval_period,
        resume=False,
        overwrite=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
    )
    from ..tune import run_workers, storage_url, study_name_for, study_report, tune

    if workers is None:
        workers = max(1, _gpu_count()) if (options.device or "cuda").startswith("cuda") else 1
    kwargs = dict(
        explicit_keys=explicit_keys,
        storage=storage,
        study_name=study_name,
        pruner=pruner,
        default_space=not search_only,
        grace_period=grace_period,
        keep_weights=keep_weights,
    )
    if workers != 1:  # run_workers refuses fewer than 1

        def started(index, pid, place, log):
            err_console.print(f"worker {index} ({place}): pid {pid}, log {log}", highlight=False, soft_wrap=True)

        run_workers(
            workers,
            sys.argv[1:],
            output_dir,
            storage or storage_url(output_dir, None),
            study_name_for(output_dir, storage, study_name),
            resume=resume,
            default_storage=storage is None,
            device=options.device,
            gpus=_gpu_count(),
            grace_period=grace_period,
            on_start=started,
        )
        result = study_report(cfg, options, search or (), **kwargs)
    else:
        result = tune(
            cfg,
            options,
            search or (),
            trials,
            timeout,
            resume=resume,
            baseline=baseline,
            val_fraction=val_fraction,
            **kwargs,
        )
    for line in result.space:
        err_console.print(f"searched: {escape(line)}", highlight=False, soft_wrap=True)
    print_trials_table(result)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if result.plots:
        console.print(f"plots: {', '.join(str(path) for path in result.plots)}", highlight=False, soft_wrap=True)
    console.print(
        (
            f"study {result.study_name} in {result.storage}; trials in {output_dir}/trial-NNNN/, table in "
            f"{output_dir}/trials.json"
        ),
        highlight=False,
        soft_wrap=True,
    )
    if result.best is None:
        err_console.print("[bold red]no trial completed[/]: nothing to retrain", highlight=False)
        raise typer.Exit(1)
    console.print(
        (
            f"best: trial {result.best.number}, mask AP {ap_text(result.best.ap)} "
            f"({escape(param_text(result.best.params))})"
        ),
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"best config: {result.best_config}\nretrain with: {result.retrain_command}", highlight=False, soft_wrap=True
    )


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
