"""`train(cfg, options)`: from-scratch Mask R-CNN on Detectron2's own trainer, on any number of processes.

This module is the sequence of a run and its one-line outcome: the run options applied
(`run_options`), the data checked and fitted (`data.sources`, `data.analysis`), the memory checked
(`machine`), the output dir made safe (`run_dir`), the processes launched (`worker`, which builds the
`trainer.Trainer`); then any ending but a finished run becomes one `MaskinitError` of its kind (its exit
code: `errors.EXIT_CODES`). On several machines each runs `train`; the first process of machine 0 leads
(checks, locks and writes the output dir) and every machine ends with rank 0's ending.

The run is proven from scratch: `MODEL.WEIGHTS` must be empty, every checkpoint file read is
recorded, and when not resuming the model's weights are fingerprinted before and after Detectron2's
`resume_or_load` to show that nothing was loaded. The record goes to the log and `run_summary.json`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from detectron2.config import CfgNode

from .atomic import write_atomically
from .config import check_config, dump_yaml
from .data.fit import FitReport, fit_to_data
from .errors import Interrupted, MaskinitError, RunDiverged, RunFailed, RunInterrupted, signal_name
from .machine import check_memory
from .run_dir import (
    CONFIG_FILE,
    RESUME_CLASS_KEYS,
    RESUME_MODEL_KEYS,
    SUMMARY_FILE,
    check_output_dir,
    check_resume_config,
    leads_run,
    output_dir_lock,
    prepare_output_dir,
    read_summary,
    remove_replaced_run,
    remove_stale_files,
    resumed_config,
)
from .run_options import DataOptions, TrainOptions, apply_run_options, user_set_keys
from .worker import install_signal_handlers, launch_workers

__all__ = ["DataOptions", "RunPlan", "TrainOptions", "train"]

logger = logging.getLogger("maskinit")


@dataclass(frozen=True)
class RunPlan:
    """What a run will train, decided before it starts: the final config, the data fit (its keys and
    estimated cost), and how the run's length was chosen (`--epochs`, `--time`)."""

    cfg: CfgNode
    fit: FitReport
    length: tuple[str, ...] = ()


def train(
    cfg: CfgNode,
    options: TrainOptions | None = None,
    explicit_keys: set[str] = frozenset(),
    hooks: Sequence = (),
    announce: Callable[[RunPlan], None] | None = None,
) -> dict:
    """Train from scratch and evaluate; returns the run summary (also in `run_summary.json`).

    Every way it ends other than a finished run is a `MaskinitError` saying why in one line,
    SIGINT and SIGTERM included, whenever they arrive. `explicit_keys`: the config keys the user
    set (kept as given by the schedule scaling and the fit to the data). `hooks`: extra Detectron2
    hooks for the trainer, after maskinit's own (one process only: they are not sent to others).
    `announce`: called with the `RunPlan` once everything is checked, before training starts.
    """
    options = options or TrainOptions()
    restore = install_signal_handlers(raise_interrupted)
    try:
        return _train(cfg, options, explicit_keys, hooks, announce)
    except KeyboardInterrupt as interrupt:  # outside the training loop, which stops on signals by itself
        summary = read_summary(Path(options.output_dir))
        when = (
            "after training ended: the outputs in " + str(options.output_dir) + " are what it wrote"
            if summary.get("status") not in (None, "running")
            else "before training started: nothing was trained or saved"
        )
        raise RunInterrupted(f"interrupted by {signal_name(interrupt)} {when}", signal_name(interrupt)) from interrupt
    finally:
        restore()


def raise_interrupted(signum, frame):
    """SIGTERM (and SIGINT) as `KeyboardInterrupt`, named: outside training loops, a signal stops at once."""
    raise Interrupted(signal.Signals(signum).name)


def _train(cfg: CfgNode, options: TrainOptions, explicit_keys, hooks: Sequence = (), announce=None) -> dict:
    from .budget import run_length
    from .data.convert import resolve_source
    from .data.sources import record_data, resolve_data, validate_data
    from .time_budget import TimeBudget

    if options.resume and options.overwrite:
        raise MaskinitError("--resume and --overwrite contradict each other: choose one")
    options = replace(options, data=resolve_source(options.data).data)  # --data: its COCO files, converted once
    requested = apply_run_options(cfg, options, explicit_keys)
    checked = validate_data(options.data, options.skip_bad)
    stated_classes = requested.MODEL.ROI_HEADS.NUM_CLASSES
    fit = FitReport("off")
    saved_config = Path(options.output_dir) / CONFIG_FILE
    continues_saved = options.resume and saved_config.is_file()
    if continues_saved:  # a resumed run goes on with the config it was fitted with (and checked) at its start
        check_resume_config(saved_config, requested, RESUME_MODEL_KEYS)
        cfg = resumed_config(saved_config, cfg, options, explicit_keys)
        logger.info(
            "resuming with the config saved in %s (fitted to the data at the run's start), "
            "the command's run options and KEY VALUE overrides on top",
            saved_config,
        )
    else:
        cfg, fit = fit_to_data(requested, checked.data, keep=explicit_keys)
        check_config(cfg)
    cfg, data = resolve_data(cfg, checked.data)
    cfg = record_data(
        cfg, options.data
    )  # config.yaml says which data: --resume and `eval RUN_DIR` need no data options
    if "MODEL.ROI_HEADS.NUM_CLASSES" in explicit_keys and stated_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise MaskinitError(
            f"MODEL.ROI_HEADS.NUM_CLASSES {stated_classes} was given, but the training data has "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES} categories: drop the override (the number of classes follows the data)"
        )
    processes_here, world = processes(options)
    if cfg.MASKINIT.MEMORY_CHECK:
        check_memory(cfg, processes_here=processes_here, world=world)
    cfg, length = run_length(cfg, options.epochs, options.time_budget, user_set_keys(options, explicit_keys), world)
    if announce is not None:
        announce(RunPlan(cfg, fit, tuple(length)))
    lead = leads_run(options)
    out = prepare_output_dir(options) if lead else Path(options.output_dir)  # the others write per-rank logs only
    check_output_dir(out, options, cfg.SOLVER.MAX_ITER)  # a refused run leaves the dir as it was
    with output_dir_lock(out) if lead else contextlib.nullcontext():
        if lead:
            check_output_dir(out, options, cfg.SOLVER.MAX_ITER)  # again: a run that held the lock may have ended
            remove_stale_files(out)
            if options.overwrite:
                remove_replaced_run(out)
            config_path = out / CONFIG_FILE
            if continues_saved:
                check_resume_config(config_path, cfg, RESUME_CLASS_KEYS)
            (out / SUMMARY_FILE).unlink(missing_ok=True)
            write_atomically(config_path, dump_yaml(cfg))
        cfg.freeze()
        # the workers train on the data as resolved (cleaned copies, the embedded default's paths);
        # the commands printed at the end name the data as the user gave it
        ending = launch_workers(cfg, replace(options, data=data), fit, checked.notes, hooks,
                                TimeBudget.of(options.time_budget, user_set_keys(options, explicit_keys)))
    return outcome(ending or read_summary(out), options, out)


