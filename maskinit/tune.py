"""`tune(cfg, options, ...)`: a hyperparameter search over ordinary maskinit training runs, on Optuna.

Each trial is one `train.train` run in its own folder (`<output dir>/trial-NNNN`, by trial number)
with the trial's values written into the config as explicit keys. Optuna does the searching (TPE
sampler), the pruning (median or Hyperband pruner fed the mask AP of each evaluation every
`eval_period` iterations), the study storage (an SQLite file in the output dir, or any database URL
several processes and machines share) and the heartbeat that fails the trials of a worker that
went away. maskinit adds what is specific to it: the search space (the LR and weight decay ranges
depend on the optimizer, as SGD and AdamW want values 10-500x apart), `KEY=low:high[:log|:int]`
and `KEY=a,b,c` specs checked against the config, a trial ending mapped to a trial state
(pruned, diverged or failed: recorded, the study goes on; interrupted: the study stops and the
trial is queued again), the trials of a killed process on this machine failed and queued again at
once (not after the heartbeat's grace period), `trials` counted as finished trials of the whole
study, and the outputs: the table of trials, the best trial's config and the plots.

Nothing here prints: `tune` returns a `TuneResult`, the CLI shows it.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import socket
import time
from ast import literal_eval
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MaskinitError, one_line

if TYPE_CHECKING:  # the CLI imports this module lazily; torch, Detectron2 and Optuna are imported on use
    import optuna
    from detectron2.config import CfgNode

    from .run_options import TrainOptions

logger = logging.getLogger("maskinit")

STUDY_FILE = "study.db"
BEST_CONFIG = "best_config.yaml"
TRIALS_FILE = "trials.json"
SPLIT_DIR = "split"  # --val-fraction: the two parts of the training set the trials use
PLOT_DIR = "plots"
TRIAL_DIR = "trial-{:04d}"
METRIC = "segm/AP"
# the default search space (maskinit's own names; a --search KEY replaces the one that writes KEY)
OPTIMIZERS = ("sgd", "adamw")
# LR and weight decay ranges per optimizer; the preset's own optimizer gets its LR x/÷ 10 instead
LR_RANGE = {"sgd": (1e-3, 1e-1), "adamw": (1e-5, 1e-2), "adam": (1e-5, 1e-2)}
WD_RANGE = {"sgd": (1e-5, 1e-3), "adamw": (1e-3, 0.2), "adam": (1e-6, 1e-3)}
WARMUP_FRACTION = (0.0, 0.3)  # of the run's iterations
CLIP_CHOICES = (0.0, 0.5, 1.0, 2.0, 5.0)  # gradient norm; 0: no clipping
# what a run option or an explicit KEY VALUE override fixes (the user's value wins over the search)
DEFAULT_DIMENSIONS = {
    "optimizer": ("MASKINIT.OPTIMIZER",),
    "lr": ("SOLVER.BASE_LR",),
    "weight_decay": ("SOLVER.WEIGHT_DECAY",),
    "warmup": ("SOLVER.WARMUP_ITERS",),
    "clip_grad": ("SOLVER.CLIP_GRADIENTS.ENABLED", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE"),
}
# trial user attributes: who runs it (to fail a killed process's trials at once) and how it ended
HOST, PID = "maskinit_host", "maskinit_pid"
FAILURE, ERROR = "failure", "error"
BASELINE = "baseline"  # the trial that runs the config's own values (the study's first)
PRUNERS = ("median", "hyperband", "none")
DIVERGED_LOSS = 1e4  # a training loss above it has diverged (hooks.LossWatch's limit)
CONSECUTIVE_FAILURES = 3  # non-divergence failures in a row stop the study: something is wrong with every trial


# ---------------------------------------------------------------------------------------------- search specs


@dataclass(frozen=True)
class SearchDimension:
    """One `--search` spec: a config key and its range (`low:high`, log or int) or its choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial):
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        """Whether `value` is one this dimension can suggest."""
        if self.choices:
            return any(type(value) is type(choice) and value == choice for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (not self.integer or float(value).is_integer())

    def describe(self) -> str:
        if self.choices:
            return ",".join(str(choice) for choice in self.choices)
        kind = ":log" if self.log else ""
        kind += ":int" if self.integer else ""
        return f"{self.low:g}:{self.high:g}{kind}"


def _literal(text: str):
    try:
        return literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # a bare word: a string choice (sgd, adamw, GN, ...)


def _coerce(key: str, current, value):
    """`value` as the type of the config's `current` value (yacs refuses an int for a float key)."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(current)(value)
    raise MaskinitError(f"--search {key}: {value!r} is not a {type(current).__name__} like the config's {current!r}")


def parse_search(spec: str, cfg: CfgNode) -> SearchDimension:
    """`KEY=low:high[:log|:int]` (a range, log scale and/or integers) or `KEY=a,b,c` (choices);
    the key must be a config key holding a value, the range a valid one."""
    key, sep, values = spec.partition("=")
    key, values = key.strip(), values.strip()
    if not sep or not key or not values:
        raise MaskinitError(f"--search {spec!r}: expected KEY=low:high[:log|:int] or KEY=a,b,c")
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise MaskinitError(f"--search {spec!r}: unknown config key {key}")
        node = node[part]
    if isinstance(node, dict):
        raise MaskinitError(f"--search {spec!r}: {key} is a section of the config, not a key")
    if ":" in values:
        parts = values.split(":")
        flags = {flag.strip().lower() for flag in parts[2:]}
        if len(parts) < 2 or not flags <= {"log", "int"} or len(parts) > 4:
            raise MaskinitError(f"--search {spec!r}: a range is low:high, optionally :log and/or :int")
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise MaskinitError(f"--search {spec!r}: {key} holds {node!r}, not a number: give choices (a,b,c)")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise MaskinitError(f"--search {spec!r}: low and high must be numbers") from None
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise MaskinitError(f"--search {spec!r}: need finite low < high, got {low:g} and {high:g}")
        log = "log" in flags
        if log and low <= 0:
            raise MaskinitError(f"--search {spec!r}: a log range needs low > 0, got {low:g}")
        integer = "int" in flags or isinstance(node, int)
        if integer and (not low.is_integer() or not high.is_integer()):
            raise MaskinitError(f"--search {spec!r}: {key} takes integers, got {low:g}:{high:g}")
        return SearchDimension(key, low, high, log=log, integer=integer)
    choices = tuple(_coerce(key, node, _literal(text.strip())) for text in values.split(",") if text.strip())
    if len(set(map(repr, choices))) != len(choices):
        raise MaskinitError(f"--search {spec!r}: a choice is given twice")
    if not choices:
        raise MaskinitError(f"--search {spec!r}: no choices")
    return SearchDimension(key, choices=choices)


# ---------------------------------------------------------------------------------------------- search space


@dataclass
class SearchSpace:
    """What a trial chooses: maskinit's default dimensions not fixed by the user, and `--search` keys.

    The LR and weight decay ranges depend on the optimizer the trial chose (`lr_sgd`, `lr_adamw`, ...:
    one Optuna parameter per optimizer, so that TPE models each on its own scale); the preset's own
    optimizer gets its LR / 10 to x 10."""

    defaults: tuple[str, ...]
    dimensions: tuple[SearchDimension, ...]
    optimizer: str  # the config's optimizer (fixed when "optimizer" is not searched)
    lr_range: dict
    wd_range: dict
    max_iter: int

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's config values, by key."""
        values: dict[str, Any] = {}
        optimizer = self.optimizer
        if "optimizer" in self.defaults:
            optimizer = trial.suggest_categorical("optimizer", list(OPTIMIZERS))
            values["MASKINIT.OPTIMIZER"] = optimizer
        if "lr" in self.defaults:
            low, high = self.lr_range[optimizer]
            values["SOLVER.BASE_LR"] = trial.suggest_float(f"lr_{optimizer}", low, high, log=True)
        if "weight_decay" in self.defaults:
            low, high = self.wd_range[optimizer]
            values["SOLVER.WEIGHT_DECAY"] = trial.suggest_float(f"weight_decay_{optimizer}", low, high, log=True)
        if "warmup" in self.defaults:
            fraction = trial.suggest_float("warmup_fraction", *WARMUP_FRACTION)
            values["SOLVER.WARMUP_ITERS"] = int(round(fraction * self.max_iter))
        if "clip_grad" in self.defaults:
            clip = trial.suggest_categorical("clip_grad", list(CLIP_CHOICES))
            values["SOLVER.CLIP_GRADIENTS.ENABLED"] = clip > 0
            if clip > 0:
                values["SOLVER.CLIP_GRADIENTS.CLIP_VALUE"] = float(clip)
        for dimension in self.dimensions:
            values[dimension.key] = dimension.suggest(trial)
        return values

    def baseline(self, cfg: CfgNode) -> dict[str, Any]:
        """The config's own values as this space's Optuna parameters: the study's first trial, so that
        a study starts from the preset and its best is never a worse config than the one it began with
        (by the trial's measure). A value the space cannot hold (a clipping norm not among the choices,
        a --search key's value outside its range) is left to the sampler."""
        from .config import config_value

        def within(value, bounds) -> bool:
            return bounds[0] <= value <= bounds[1]

        params: dict[str, Any] = {}
        optimizer = self.optimizer
        if "optimizer" in self.defaults:
            optimizer = cfg.MASKINIT.OPTIMIZER
            if optimizer not in OPTIMIZERS:
                return {}  # another optimizer: its LR and weight decay have no parameter here
            params["optimizer"] = optimizer
        if "lr" in self.defaults and within(cfg.SOLVER.BASE_LR, self.lr_range[optimizer]):
            params[f"lr_{optimizer}"] = float(cfg.SOLVER.BASE_LR)
        if "weight_decay" in self.defaults and within(cfg.SOLVER.WEIGHT_DECAY, self.wd_range[optimizer]):
            params[f"weight_decay_{optimizer}"] = float(cfg.SOLVER.WEIGHT_DECAY)
        if "warmup" in self.defaults:
            fraction = cfg.SOLVER.WARMUP_ITERS / self.max_iter
            if within(fraction, WARMUP_FRACTION):
                params["warmup_fraction"] = fraction
        if "clip_grad" in self.defaults:
            clip = float(cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE) if cfg.SOLVER.CLIP_GRADIENTS.ENABLED else 0.0
            if clip in CLIP_CHOICES and (clip == 0.0 or cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "norm"):
                params["clip_grad"] = clip
        for dimension in self.dimensions:
            value = config_value(cfg, dimension.key)
            if dimension.contains(value):
                params[dimension.key] = value
        return params

    def signature(self) -> dict:
        """What a study searched (kept in the study: a resumed or joined study must search the same)."""
        return {
            "defaults": list(self.defaults),
            "search": {d.key: d.describe() for d in self.dimensions},
            "lr": {k: list(v) for k, v in self.lr_range.items()} if "lr" in self.defaults else None,
            "max_iter": self.max_iter,
        }

    def describe(self) -> list[str]:
        lines = []
        if "optimizer" in self.defaults:
            lines.append("optimizer: " + ", ".join(OPTIMIZERS))
        names = OPTIMIZERS if "optimizer" in self.defaults else (self.optimizer,)
        if "lr" in self.defaults:
            lines += [f"LR ({name}): {low:g} to {high:g}, log" for name in names for low, high in [self.lr_range[name]]]
        if "weight_decay" in self.defaults:
            lines += [f"weight decay ({name}): {low:g} to {high:g}, log" for name in names for low, high in [self.wd_range[name]]]
        if "warmup" in self.defaults:
            lines.append(f"warmup: {WARMUP_FRACTION[0]:g} to {WARMUP_FRACTION[1]:g} of {self.max_iter} iterations")
        if "clip_grad" in self.defaults:
            lines.append("gradient clipping (norm; 0 = off): " + ", ".join(f"{c:g}" for c in CLIP_CHOICES))
        lines += [f"{d.key}: {d.describe()}" for d in self.dimensions]
        return lines


def build_space(cfg: CfgNode, options: TrainOptions, search: Sequence[str] = (), explicit_keys=frozenset(),
                defaults: bool = True) -> SearchSpace:
    """The search space of a study: the `--search` specs, and the default dimensions that neither a
    run option (`--optimizer`, `--lr`, `--warmup-iters`, `--clip-grad`), an explicit override nor a
    `--search` key fixes."""
    dimensions = tuple(parse_search(spec, cfg) for spec in search)
    keys = [d.key for d in dimensions]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise MaskinitError(f"--search {twice[0]} is given twice")
    fixed = set(explicit_keys) & {key for group in DEFAULT_DIMENSIONS.values() for key in group}
    for name, given in (("optimizer", options.optimizer), ("lr", options.lr), ("warmup", options.warmup_iters),
                        ("clip_grad", options.clip_grad)):
        if given is not None:
            fixed |= set(DEFAULT_DIMENSIONS[name])
    fixed |= set(keys)
    chosen = tuple(name for name, group in DEFAULT_DIMENSIONS.items() if defaults and not set(group) & fixed)
    optimizer = options.optimizer or cfg.MASKINIT.OPTIMIZER
    lr_range = dict(LR_RANGE)
    lr_range[cfg.MASKINIT.OPTIMIZER] = (cfg.SOLVER.BASE_LR / 10, cfg.SOLVER.BASE_LR * 10)  # around the preset's
    if not chosen and not dimensions:
        raise MaskinitError("nothing to search: every default dimension is fixed by an option and no --search KEY=... is given")
    max_iter = options.max_iter or cfg.SOLVER.MAX_ITER
    return SearchSpace(chosen, dimensions, optimizer, lr_range, dict(WD_RANGE), max_iter)


# ---------------------------------------------------------------------------------------------- pruning hook


def _pruning_hook_class():
    from detectron2.engine import HookBase

    from .hooks import StopRequested

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


# ---------------------------------------------------------------------------------------------- storage


def storage_url(output_dir: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(Path(output_dir) / STUDY_FILE).resolve()}"


# Errors of two processes creating a new database's tables at once (SQLite, PostgreSQL, MySQL words;
# https://github.com/optuna/optuna/issues/1092): the loser finds the tables made and opens the storage again.
SCHEMA_RACE = ("already exists", "duplicate key", "UNIQUE constraint failed", "Duplicate entry")


def open_storage(url: str, attempts: int = 5):
    """Optuna's RDB storage with a heartbeat: a trial whose process stopped beating for the grace
    period is failed and queued again by the next worker (any machine). SQLite waits for its lock.
    Workers started together on a new database race to create its tables: the loser tries again."""
    import time
    import warnings

    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=30, grace_period=180,
                                                  heartbeat_stale_trial_callback=retry_trial)
            except Exception as error:  # a bad URL, an unreachable server, a missing driver
                if attempt + 1 < attempts and any(words in str(error) for words in SCHEMA_RACE):
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise MaskinitError(f"cannot open the study storage {url}: {one_line(error)}") from None


