"""The search space of a study: `--search KEY=...` specs checked against the config, and maskinit's
default dimensions (the LR and weight decay ranges depend on the optimizer, as SGD and AdamW want
values 10-500x apart), with the baseline point (the config's own values)."""

from __future__ import annotations

import math
from ast import literal_eval
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cfgkeys import MISSING, get_key
from ..config.checks import check_value
from ..errors import MaskinitError

if TYPE_CHECKING:
    import optuna
    from detectron2.config import CfgNode

    from ..run_options import TrainOptions

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
    node = get_key(cfg, key, MISSING)
    if node is MISSING:
        raise MaskinitError(f"--search {spec!r}: unknown config key {key}")
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
        except ValueError as error:
            raise MaskinitError(f"--search {spec!r}: low and high must be numbers") from error
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise MaskinitError(f"--search {spec!r}: need finite low < high, got {low:g} and {high:g}")
        log = "log" in flags
        if log and low <= 0:
            raise MaskinitError(f"--search {spec!r}: a log range needs low > 0, got {low:g}")
        integer = "int" in flags or isinstance(node, int)
        if integer and (not low.is_integer() or not high.is_integer()):
            raise MaskinitError(f"--search {spec!r}: {key} takes integers, got {low:g}:{high:g}")
        _check_each(spec, key, (int(low), int(high)) if integer else (low, high))
        return SearchDimension(key, low, high, log=log, integer=integer)
    choices = tuple(_coerce(key, node, _literal(text.strip())) for text in values.split(",") if text.strip())
    if len(set(map(repr, choices))) != len(choices):
        raise MaskinitError(f"--search {spec!r}: a choice is given twice")
    if not choices:
        raise MaskinitError(f"--search {spec!r}: no choices")
    _check_each(spec, key, choices)
    return SearchDimension(key, choices=choices)


def _check_each(spec: str, key: str, values) -> None:
    """Each choice (or each end of a range) by the key's rule, before any trial runs: a value every
    trial that draws it would fail on is refused here (`MASKINIT.FIT=off,most`, `SOLVER.BASE_LR=0:0.1`)."""
    for value in values:
        try:
            check_value(key, value)
        except MaskinitError as error:
            raise MaskinitError(f"--search {spec!r}: {error}") from error


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
        from ..config import config_value

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
            lines += [f"LR ({name}): {self.lr_range[name][0]:g} to {self.lr_range[name][1]:g}, log" for name in names]
        if "weight_decay" in self.defaults:
            lines += [f"weight decay ({name}): {self.wd_range[name][0]:g} to {self.wd_range[name][1]:g}, log"
                      for name in names]
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
        raise MaskinitError("nothing to search: every default dimension is fixed by an option "
                            "and no --search KEY=... is given")
    max_iter = options.max_iter or cfg.SOLVER.MAX_ITER
    return SearchSpace(chosen, dimensions, optimizer, lr_range, dict(WD_RANGE), max_iter)

