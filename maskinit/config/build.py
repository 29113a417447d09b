"""Building a config in stages, each one recorded so that `--explain` can say why a key changed:
base (a Detectron2 model-zoo config or a local YAML) -> preset (a YAML under `configs/`, which
carries the from-scratch recipe; or `--recipe NAME`, a published recipe under `configs/recipes/`)
-> `--norm`/`--init`/`--schedule`/`--ims-per-batch`/`--num-classes`
-> trailing `KEY VALUE` overrides. `--config FILE` replaces base and preset with a complete file.
The config built is checked (`maskinit.config.checks.check_config`) before it is returned.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from detectron2.config import CfgNode

from ..cfgkeys import MISSING, flatten, get_key
from ..errors import MaskinitError, one_line
from ..recipes import preset_file, recipe_file
from .checks import check_config, refuse_pretrained_settings
from .defaults import ADAPTIVE_OPTIMIZERS, new_config

DEFAULT_BASE = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
DEFAULT_PRESET = "r50-fpn"
SCHEDULES = {"1x": 1, "3x": 3, "6x": 6, "9x": 9}
# Detectron2's 1x: 90k iterations at batch 16, LR steps 30k and 10k before the end; longer
# schedules step 60k and 20k before the end (3x: 210k/250k of 270k; 9x: 750k/790k of 810k).
ITERS_PER_X_AT_16 = 90000
# The ResNet keys an explicit `--base` keeps over the preset's (a ResNeXt base stays a ResNeXt).
BACKBONE_KEYS = ("DEPTH", "NUM_GROUPS", "WIDTH_PER_GROUP", "RES2_OUT_CHANNELS")

# Why the from-scratch rules change what they change (shown by `export-config --explain`).
REASONS = {
    "MODEL.WEIGHTS": "from scratch: nothing pretrained is loaded",
    "MODEL.BACKBONE.FREEZE_AT": "random stem and res2 must train; frozen random layers never learn",
    "MODEL.RESNETS.NORM": "trainable norm: FrozenBN keeps random statistics forever",
    "MODEL.FPN.NORM": "trainable norm in the FPN, as Detectron2's scratch recipes",
    "MODEL.ROI_BOX_HEAD.NORM": "trainable norm in the box head, as Detectron2's scratch recipes",
    "MODEL.ROI_MASK_HEAD.NORM": "trainable norm in the mask head, as Detectron2's scratch recipes",
    "MODEL.RESNETS.STRIDE_IN_1X1": "stride in the 3x3 conv; the 1x1 stride only matches Caffe2 weights",
    "MODEL.PIXEL_STD": "unit-variance input for random weights (std of ImageNet pixels)",
    "MODEL.PIXEL_MEAN": "mean of ImageNet pixels (BGR), paired with PIXEL_STD",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": "4conv1fc box head, as Detectron2's configs/Misc/scratch_*",
    "MODEL.ROI_BOX_HEAD.NUM_FC": "4conv1fc box head, as Detectron2's configs/Misc/scratch_*",
    "MODEL.ROI_BOX_HEAD.NAME": "conv+fc box head (4conv1fc)",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": "one box regressor for all classes: "
    "every foreground proposal trains it",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": "one mask for all classes: every foreground proposal trains it",
    "SOLVER.WEIGHT_DECAY": "AdamW's decoupled weight decay (the default optimizer; SGD wants about 1e-4)",
    "SOLVER.CLIP_GRADIENTS.ENABLED": "random-init heads give large early gradients: clip each parameter's at norm 1",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "per-parameter gradient-norm clipping",
    "MODEL.ANCHOR_GENERATOR.SIZES": "anchors scaled to the preset's image size",
}


def zoo_config_file(name: str) -> str:
    from detectron2 import model_zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return model_zoo.get_config_file(name)
        except RuntimeError:
            return ""


def base_config_file(base: str) -> str:
    """A local YAML path, or the file of a Detectron2 model-zoo config name."""
    if Path(base).is_file():
        return str(base)
    path = zoo_config_file(base)
    if path:
        return path
    raise MaskinitError(f"unknown base config {base!r}: not a file and not a Detectron2 model-zoo config name")


def check_yaml_file(path: str | Path, what: str) -> None:
    """A one-line MaskinitError when the YAML file, or one in its `_BASE_` chain, cannot be a config:
    missing, unreadable, empty, not a mapping of keys, or a `_BASE_` cycle (Detectron2 recurses forever)."""

    def visit(file: Path, chain: tuple[Path, ...]) -> None:
        where = f"{what} {path}" if not chain else f"{what} {path}: its _BASE_ {file}"
        real = file.resolve()
        if real in chain:
            loop = " -> ".join(p.name for p in (*chain[chain.index(real):], real))
            raise MaskinitError(f"{what} {path}: _BASE_ cycle {loop}")
        if not file.is_file():
            raise MaskinitError(f"{where} not found")
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as error:
            raise MaskinitError(f"{where} is not valid YAML: {one_line(error)}") from error
        except (OSError, UnicodeDecodeError) as error:
            raise MaskinitError(f"cannot read {where}: {one_line(error)}") from error
        if data is None:
            raise MaskinitError(f"{where} is empty")
        if not isinstance(data, dict):
            raise MaskinitError(f"{where} is a YAML {type(data).__name__}, not a mapping of config keys")
        bases = data.get("_BASE_")
        for base in bases if isinstance(bases, list) else [] if bases is None else [bases]:
            if not isinstance(base, str) or not base:
                raise MaskinitError(f"{where}: _BASE_ must name a YAML file, got {base!r}")
            if base.startswith(("https://", "http://")):
                continue  # Detectron2's PathManager reports those itself
            visit(file.parent / Path(base).expanduser(), (*chain, real))

    visit(Path(path), ())


def merge_file(cfg: CfgNode, path: str | Path, what: str) -> None:
    check_yaml_file(path, what)
    try:
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except FileNotFoundError as error:
        raise MaskinitError(f"{what} {path} not found") from error
    except yaml.YAMLError as error:
        raise MaskinitError(f"{what} {path} is not valid YAML: {str(error).splitlines()[0]}") from error
    except KeyError as error:
        raise MaskinitError(f"{what} {path}: unknown config key {error.args[0]}") from error
    except (ValueError, AssertionError, TypeError, AttributeError) as error:
        raise MaskinitError(f"{what} {path}: {one_line(error)}") from error


def merge_overrides(cfg: CfgNode, overrides: Sequence[str]) -> None:
    """Trailing `KEY VALUE` pairs, as Detectron2's `opts`. The CLI passes unknown options here (so that
    a negative value parses): one in a key's place is refused as the option it looks like."""
    overrides = list(overrides)
    for key in overrides[::2]:
        if key.startswith("-"):
            raise MaskinitError(f"no such option: {key}")
    if len(overrides) % 2:
        raise MaskinitError(f"overrides must be KEY VALUE pairs; {overrides[-1]!r} has no value")
    for key, value in zip(overrides[::2], overrides[1::2]):
        try:
            cfg.merge_from_list([key, _float_literal(cfg, key, value)])
        except KeyError as error:
            raise MaskinitError(f"unknown config key {key}") from error
        except (ValueError, AssertionError, TypeError) as error:
            if "Non-existent key" in str(error):
                raise MaskinitError(f"unknown config key {key}") from error
            raise MaskinitError(f"bad value {value!r} for {key}: {one_line(error)}") from error