def retry_trial(study, trial) -> None:
    """Queue a trial that did not end by itself (killed, interrupted, stale) again with its parameters,
    as Optuna's RetryHeartbeatStaleTrialCallback does, without the old trial's worker attributes."""
    import optuna

    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in ("retry_history", "failed_trial")}
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k not in (HOST, PID, FAILURE, ERROR, "interrupted")},
        system_attrs={**system_attrs, "failed_trial": history[0], "retry_history": history},
    ))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study) -> list[int]:
    """Running trials of this machine whose process is gone (killed): failed and queued again at once
    (the heartbeat would only after its grace period). Returns their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get(PID)
        if trial.user_attrs.get(HOST) != host or pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            won = study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker got there first
            continue
        if won:
            retry_trial(study, study._storage.get_trial(trial._trial_id))
            failed.append(trial.number)
    return failed


def counted(trial) -> bool:
    """A finished trial that counts toward `--trials`: complete, pruned, or failed by itself (diverged,
    an error); not one failed because its process was killed or interrupted (it is queued again)."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (trial.state == TrialState.FAIL and FAILURE in trial.user_attrs)


# ---------------------------------------------------------------------------------------------- results


@dataclass
class TrialRow:
    number: int
    state: str  # complete, pruned, diverged, failed, interrupted, killed, running, waiting
    ap: float | None
    params: dict
    seconds: float | None
    iterations: int | None
    note: str = ""
    output_dir: str | None = None


