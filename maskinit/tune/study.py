"""`tune(cfg, options, ...)`: the study's trial loop. Each trial is one `train.train` run in its own
folder with the trial's values as explicit config keys; its ending is mapped to a trial state
(pruned, diverged or failed: recorded, the study goes on; interrupted: the study stops and the trial
is queued again); `trials` counts the finished trials of the whole study, all workers together, and
every worker returns once the whole study has them, so that each reports the same study."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MaskinitError, RunInterrupted
from .report import TuneResult, best_config_text, report
from .space import SearchSpace, _coerce, build_space
from .storage import (
    BASELINE,
    CONFIG,
    ERROR,
    FAILURE,
    GRACE_PERIOD,
    HOST,
    PID,
    STUDY_FILE,
    SURPLUS,
    counted,
    create_or_load_study,
    fail_dead_trials,
    fail_stale_trials,
    heartbeat_interval,
    is_surplus,
    open_storage,
    retry_trial,
    shown_url,
    storage_url,
    study_name_for,
)

if TYPE_CHECKING:  # the CLI imports this module lazily; torch, Detectron2 and Optuna are imported on use
    from detectron2.config import CfgNode

    from ..run_options import TrainOptions

logger = logging.getLogger("maskinit")

SPLIT_DIR = "split"  # --val-fraction: the two parts of the training set the trials use
TRIAL_DIR = "trial-{:04d}"
METRIC = "segm/AP"
PRUNERS = ("median", "hyperband", "none")
DIVERGED_LOSS = 1e4  # a training loss above it has diverged (hooks.LossWatch's limit)
CONSECUTIVE_FAILURES = 3  # non-divergence failures in a row stop the study: something is wrong with every trial

# ---------------------------------------------------------------------------------------------- pruning hook


def _pruning_hook_class():
    from detectron2.engine import HookBase

    from ..hooks import StopRequested

    class PruningHook(HookBase):
        """Reports the mask AP of each periodic evaluation to the trial and stops the run (StopRequested)
        when the pruner says the trial is hopeless, or at once when the loss passes `loss_limit` (a
        diverged trial: Detectron2 itself stops only at a non-finite loss). Runs after Detectron2's EvalHook, which puts
        `segm/AP` into the trainer's storage at the iterations where (iter + 1) % period == 0; the last
        evaluation (EvalHook.after_train) is the trial's value, not an intermediate one."""

        def __init__(self, trial, period: int, metric: str = METRIC, loss_limit: float = DIVERGED_LOSS):
            self.trial = trial
            self.period = period
            self.metric = metric
            self.loss_limit = loss_limit
            self.pruned: str | None = None
            self.diverged: str | None = None
            self.reported: dict[int, float] = {}

        def after_step(self):
            step = self.trainer.iter + 1
            storage = self.trainer.storage
            if "total_loss" in storage.histories():
                loss = storage.history("total_loss").latest()
                if not loss < self.loss_limit:  # huge but finite: diverged all the same (LossWatch's limit)
                    self.diverged = f"training diverged at iteration {step}: loss {loss:.3g} above {self.loss_limit:g}"
                    raise StopRequested(self.diverged)
            if self.period <= 0 or step % self.period or step >= self.trainer.max_iter:
                return
            latest = self.trainer.storage.latest()
            if self.metric not in latest:
                return
            value, iteration = latest[self.metric]
            value = float(value) if math.isfinite(value) else 0.0  # no detections: AP 0
            self.reported[step] = value
            self.trial.report(value, step)
            if self.trial.should_prune():
                self.pruned = f"pruned at iteration {step} (mask AP {value:.2f})"
                raise StopRequested(self.pruned)

    return PruningHook


def pruning_hook(trial, period: int, metric: str = METRIC):
    """A Detectron2 hook reporting `metric` every `period` iterations to `trial`, stopping pruned runs."""
    return _pruning_hook_class()(trial, period, metric)


# ---------------------------------------------------------------------------------------------- the study


class TrialFailed(Exception):
    """A trial that ended by itself without a result (diverged, an error): recorded as failed; the study goes on."""


# What `--keep-weights` may keep of the finished trials' checkpoints.
KEEP_WEIGHTS = ("best", "all", "none")


class StudyInterrupted(RunInterrupted):
    """A signal stopped the trial running: the study stops, the trial is queued again for --resume (the exit
    code of the signal, as a training run's)."""


def trial_interruption(summary: dict, number: int, error: str) -> str:
    """Where a signal stopped a trial, from its run summary: the trial's own checkpoint and `maskinit
    train --resume` command (in `error`) do not apply, as `maskinit tune --resume` runs it again."""
    name = summary.get("signal")
    if not name:
        return f"{error.split(':')[0]} in trial {number}"
    during = summary.get("during") == "evaluation"
    where = "during an evaluation" if during else f"at iteration {summary.get('iteration')}"
    return f"interrupted by {name} {where} of trial {number}"