def _float_literal(cfg: CfgNode, key: str, value: str) -> str:
    """`0` or `-1` for a float key means the float: yacs would refuse the int as a type mismatch."""
    from ast import literal_eval

    node = get_key(cfg, key, MISSING)
    if node is MISSING:
        return value
    try:
        number = literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value
    if isinstance(node, float) and isinstance(number, int) and not isinstance(number, bool):
        return repr(float(number))
    return value


def sync_norm_keys(cfg: CfgNode) -> None:
    """Write the norm variant's stock Detectron2 name into every component's NORM key."""
    from ..norms import NORM_KEYS, build_norm_variant

    variant = build_norm_variant(cfg.MASKINIT.NORM)
    cfg.merge_from_list([part for key in NORM_KEYS for part in (key, variant.detectron2_name)])


def apply_schedule(cfg: CfgNode, schedule: str) -> None:
    """Detectron2's Nx schedule, expressed at the config's batch size."""
    if schedule not in SCHEDULES:
        raise MaskinitError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    factor = SCHEDULES[schedule]
    max_iter = ITERS_PER_X_AT_16 * factor
    before_end = (30000, 10000) if factor == 1 else (60000, 20000)
    scale = 16 / cfg.SOLVER.IMS_PER_BATCH
    cfg.SOLVER.MAX_ITER = int(round(max_iter * scale))
    cfg.SOLVER.STEPS = tuple(int(round((max_iter - gap) * scale)) for gap in before_end)


def apply_ims_per_batch(cfg: CfgNode, ims_per_batch: int) -> None:
    """Iterations (steps, warmup, periods) against the batch; the LR with it: linearly for SGD (Goyal
    et al.), by the square root for Adam/AdamW (Malladi et al. 2022), whose updates are normalized."""
    from detectron2.engine import DefaultTrainer

    if ims_per_batch < 1:
        raise MaskinitError(f"--ims-per-batch must be at least 1, got {ims_per_batch}")
    old = cfg.SOLVER.IMS_PER_BATCH
    if ims_per_batch == old:
        return
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    # Detectron2's auto_scale_workers does exactly this arithmetic when the "world size" is the batch.
    cfg.SOLVER.REFERENCE_WORLD_SIZE = old
    scaled = DefaultTrainer.auto_scale_workers(cfg, ims_per_batch)
    scaled.SOLVER.REFERENCE_WORLD_SIZE = reference
    if cfg.MASKINIT.OPTIMIZER in ADAPTIVE_OPTIMIZERS:
        scaled.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * math.sqrt(ims_per_batch / old)
    cfg.merge_from_other_cfg(scaled)