def processes(options: TrainOptions) -> tuple[int, int]:
    """How many processes of the run share this machine, and how many it has in all (a launcher's
    variables under torchrun or srun, else --num-gpus and --num-machines)."""
    from .ranks import under_torchrun, world_size

    if under_torchrun():
        return int(os.environ.get("LOCAL_WORLD_SIZE", 1)), world_size()
    return options.num_gpus, options.num_gpus * options.num_machines


def outcome(summary: dict, options: TrainOptions, out: Path) -> dict:
    """The summary of a finished run; a `MaskinitError` saying why for any other ending."""
    status = summary.get("status")
    if status == "interrupted":
        raise RunInterrupted(interruption_message(summary, options), summary.get("signal") or "SIGINT")
    if status == "failed":
        raise RunFailed(summary["error"])
    if status == "stopped":
        raise RunFailed(f"training stopped at iteration {summary.get('iteration')}: {summary.get('reason')}")
    if status == "diverged":
        kept = (
            f"last finite checkpoint kept: {summary['checkpoint']}"
            if summary.get("checkpoint")
            else "no checkpoint had been saved yet"
        )
        raise RunDiverged(
            f"training diverged at iteration {summary.get('iteration')}: non-finite {', '.join(summary['terms'])}; "
            f"{kept}; try a lower --lr, a longer --warmup-iters, --clip-grad 1.0, or a GN/SyncBN norm"
        )
    if status != "finished":
        raise RunFailed(f"training did not finish (see {out / 'log.txt'})")
    return summary


def interruption_message(summary: dict, options: TrainOptions) -> str:
    """What an interrupt left: a checkpoint and the command that resumes from it, or nothing to resume."""
    name, iteration, saved = summary.get("signal"), summary.get("iteration"), summary.get("checkpoint")
    if summary.get("during") == "evaluation" and saved == "model_final.pth":
        return (
            f"interrupted by {name} during the final evaluation: training finished and model_final.pth is saved; "
            f"evaluate it with: {eval_command(options)}"
        )
    where = "during the evaluation" if summary.get("during") == "evaluation" else "at iteration"
    if saved:
        return (f"interrupted by {name} {where} {iteration}: checkpoint {saved} saved; "
                f"resume with: {resume_command(options)}")
    previous = summary.get("previous_checkpoint")
    if previous:
        return (
            f"interrupted by {name} at iteration {iteration} (a second signal: nothing saved now); the last checkpoint "
            f"is {previous}; resume from it with: {resume_command(options)}"
        )
    return (f"interrupted by {name} at iteration {iteration}, before any checkpoint: nothing to resume; "
            "run the same command to start again")


def resume_command(options: TrainOptions) -> str:
    """The exact command that continues this run (`options` as the user gave them: no data options
    for the embedded default set)."""
    out = options.output_dir
    # a machine with a folder of its own has no config.yaml: it trains the config machine 0 sends
    config = ["--config", f"{out}/{CONFIG_FILE}"] if (Path(out) / CONFIG_FILE).is_file() else []
    parts = ["maskinit", "train", *config, "--output-dir", str(out), "--resume", *options.data.as_flags()]
    if options.num_gpus > 1 or options.num_machines > 1:
        parts += [
            "--num-gpus",
            str(options.num_gpus),
            "--num-machines",
            str(options.num_machines),
            "--machine-rank",
            str(options.machine_rank),
            "--dist-url",
            options.dist_url,
        ]
    return " ".join(shlex.quote(part) for part in parts)


def eval_command(options: TrainOptions) -> str:
    """The command that evaluates this run's final model."""
    out = options.output_dir
    if options.data.source:  # the run's config records its data
        return " ".join(shlex.quote(part) for part in ["maskinit", "eval", str(out)])
    parts = ["maskinit", "eval", "--config", f"{out}/{CONFIG_FILE}", "--weights", f"{out}/model_final.pth"]
    data = options.data
    for flag, value in (
        ("--val-json", data.val_json),
        ("--val-images", data.val_images),
        ("--dataset", data.val_dataset),
    ):
        if value:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(part) for part in parts)