def _make_pruner(pruner, space: SearchSpace, period: int, trials: int | None):
    import optuna

    if not isinstance(pruner, str):
        return pruner  # an Optuna pruner object (library use)
    if pruner == "median":
        startup = max(1, min(5, (trials or 10) // 4))
        # none before half the run: from scratch the early AP is near zero for every trial and ranks them by
        # how fast they start (warmup, LR), not where they end (a rice_leaf study pruned 4 of 4 at iteration 50)
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=space.max_iter // 2)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=period, max_resource=space.max_iter, reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise MaskinitError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")


def _logger_handlers() -> dict:
    return {name: list(logging.getLogger(name).handlers) for name in ("detectron2", "maskinit", "fvcore", "d2")}


def _drop_new_handlers(before: dict) -> None:
    """Each training run adds its log handlers (its own log.txt); after a trial they go, so that the next
    trial's lines are not printed twice and no file stays open."""
    for name, handlers in before.items():
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if handler not in handlers:
                log.removeHandler(handler)
                handler.close()


def sampler_seed_for(seed: int | None, options: TrainOptions) -> int:
    """The seed of the --val-fraction split: the study's seed, else the run's, else 0."""
    return seed if seed is not None else (options.seed if options.seed is not None else 0)


def tune(
    cfg: CfgNode,
    options: TrainOptions,
    search: Sequence[str] = (),
    trials: int | None = None,
    timeout: float | None = None,
    *,
    explicit_keys=frozenset(),
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    pruner="median",
    default_space: bool = True,
    seed: int | None = None,
    baseline: bool = True,
    val_fraction: float | None = None,
    grace_period: int = GRACE_PERIOD,
    keep_weights: str = "best",
) -> TuneResult:
    """Search the training hyperparameters: `trials` finished trials in the whole study (complete,
    pruned or failed by themselves) and/or until `timeout` seconds have passed (a trial running then
    finishes). `options` are the training run options of every trial (`options.output_dir` is the
    study's folder, `options.eval_period` the pruning period, default a quarter of the run);
    `storage`: a database URL several processes share (default: `study.db` in the output dir, which
    needs `resume` to be continued); `pruner`: median, hyperband, none or an Optuna pruner;
    `baseline`: a new study's first trial runs the config's own values (SearchSpace.baseline);
    `val_fraction`: trials train on the rest of the training images and are scored on this share of
    them (data/split.py), never on the validation set; `grace_period`: seconds without a heartbeat
    after which a running trial's worker is taken for dead (its trial failed and queued again);
    `keep_weights`: the checkpoints of finished trials kept (`drop_weights`): best, all or none.
    Each worker returns once the whole study has its trials (waiting for those running elsewhere).
    """
    import warnings

    import optuna
    from optuna.trial import TrialState

    from ..config import config_value
    from ..data.sources import validate_data
    from ..run_dir import read_summary
    from ..run_options import apply_run_options
    from ..train import train

    if trials is None and timeout is None:
        raise MaskinitError("give --trials N and/or --timeout SECONDS")
    if keep_weights not in KEEP_WEIGHTS:
        raise MaskinitError(f"--keep-weights must be one of {', '.join(KEEP_WEIGHTS)}, got {keep_weights!r}")
    if trials is not None and trials < 1:
        raise MaskinitError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise MaskinitError(f"--timeout must be positive, got {timeout}")
    if options.num_gpus != 1 or options.num_machines != 1:
        raise MaskinitError("a tuning trial runs in one process: "
                            "run one `maskinit tune` worker per GPU on one --storage")
    out = Path(options.output_dir)
    if options.seed is None and cfg.SEED < 0:
        options = replace(options, seed=0)  # every trial starts from the same weights and data order
    space = build_space(cfg, options, search, explicit_keys, defaults=default_space)
    max_iter = space.max_iter
    period = options.eval_period if options.eval_period else max(1, max_iter // 4)
    if period >= max_iter and pruner != "none":
        logger.warning("eval period %d >= %d iterations: no trial can be pruned", period, max_iter)
    # what every trial shares, checked once before the study: the run options, the data
    applied = apply_run_options(cfg, replace(options, output_dir=str(out / "check")), explicit_keys)
    checked = validate_data(options.data, options.skip_bad)
    notes = list(checked.notes)

    url = storage_url(out, storage)
    name = study_name_for(out, storage, study_name)
    shown = shown_url(url)
    if storage is None:
        exists = (out / STUDY_FILE).is_file()
        if exists and not resume:
            raise MaskinitError(f"{out} already holds a study ({STUDY_FILE}): pass --resume to continue it, "
                                "or choose another --output-dir")
        if resume and not exists:
            raise MaskinitError(f"nothing to resume: no {STUDY_FILE} in {out}")
    else:  # a shared storage is opened before anything is written: a missing driver or server leaves no trace
        shared = open_storage(url, grace_period)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MaskinitError(f"output dir {out} is not writable: {error.strerror}") from error
    if val_fraction is not None:  # the trials' data: a split of the training set, the same in every worker;
        # checked before the study is created, in a folder of its own fraction and seed (a refused --resume
        # with another split leaves the study's files as they were)
        from ..data.sources import use_embedded_default
        from ..data.split import hold_back

        split_seed = sampler_seed_for(seed, options)
        given = checked.data.train_json or checked.data.dataset
        training = checked.data if given else use_embedded_default(checked.data)
        split = hold_back(training, val_fraction, split_seed, out / SPLIT_DIR / f"{val_fraction:g}-seed{split_seed}")
        checked = checked._replace(data=split.data)
        notes.append(split.note)
    rdb = open_storage(url, grace_period) if storage is None else shared
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the CLI shows the trials; the reasons are in the table
    if resume and storage is not None and name not in optuna.get_all_study_names(rdb):
        raise MaskinitError(f"nothing to resume: no study {name!r} in {shown}")
    first_seed = seed if seed is not None else options.seed
    # parallel workers must not draw the same values: each worker's sampler has its own seed
    worker = f"{socket.gethostname()}:{os.getpid()}" if storage is not None else None

    def make_sampler(offset: int):
        return optuna.samplers.TPESampler(seed=sampler_seed(first_seed, offset, worker),
                                          n_startup_trials=max(3, min(10, (trials or 30) // 3)),
                                          multivariate=True, group=True, constant_liar=storage is not None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study, created = create_or_load_study(rdb, name, make_sampler(0), _make_pruner(pruner, space, period, trials))
        existing = len(study.get_trials(deepcopy=False))
        if existing:
            study.sampler = make_sampler(existing)
        if created and baseline:  # only the worker that created the study queues the baseline: it runs once
            point = space.baseline(applied)  # what a plain `train` with these options runs (LR scaled with the batch)
            if point:
                study.enqueue_trial(point, user_attrs={BASELINE: True})
    signature = {**space.signature(), "eval_period": period}
    if val_fraction is not None:  # (absent otherwise: the studies of earlier versions stay resumable)
        signature["val_fraction"] = {"fraction": val_fraction, "seed": sampler_seed_for(seed, options)}
    known = study.user_attrs.get("maskinit_space")
    if known is None:
        study.set_user_attr("maskinit_space", signature)
    elif known != json.loads(json.dumps(signature)):
        raise MaskinitError(f"study {name!r} searched {json.dumps(known)}; this command searches "
                            f"{json.dumps(signature)}: give the same options, or another --study-name/--output-dir")
    killed = fail_dead_trials(study)
    if killed:
        notes.append(f"trials {', '.join(map(str, killed))} were running in a process that is gone: failed and "
                     "queued again")

    base_explicit = set(explicit_keys)
    trial_options = replace(options, data=checked.data, eval_period=period, resume=False, overwrite=False,
                            skip_bad=False)
    deadline = None if timeout is None else time.monotonic() + timeout
    ran_here: list[int] = []
    current: dict = {}
    failures_in_a_row = 0

    def objective(trial) -> float:
        current["trial"] = trial
        trial.set_user_attr(HOST, socket.gethostname())
        trial.set_user_attr(PID, os.getpid())
        if is_surplus(study, trial.number, trials):
            trial.set_user_attr(SURPLUS, True)
            raise TrialFailed("the study has its trials")
        trial.set_user_attr("gpus", os.environ.get("CUDA_VISIBLE_DEVICES"))  # the GPUs this worker was given
        values = space.suggest(trial)
        trial_cfg = cfg.clone()
        trial_cfg.defrost()
        for key, value in values.items():
            trial_cfg.merge_from_list([key, _coerce(key, config_value(cfg, key), value)])
        trial_dir = out / TRIAL_DIR.format(trial.number)
        trial.set_user_attr("output_dir", str(trial_dir))
        hook = pruning_hook(trial, period)
        started = time.perf_counter()
        handlers = _logger_handlers()
        try:
            summary = train(trial_cfg, replace(trial_options, output_dir=str(trial_dir)),
                            explicit_keys=base_explicit | set(values), hooks=[hook])
        except MaskinitError as error:
            summary = read_summary(trial_dir)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
            trial.set_user_attr("iterations", summary.get("iterations"))
            if hook.reported:
                trial.set_user_attr("last_ap", hook.reported[max(hook.reported)])
            if hook.pruned:
                trial.set_user_attr("pruned", hook.pruned)
                raise optuna.TrialPruned(hook.pruned) from error
            if summary.get("status") == "interrupted" or str(error).startswith("interrupted by"):
                trial.set_user_attr("interrupted", True)
                raise StudyInterrupted(trial_interruption(summary, trial.number, str(error)),
                                       getattr(error, "signal_name", "SIGINT")) from error
            diverged = hook.diverged or summary.get("status") == "diverged"
            trial.set_user_attr(FAILURE, "diverged" if diverged else "failed")
            trial.set_user_attr(ERROR, str(error)[:500])
            raise TrialFailed(str(error)) from error
        finally:
            _drop_new_handlers(handlers)
            gc.collect()
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        trial.set_user_attr("iterations", summary.get("iterations"))
        results = summary.get("eval", {})
        box = results.get("bbox", {}).get("AP")
        trial.set_user_attr("box_ap", box if box is not None and math.isfinite(box) else None)
        trial.set_user_attr(CONFIG, best_config_text(trial_dir / "config.yaml", cfg))
        ap = results.get("segm", {}).get("AP")
        if ap is None or not math.isfinite(ap):
            trial.set_user_attr("note", "no detections: mask AP 0")
            return 0.0
        return float(ap)

    stop_reason = None
    poll = min(5, heartbeat_interval(grace_period))
    while True:
        all_trials = study.get_trials(deepcopy=False)
        done = sum(1 for t in all_trials if counted(t))
        running = sum(1 for t in all_trials if t.state == TrialState.RUNNING and SURPLUS not in t.user_attrs)
        waiting = any(t.state == TrialState.WAITING for t in all_trials)
        if trials is not None and done >= trials:
            break
        if deadline is not None and time.monotonic() >= deadline:
            stop_reason = "timeout"
            if running:
                notes.append(f"{running} trial(s) still running in other workers")
            break
        if trials is not None and not waiting and done + running >= trials:
            # the study's last trials run in other workers: wait for them (every worker then reports the
            # whole study), failing and queueing again those whose worker went away
            if not (fail_dead_trials(study) or fail_stale_trials(study)):
                time.sleep(poll)
            continue
        current.clear()
        try:
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
        except (StudyInterrupted, KeyboardInterrupt) as error:
            trial = current.get("trial")
            if trial is not None and trial_of(study, trial.number).state == TrialState.FAIL:
                retry_trial(study, trial_of(study, trial.number))
            if not isinstance(error, StudyInterrupted):
                raise
            again = f" (trial {trial.number} runs again from its start)" if trial is not None else ""
            raise StudyInterrupted(f"{error}; the study is kept in {shown}: run the same maskinit tune command with "
                                   f"--resume to continue it{again}", error.signal_name) from error
        trial = current.get("trial")
        if trial is None:
            continue
        frozen = trial_of(study, trial.number)
        if SURPLUS in frozen.user_attrs:
            continue
        ran_here.append(trial.number)
        drop_weights(study, keep_weights)
        if frozen.state == TrialState.FAIL and frozen.user_attrs.get(FAILURE) == "failed":
            failures_in_a_row += 1
            if failures_in_a_row >= CONSECUTIVE_FAILURES:
                raise MaskinitError(f"{CONSECUTIVE_FAILURES} trials in a row failed; the last: "
                                    f"{frozen.user_attrs.get(ERROR)}")
        else:
            failures_in_a_row = 0
    if stop_reason:
        notes.append(f"stopped by --timeout after {len(ran_here)} trial(s) here")
    return report(study, shown, out, cfg, options, space, notes, ran_here)


def drop_weights(study, keep: str) -> list[Path]:
    """Remove the checkpoints (`*.pth`, `last_checkpoint`) in the folders of the study's finished trials
    (complete, pruned or failed) that this machine holds, but the best complete trial's with `keep` "best",
    and none with "all". A finished trial's weights are never trained on: an interrupted or lost trial runs
    again from its start, and the best config is retrained. The files removed."""
    from optuna.trial import TrialState

    from ..checkpoint import remove_checkpoints

    if keep == "all":
        return []
    best = None
    if keep == "best":
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = study.best_trial.number if complete else None
    removed = []
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=finished):
        folder = trial.user_attrs.get("output_dir")
        if trial.number != best and folder:
            removed += remove_checkpoints(folder)
    return removed


def trial_of(study, number: int):
    """Trial `number` of the study as the storage holds it now."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def sampler_seed(seed: int | None, offset: int, worker: str | None = None) -> int | None:
    """The TPE sampler's seed: from the study's seed, the trials the study already has (a resumed study
    draws on from where it was: the same seed would draw trial 0's values again) and the worker (host
    and process: workers sharing a study draw different values). None: unseeded."""
    import zlib

    if seed is None:
        return None
    return (seed * 1_000_003 + offset + (zlib.crc32(worker.encode()) if worker else 0)) % 2**32