def _stated_maskinit_norm(path: str | Path) -> bool:
    try:
        raw = CfgNode.load_yaml_with_base(str(path), allow_unsafe=False)
    except Exception:  # merge_file reports unreadable files
        return True
    return isinstance(raw, dict) and "NORM" in (raw.get("MASKINIT") or {})


class ConfigBuild:
    """A config plus the stage at which each key last changed (for `--explain`)."""

    def __init__(self, cfg: CfgNode, base: CfgNode):
        self.cfg = cfg
        self.base = base
        self.origins: dict[str, str] = {}
        self._last = flatten(cfg)

    def stage(self, label: str) -> None:
        now = flatten(self.cfg)
        for key, value in now.items():
            if self._last.get(key) != value:
                self.origins[key] = label
        self._last = now

    def differences(self) -> list[tuple[str, object, object, str]]:
        """`(key, base value, final value, reason)` for every key that differs from the base."""
        base = flatten(self.base)
        rows = []
        for key, value in flatten(self.cfg).items():
            if base.get(key, "<absent>") != value:
                reason = REASONS.get(key) or self.origins.get(key, "maskinit")
                if key.startswith("MASKINIT."):
                    reason = self.origins.get(key, "maskinit default")
                rows.append((key, base.get(key, "(maskinit key)"), value, reason))
        return rows


def build_config(
    path: str | Path | None = None,
    preset: str | None = None,
    norm: str | None = None,
    init: str | None = None,
    overrides: Iterable[str] = (),
    *,
    base: str | None = None,
    schedule: str | None = None,
    ims_per_batch: int | None = None,
    num_classes: int | None = None,
    plugins: Sequence[str] = (),
    recipe: str | None = None,
) -> ConfigBuild:
    """The staged build behind `load_config` and `export_config`."""
    from ..plugins import load_plugins

    if recipe:
        given = [flag for flag, value in (("--preset", preset), ("--config", path), ("--base", base)) if value]
        if given:
            raise MaskinitError(f"--recipe is a complete published recipe: do not combine it with {' or '.join(given)}")
    load_plugins(plugins)
    base_cfg = new_config()
    merge_file(base_cfg, base_config_file(base or DEFAULT_BASE), "base config")
    if path is not None:
        if preset or base:
            raise MaskinitError("--config is a complete config: do not combine it with --preset or --base")
        cfg = new_config()
        merge_file(cfg, path, "config")
        refuse_pretrained_settings(cfg, f"config {path}")
        if not _stated_maskinit_norm(path):  # a --plain export: its stock norm names the variant
            cfg.MASKINIT.NORM = cfg.MODEL.RESNETS.NORM or "none"
        build = ConfigBuild(cfg, base_cfg)
        build.stage(f"config {path}")
    else:
        build = ConfigBuild(base_cfg.clone(), base_cfg)
        cfg = build.cfg
        if recipe:  # a recipe replaces the preset stage
            merge_file(cfg, recipe_file(recipe), "recipe")
            cfg.MASKINIT.RECIPE = recipe
            build.stage(f"recipe {recipe}")
        else:
            preset = preset or DEFAULT_PRESET
            merge_file(cfg, preset_file(preset), "preset")
            cfg.MASKINIT.PRESET = preset
            build.stage(f"preset {preset}")
            if base:  # the stated base keeps its backbone; STRIDE_IN_1X1 stays the preset's False
                for key in BACKBONE_KEYS:
                    cfg.MODEL.RESNETS[key] = base_cfg.MODEL.RESNETS[key]
                build.stage(f"--base {base} (its backbone)")
    load_plugins(cfg.MASKINIT.PLUGINS)
    if plugins:
        cfg.MASKINIT.PLUGINS = sorted(set(cfg.MASKINIT.PLUGINS) | set(plugins))
    if norm:
        cfg.MASKINIT.NORM = norm
        build.stage("--norm")
    if init:
        cfg.MASKINIT.INIT = init
        build.stage("--init")
    if schedule:
        apply_schedule(cfg, schedule)
        build.stage(f"--schedule {schedule}")
    if ims_per_batch is not None:
        apply_ims_per_batch(cfg, ims_per_batch)
        build.stage("--ims-per-batch (LR scaling rule)")
    if num_classes is not None:
        if num_classes < 1:
            raise MaskinitError(f"--num-classes must be at least 1, got {num_classes}")
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
        build.stage("--num-classes")
    overrides = list(overrides)
    if overrides:
        merge_overrides(cfg, overrides)
        refuse_pretrained_settings(cfg, "override")
        build.stage("override")
    load_plugins(cfg.MASKINIT.PLUGINS)
    sync_norm_keys(cfg)  # Detectron2's own norm keys follow the variant (a bad norm spec stops here)
    build.stage(f"norm {cfg.MASKINIT.NORM}")
    check_config(cfg)
    return build


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    norm: str | None = None,
    init: str | None = None,
    overrides: Iterable[str] = (),
    **options,
) -> CfgNode:
    """A Detectron2 `CfgNode` for training from scratch (see `build_config` for the stages)."""
    return build_config(path, preset, norm, init, overrides, **options).cfg
