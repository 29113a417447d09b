"""Checking a built config: the from-scratch rules, and every `MASKINIT.*` key and the Detectron2 keys a user
is likely to get wrong, each by a declarative rule (`VALUE_RULES`: what a value must be; `CHOICE_RULES`: the
values a key accepts) or, where keys depend on each other, by `check_config` itself."""

from __future__ import annotations

import math

from detectron2.config import CfgNode

from ..cfgkeys import flatten, get_key
from ..errors import MaskinitError
from .defaults import AMP_DTYPES, FIT_MODES, LR_SCHEDULES, OPTIMIZERS, RESNET_DEPTHS


def refuse_pretrained_settings(cfg: CfgNode, source: str) -> None:
    """What a user states (a config file, overrides) may not undo training from scratch."""
    from ..norms import REFUSED_NORMS

    if cfg.MODEL.WEIGHTS:
        raise MaskinitError(
            f"{source} sets MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r}: maskinit trains from scratch and loads no weights"
        )
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        raise MaskinitError(
            f"{source} sets MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT}: "
            "from scratch every stage must train (0)"
        )
    for key, value in flatten(cfg).items():
        if key.endswith(".NORM") and value in REFUSED_NORMS:
            raise MaskinitError(f"{source} sets {key}={value}: " + REFUSED_NORMS[value])


def check_from_scratch(cfg: CfgNode) -> None:
    """The rules every maskinit config obeys; a violation here is a bug or a hand-edited file."""
    refuse_pretrained_settings(cfg, "config")
    if cfg.MODEL.RESNETS.DEPTH >= 50 and cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        raise MaskinitError("MODEL.RESNETS.STRIDE_IN_1X1 must be False when training from scratch")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(low):
    return lambda value: _number(value) and value >= low


def _between(low, high, low_open: bool = False, high_open: bool = False):
    return lambda value: (
        _number(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )


def _positive(value) -> bool:
    return _number(value) and value > 0


def _increasing_iterations(steps) -> bool:
    return all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps) and all(
        a < b for a, b in zip(steps, steps[1:])
    )