@dataclass
class TuneResult:
    study_name: str
    storage: str
    output_dir: Path
    trials: list[TrialRow]
    best: TrialRow | None
    best_config: Path | None
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    space: list[str] = field(default_factory=list)
    retrain_command: str | None = None
    ran_here: list[int] = field(default_factory=list)


def trial_row(trial) -> TrialRow:
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    state = trial.state.name.lower()
    if trial.state == TrialState.FAIL:
        state = attrs.get(FAILURE) or ("interrupted" if attrs.get("interrupted") else "killed")
    note = attrs.get(ERROR) or attrs.get("pruned") or ""
    if attrs.get(BASELINE):
        note = "the config's own values" + ("; " + note if note else "")
    if trial.system_attrs.get("failed_trial") is not None:
        note = (note + "; " if note else "") + f"retry of trial {trial.system_attrs['retry_history'][-1]}"
    ap = trial.value if trial.state == TrialState.COMPLETE else attrs.get("last_ap")
    return TrialRow(trial.number, state, ap, dict(trial.params), attrs.get("seconds"), attrs.get("iterations"), note,
                    attrs.get("output_dir"))


# ---------------------------------------------------------------------------------------------- the study


class TrialFailed(Exception):
    """A trial that ended by itself without a result (diverged, an error): recorded as failed; the study goes on."""