# (key, test, what a value must be): the keys a user is likely to get wrong, checked by `check_config`.
VALUE_RULES = (
    ("MASKINIT.PRIOR_PROB", _between(0, 1, high_open=True), "in [0, 1) (0 disables the prior)"),
    ("MASKINIT.PLATEAU.PERIOD", _at_least(1), "at least 1"),
    ("MASKINIT.PLATEAU.PATIENCE", _at_least(0), "at least 0"),
    ("MASKINIT.PLATEAU.FACTOR", _between(0, 1, low_open=True, high_open=True), "in (0, 1)"),
    ("MASKINIT.PLATEAU.MIN_LR", _at_least(0), "a finite number >= 0"),
    ("MASKINIT.PLATEAU.THRESHOLD", _between(0, 1, high_open=True), "in [0, 1) (0: any improvement counts)"),
    ("MASKINIT.PLATEAU.COOLDOWN", _at_least(0), "at least 0"),
    ("MASKINIT.DATA.VAL_FRACTION", _between(0, 1, high_open=True), "in [0, 1) (0: nothing held back)"),
    ("MASKINIT.DATA.SPLIT_SEED", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    ("SOLVER.BASE_LR", _positive, "a positive finite number"),
    ("SOLVER.MAX_ITER", _at_least(1), "at least 1"),
    ("SOLVER.IMS_PER_BATCH", _at_least(1), "at least 1"),
    ("SOLVER.CHECKPOINT_PERIOD", _at_least(1), "at least 1"),
    ("SOLVER.WARMUP_ITERS", _at_least(0), "at least 0"),
    ("SOLVER.WARMUP_FACTOR", _between(0, 1), "in [0, 1]"),
    ("SOLVER.STEPS", _increasing_iterations, "increasing iterations, each at least 1"),
    ("SOLVER.GAMMA", _positive, "a positive finite number"),
    ("SOLVER.MOMENTUM", _between(0, 1, high_open=True), "in [0, 1)"),
    ("SOLVER.WEIGHT_DECAY", _at_least(0), "a finite number >= 0"),
    ("SOLVER.REFERENCE_WORLD_SIZE", _at_least(0), "at least 0"),
    ("MODEL.PIXEL_MEAN", lambda v: len(v) > 0 and all(_number(x) for x in v), "finite numbers"),
    (
        "MODEL.PIXEL_STD",
        lambda v: len(v) > 0 and all(_positive(x) for x in v),
        "positive finite numbers (one per channel)",
    ),
    ("MODEL.RESNETS.NUM_GROUPS", _at_least(1), "at least 1"),
    ("MODEL.RESNETS.WIDTH_PER_GROUP", _at_least(1), "at least 1"),
    ("MODEL.RESNETS.RES2_OUT_CHANNELS", _at_least(1), "at least 1"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", _at_least(1), "at least 1"),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", _at_least(1), "at least 1"),
    ("MODEL.ROI_HEADS.POSITIVE_FRACTION", _between(0, 1, low_open=True), "in (0, 1]"),
    ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", _between(0, 1), "in [0, 1]"),
    ("MODEL.ROI_HEADS.NMS_THRESH_TEST", _between(0, 1), "in [0, 1]"),
    ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", _at_least(1), "at least 1"),
    ("MODEL.RPN.POSITIVE_FRACTION", _between(0, 1, low_open=True), "in (0, 1]"),
    ("INPUT.MIN_SIZE_TRAIN", lambda v: len(v) > 0 and all(_at_least(1)(x) for x in v), "sizes of at least 1"),
    ("INPUT.MAX_SIZE_TRAIN", _at_least(1), "at least 1"),
    ("INPUT.MIN_SIZE_TEST", _at_least(0), "at least 0 (0: no resize)"),
    ("INPUT.MAX_SIZE_TEST", _at_least(1), "at least 1"),
    ("TEST.EVAL_PERIOD", _at_least(0), "at least 0 (0: only at the end)"),
    ("TEST.DETECTIONS_PER_IMAGE", _at_least(1), "at least 1"),
    ("DATALOADER.NUM_WORKERS", _at_least(0), "at least 0"),
)
# (key, what it names, the values Detectron2 or maskinit accept).
CHOICE_RULES = (
    ("MASKINIT.OPTIMIZER", "optimizer", OPTIMIZERS),
    ("MASKINIT.LR_SCHEDULE", "LR schedule", LR_SCHEDULES),
    ("MASKINIT.AMP_DTYPE", "AMP dtype", AMP_DTYPES),
    ("MASKINIT.FIT", "fit mode", FIT_MODES),
    ("SOLVER.LR_SCHEDULER_NAME", "LR scheduler", ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")),
    ("SOLVER.WARMUP_METHOD", "warmup method", ("linear", "constant")),
    ("MODEL.RESNETS.DEPTH", "ResNet depth", RESNET_DEPTHS),
)


_CHOICES = {key: (name, choices) for key, name, choices in CHOICE_RULES}
_VALUES = {key: (test, rule) for key, test, rule in VALUE_RULES}


def check_value(key: str, value) -> None:
    """`value` for `key` by the key's rule in `CHOICE_RULES` or `VALUE_RULES` (a key with no rule passes):
    the one-line MaskinitError `check_config` raises for it. `tune --search` checks its choices with it."""
    if key in _CHOICES:
        name, choices = _CHOICES[key]
        if value not in choices:
            raise MaskinitError(f"unknown {name} {value!r} for {key} (known: {', '.join(map(str, choices))})")
    if key in _VALUES:
        test, rule = _VALUES[key]
        try:
            ok = bool(test(value))
        except TypeError:  # a number where a list belongs, or the reverse
            ok = False
        if not ok:
            raise MaskinitError(f"{key} must be {rule}, got {value!r}")


def check_config(cfg: CfgNode) -> None:
    """Every `MASKINIT.*` key and the Detectron2 keys a user is likely to get wrong, checked when the
    config is built: a one-line MaskinitError naming the first bad key and its value."""
    from ..augment import check_augment
    from ..ema import check_ema
    from ..initializers import build_initializer
    from ..norms import build_norm_variant

    check_from_scratch(cfg)
    for key, _, _ in CHOICE_RULES:
        check_value(key, get_key(cfg, key))
    for key, _, _ in VALUE_RULES:
        check_value(key, get_key(cfg, key))
    model = cfg.MODEL
    if len(model.PIXEL_MEAN) != len(model.PIXEL_STD):
        raise MaskinitError(
            "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need one value per channel each, "
            f"got {len(model.PIXEL_MEAN)} and {len(model.PIXEL_STD)}"
        )
    resnets = model.RESNETS
    if resnets.DEPTH in (18, 34) and (resnets.RES2_OUT_CHANNELS != 64 or resnets.NUM_GROUPS != 1):
        raise MaskinitError(
            f"MODEL.RESNETS.DEPTH {resnets.DEPTH} needs RES2_OUT_CHANNELS 64 and NUM_GROUPS 1, "
            f"got {resnets.RES2_OUT_CHANNELS} and {resnets.NUM_GROUPS}"
        )
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED:
        if clip.CLIP_TYPE not in ("value", "norm"):
            raise MaskinitError(
                f"unknown clip type {clip.CLIP_TYPE!r} for SOLVER.CLIP_GRADIENTS.CLIP_TYPE (known: value, norm)"
            )
        if not _positive(clip.CLIP_VALUE):
            raise MaskinitError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be a positive finite number, got {clip.CLIP_VALUE!r}"
            )
        if not (_positive(clip.NORM_TYPE) or clip.NORM_TYPE == math.inf):
            raise MaskinitError(
                f"SOLVER.CLIP_GRADIENTS.NORM_TYPE must be positive (inf: max norm), got {clip.NORM_TYPE!r}"
            )
    names, ids = cfg.MASKINIT.CLASS_NAMES, cfg.MASKINIT.CLASS_IDS
    if len(names) != len(ids):
        raise MaskinitError(
            f"MASKINIT.CLASS_NAMES and MASKINIT.CLASS_IDS differ in length: {len(names)} and {len(ids)}"
        )
    if names and len(names) != model.ROI_HEADS.NUM_CLASSES:
        raise MaskinitError(
            f"MASKINIT.CLASS_NAMES names {len(names)} classes "
            f"but MODEL.ROI_HEADS.NUM_CLASSES is {model.ROI_HEADS.NUM_CLASSES}"
        )
    if not isinstance(cfg.MASKINIT.PLATEAU.METRIC, str) or not cfg.MASKINIT.PLATEAU.METRIC:
        raise MaskinitError(
            "MASKINIT.PLATEAU.METRIC must name a metric (total_loss, segm/AP, ...), "
            f"got {cfg.MASKINIT.PLATEAU.METRIC!r}"
        )
    if cfg.MASKINIT.DATA.FORMAT:
        from ..data.formats import FORMAT_NAMES

        if cfg.MASKINIT.DATA.FORMAT not in FORMAT_NAMES:
            raise MaskinitError(f"unknown data format {cfg.MASKINIT.DATA.FORMAT!r} for MASKINIT.DATA.FORMAT "
                                f"(known: {', '.join(FORMAT_NAMES)})")
    check_augment(cfg)
    check_ema(cfg)
    build_norm_variant(cfg.MASKINIT.NORM)
    for key, spec in [
        ("INIT", cfg.MASKINIT.INIT),
        *(("COMPONENT_INIT." + k, v) for k, v in cfg.MASKINIT.COMPONENT_INIT.items()),
    ]:
        if spec or key == "INIT":
            try:
                build_initializer(spec)
            except MaskinitError as error:
                raise MaskinitError(f"MASKINIT.{key}: {error}") from error