class StudyInterrupted(MaskinitError):
    """A signal stopped the trial running: the study stops, the trial is queued again for --resume."""


def trial_interruption(summary: dict, number: int, error: str) -> str:
    """Where a signal stopped a trial, from its run summary: the trial's own checkpoint and `maskinit
    train --resume` command (in `error`) do not apply, as `maskinit tune --resume` runs it again."""
    name = summary.get("signal")
    if not name:
        return f"{error.split(':')[0]} in trial {number}"
    where = "during an evaluation" if summary.get("during") == "evaluation" else f"at iteration {summary.get('iteration')}"
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
) -> TuneResult:
    """Search the training hyperparameters: `trials` finished trials in the whole study (complete,
    pruned or failed by themselves) and/or until `timeout` seconds have passed (a trial running then
    finishes). `options` are the training run options of every trial (`options.output_dir` is the
    study's folder, `options.eval_period` the pruning period, default a quarter of the run);
    `storage`: a database URL several processes share (default: `study.db` in the output dir, which
    needs `resume` to be continued); `pruner`: median, hyperband, none or an Optuna pruner;
    `baseline`: a new study's first trial runs the config's own values (SearchSpace.baseline);
    `val_fraction`: trials train on the rest of the training images and are scored on this share of
    them (data/split.py), never on the validation set.
    """
    import warnings

    import optuna
    from optuna.trial import TrialState

    from .config import config_value
    from .data.sources import validate_data
    from .run_dir import read_summary
    from .run_options import apply_run_options
    from .train import train

    if trials is None and timeout is None:
        raise MaskinitError("give --trials N and/or --timeout SECONDS")
    if trials is not None and trials < 1:
        raise MaskinitError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise MaskinitError(f"--timeout must be positive, got {timeout}")
    if options.num_gpus != 1 or options.num_machines != 1:
        raise MaskinitError("a tuning trial runs in one process: run one `maskinit tune` worker per GPU on one --storage")
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
    if storage is None:
        exists = (out / STUDY_FILE).is_file()
        if exists and not resume:
            raise MaskinitError(f"{out} already holds a study ({STUDY_FILE}): pass --resume to continue it, or choose another --output-dir")
        if resume and not exists:
            raise MaskinitError(f"nothing to resume: no {STUDY_FILE} in {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MaskinitError(f"output dir {out} is not writable: {error.strerror}") from None
    if val_fraction is not None:  # the trials' data: a split of the training set, the same in every worker;
        # checked before the study is created, in a folder of its own fraction and seed (a refused --resume
        # with another split leaves the study's files as they were)
        from .data.sources import use_embedded_default
        from .data.split import hold_back

        split_seed = sampler_seed_for(seed, options)
        training = checked.data if (checked.data.train_json or checked.data.dataset) else use_embedded_default(checked.data)
        split = hold_back(training, val_fraction, split_seed, out / SPLIT_DIR / f"{val_fraction:g}-seed{split_seed}")
        checked = checked._replace(data=split.data)
        notes.append(split.note)
    rdb = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the CLI shows the trials; the reasons are in the table
    joining = storage is not None and name in {s.study_name for s in optuna.study.get_all_study_summaries(rdb)}
    if resume and storage is not None and not joining:
        raise MaskinitError(f"nothing to resume: no study {name!r} in {url}")
    sampler_seed = seed if seed is not None else options.seed

    def make_sampler(offset: int):
        # a resumed study draws on from where it was (the same seed would draw trial 0's values again);
        # parallel workers must not draw the same values either
        drawn = None if sampler_seed is None else sampler_seed * 1_000_003 + offset + (os.getpid() if storage else 0)
        return optuna.samplers.TPESampler(seed=drawn, n_startup_trials=max(3, min(10, (trials or 30) // 3)),
                                          multivariate=True, group=True, constant_liar=storage is not None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(storage=rdb, study_name=name, direction="maximize", sampler=make_sampler(0),
                                    pruner=_make_pruner(pruner, space, period, trials), load_if_exists=True)
        existing = len(study.get_trials(deepcopy=False))
        if existing:
            study.sampler = make_sampler(existing)
        elif baseline:
            point = space.baseline(applied)  # what a plain `train` with these options runs (LR scaled with the batch, ...)
            if point:  # the config's own values first (a worker racing to it finds it queued and skips it)
                study.enqueue_trial(point, user_attrs={BASELINE: True}, skip_if_exists=True)
    signature = {**space.signature(), "eval_period": period}
    if val_fraction is not None:  # (absent otherwise: the studies of earlier versions stay resumable)
        signature["val_fraction"] = {"fraction": val_fraction, "seed": sampler_seed_for(seed, options)}
    known = study.user_attrs.get("maskinit_space")
    if known is None:
        study.set_user_attr("maskinit_space", signature)
    elif known != json.loads(json.dumps(signature)):
        raise MaskinitError(f"study {name!r} searched {json.dumps(known)}; this command searches {json.dumps(signature)}: "
                            "give the same options, or another --study-name/--output-dir")
    killed = fail_dead_trials(study)
    if killed:
        notes.append(f"trials {', '.join(map(str, killed))} were running in a process that is gone: failed and queued again")

    base_explicit = set(explicit_keys)
    trial_options = replace(options, data=checked.data, eval_period=period, resume=False, overwrite=False, skip_bad=False)
    deadline = None if timeout is None else time.monotonic() + timeout
    ran_here: list[int] = []
    current: dict = {}
    failures_in_a_row = 0

    def objective(trial) -> float:
        current["trial"] = trial
        trial.set_user_attr(HOST, socket.gethostname())
        trial.set_user_attr(PID, os.getpid())
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
                raise optuna.TrialPruned(hook.pruned) from None
            if summary.get("status") == "interrupted" or str(error).startswith("interrupted by"):
                trial.set_user_attr("interrupted", True)
                raise StudyInterrupted(trial_interruption(summary, trial.number, str(error))) from None
            diverged = hook.diverged or summary.get("status") == "diverged"
            trial.set_user_attr(FAILURE, "diverged" if diverged else "failed")
            trial.set_user_attr(ERROR, str(error)[:500])
            raise TrialFailed(str(error)) from None
        finally:
            _drop_new_handlers(handlers)
            gc.collect()
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        trial.set_user_attr("iterations", summary.get("iterations"))
        results = summary.get("eval", {})
        box = results.get("bbox", {}).get("AP")
        trial.set_user_attr("box_ap", box if box is not None and math.isfinite(box) else None)
        ap = results.get("segm", {}).get("AP")
        if ap is None or not math.isfinite(ap):
            trial.set_user_attr("note", "no detections: mask AP 0")
            return 0.0
        return float(ap)

    stop_reason = None
    while True:
        all_trials = study.get_trials(deepcopy=False)
        done = sum(1 for t in all_trials if counted(t))
        running = sum(1 for t in all_trials if t.state == TrialState.RUNNING)
        if trials is not None and done + running >= trials:
            if running:
                notes.append(f"{running} trial(s) still running in other workers")
            break
        if deadline is not None and time.monotonic() >= deadline:
            stop_reason = "timeout"
            break
        current.clear()
        try:
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
        except (StudyInterrupted, KeyboardInterrupt) as error:
            trial = current.get("trial")
            if trial is not None and study._storage.get_trial(trial._trial_id).state == TrialState.FAIL:
                retry_trial(study, study._storage.get_trial(trial._trial_id))
            if not isinstance(error, StudyInterrupted):
                raise
            again = f" (trial {trial.number} runs again from its start)" if trial is not None else ""
            raise StudyInterrupted(f"{error}; the study is kept in {url}: run the same maskinit tune command with "
                                   f"--resume to continue it{again}") from None
        trial = current.get("trial")
        if trial is None:
            continue
        ran_here.append(trial.number)
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state == TrialState.FAIL and frozen.user_attrs.get(FAILURE) == "failed":
            failures_in_a_row += 1
            if failures_in_a_row >= CONSECUTIVE_FAILURES:
                raise MaskinitError(f"{CONSECUTIVE_FAILURES} trials in a row failed; the last: {frozen.user_attrs.get(ERROR)}")
        else:
            failures_in_a_row = 0
    if stop_reason:
        notes.append(f"stopped by --timeout after {len(ran_here)} trial(s) here")
    return _report(study, url, out, cfg, options, space, notes, ran_here)


def study_name_for(output_dir: Path, storage: str | None, study_name: str | None) -> str:
    """The default storage holds this one study; a shared database tells its studies apart by name."""
    return study_name or ("maskinit" if storage is None else Path(output_dir).resolve().name)


def worker_env(index: int, count: int, device: str | None, environ: dict, gpus: int = 0) -> dict:
    """Worker `index` of `count`'s environment. On CUDA: one GPU, CUDA_VISIBLE_DEVICES = index modulo the
    GPUs (more workers than GPUs share them in turn). On CPU: an equal share of this machine's cores as
    OMP/MKL threads, unless the user set OMP_NUM_THREADS (then theirs, in every worker)."""
    env = dict(environ)
    if (device or "cuda").startswith("cuda") and gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    elif "OMP_NUM_THREADS" not in environ:
        threads = str(max(1, (os.cpu_count() or 1) // count))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def worker_place(env: dict) -> str:
    """Where a worker runs, in words: its GPU or its CPU threads."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    return f"CPU, {env.get('OMP_NUM_THREADS', 'all')} thread(s)"


def run_workers(count: int, argv: Sequence[str], output_dir: Path, url: str, name: str, *, resume: bool,
                default_storage: bool, device: str | None, gpus: int = 0, on_start=None) -> None:
    """`count` copies of the `maskinit tune` command line `argv` (sys.argv[1:]) working on one study
    (`url`, `name`), each placed by `worker_env`, its output in worker-N.log in the output dir.
    `on_start(index, pid, place, log)` is called as each starts. Returns when all have ended; a worker
    that failed (exit other than 0, or 1: no trial of its own completed) is a MaskinitError."""
    import subprocess
    import sys

    if count < 1:
        raise MaskinitError(f"--workers {count}: needs at least 1")
    if "tune" not in argv:
        raise MaskinitError("--workers needs the `maskinit tune` command line (use the library's tune() per process otherwise)")
    if default_storage and (Path(output_dir) / STUDY_FILE).is_file() and not resume:
        raise MaskinitError(f"{output_dir} already holds a study ({STUDY_FILE}): pass --resume to continue it, "
                            "or choose another --output-dir")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    open_storage(url)  # the database's tables made once, before the workers start (Optuna's advice in #1092)
    # --resume, --workers, --storage and --study-name are the launcher's; each worker gets its own values
    argv = _without_options(argv, flags=("--resume",), valued=("--workers", "--storage", "--study-name"))
    processes = []
    try:
        for index in range(count):
            env = worker_env(index, count, device, os.environ, gpus)
            log_path = Path(output_dir) / f"worker-{index}.log"
            log = open(log_path, "ab")
            command = [sys.executable, "-m", "maskinit", *argv, "--workers", "1", "--storage", url, "--study-name", name]
            processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
            if on_start:
                on_start(index, processes[-1][0].pid, worker_place(env), log_path)
        codes = [process.wait() for process, _ in processes]
    finally:  # interrupted: the workers stop too (their running trials are queued again on --resume)
        for process, log in processes:
            if process.poll() is None:
                process.terminate()
                process.wait()
            log.close()
    failed = [index for index, code in enumerate(codes) if code not in (0, 1)]
    if failed:
        raise MaskinitError(f"worker(s) {', '.join(map(str, failed))} failed: see {output_dir}/worker-N.log")


def _without_options(argv: Sequence[str], flags: Sequence[str], valued: Sequence[str]) -> list[str]:
    """argv without the given flags and valued options (`--opt value` and `--opt=value`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags or any(arg.startswith(option + "=") for option in valued):
            continue
        elif arg in valued:
            skip = True
        else:
            kept.append(arg)
    return kept


def study_report(cfg: CfgNode, options: TrainOptions, search: Sequence[str] = (), *, explicit_keys=frozenset(),
                 storage: str | None = None, study_name: str | None = None, default_space: bool = True,
                 **_tune_options) -> TuneResult:
    """The outputs of a study as it stands (after workers elsewhere ran its trials): the table, the
    best config and the plots, as `tune` returns them."""
    import optuna

    out = Path(options.output_dir)
    url = storage_url(out, storage)
    name = study_name_for(out, storage, study_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise MaskinitError(f"no study {name!r} in {url}") from None
    space = build_space(cfg, options, search, explicit_keys, defaults=default_space)
    return _report(study, url, out, cfg, options, space, [], [])


def _report(study, url: str, out: Path, cfg: CfgNode, options: TrainOptions, space: SearchSpace, notes: list,
            ran_here: list) -> TuneResult:
    from optuna.trial import TrialState

    from .atomic import write_atomically

    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    result = TuneResult(study.study_name, url, out, rows, None, None, notes=notes, space=space.describe(), ran_here=ran_here)
    try:
        write_atomically(out / TRIALS_FILE, json.dumps([row.__dict__ for row in rows], indent=2, default=str))
    except OSError as error:
        raise MaskinitError(f"cannot write {out / TRIALS_FILE}: {error.strerror}") from None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        result.best = trial_row(best)
        result.best_config = write_best_config(best, out, cfg)
        result.retrain_command = retrain_command(result.best_config, options)
    else:
        notes.append("no trial completed: no best config")
    result.plots, plot_notes = write_plots(study, out / PLOT_DIR)
    notes += plot_notes
    return result


def write_best_config(best, out: Path, base_cfg: CfgNode) -> Path:
    """The best trial's `config.yaml` as `<out>/best_config.yaml`, ready for `maskinit train --config`:
    its evaluation period set back to the config's own (the trials evaluated for pruning)."""
    import yaml

    from .atomic import write_atomically

    source = Path(best.user_attrs["output_dir"]) / "config.yaml"
    try:
        data = yaml.safe_load(source.read_text())
    except OSError as error:
        raise MaskinitError(f"cannot read the best trial's config {source}: {error.strerror}") from None
    data.setdefault("TEST", {})["EVAL_PERIOD"] = base_cfg.TEST.EVAL_PERIOD
    header = (f"# maskinit tune: best trial {best.number} of study in {out} (mask AP {best.value:.2f}); "
              f"retrain with maskinit train --config {out / BEST_CONFIG}\n")
    path = out / BEST_CONFIG
    try:
        write_atomically(path, header + yaml.safe_dump(data, default_flow_style=False, sort_keys=True))
    except OSError as error:
        raise MaskinitError(f"cannot write {path}: {error.strerror}") from None
    return path


def retrain_command(config: Path, options: TrainOptions) -> str:
    import shlex

    parts = ["maskinit", "train", "--config", str(config), "--output-dir", str(Path(options.output_dir) / "best"),
             *options.data.as_flags()]
    return " ".join(shlex.quote(part) for part in parts)


# ---------------------------------------------------------------------------------------------- plots


def _save(plot, path: Path) -> Path:
    """A matplotlib figure (or the axes Optuna's plots return) as a PNG, written atomically."""
    import io

    import matplotlib.pyplot as plt

    from .atomic import write_atomically

    figure = plot if hasattr(plot, "savefig") else plot.figure
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_atomically(path, buffer.getvalue())


def write_plots(study, folder: Path) -> tuple[list[Path], list[str]]:
    """Optimization history, parameter importances (>= 2 complete trials) and mask AP against LR, as PNG."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    paths, notes = [], []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return paths, ["no plots: no trial completed"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            paths.append(_save(optuna.visualization.matplotlib.plot_optimization_history(study, target_name="mask AP"),
                               folder / "optimization_history.png"))
        except Exception as error:  # a plot is a side output: say why it is missing, keep the results
            notes.append(f"no optimization history plot: {one_line(error)}")
        if len(complete) >= 2:
            try:
                paths.append(_save(optuna.visualization.matplotlib.plot_param_importances(study, target_name="mask AP"),
                                   folder / "param_importances.png"))
            except Exception as error:
                notes.append(f"no parameter importance plot: {one_line(error)}")
        else:
            notes.append("no parameter importance plot: it needs at least 2 complete trials")
    points = [(t, next((v for k, v in t.params.items() if k == "SOLVER.BASE_LR" or k.startswith("lr_")), None)) for t in complete]
    points = [(t, lr) for t, lr in points if lr is not None]
    if points:
        figure, axes = plt.subplots(figsize=(6, 4))
        groups: dict[str, list] = {}
        for t, lr in points:
            groups.setdefault(t.params.get("optimizer", ""), []).append((lr, t.value))
        for optimizer, pairs in sorted(groups.items()):
            axes.scatter([p[0] for p in pairs], [p[1] for p in pairs], label=optimizer or None)
        axes.set_xscale("log")
        axes.set_xlabel("base LR")
        axes.set_ylabel("mask AP")
        axes.set_title("mask AP against LR (complete trials)")
        if len(groups) > 1 or next(iter(groups)):
            axes.legend(title="optimizer")
        paths.append(_save(figure, folder / "ap_vs_lr.png"))
    else:
        notes.append("no AP-against-LR plot: the LR is not searched")
    return paths, notes
