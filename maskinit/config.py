"""From-scratch Detectron2 configs: `cfg.MASKINIT`, presets, the from-scratch rules, export.

A config is built in stages, each one recorded so that `--explain` can say why a key changed:
base (a Detectron2 model-zoo config or a local YAML) -> preset (a YAML under `configs/`, which
carries the from-scratch recipe; or `--recipe NAME`, a published recipe under `configs/recipes/`)
-> `--norm`/`--init`/`--schedule`/`--ims-per-batch`/`--num-classes`
-> trailing `KEY VALUE` overrides. `--config FILE` replaces base and preset with a complete file.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from detectron2.config import CfgNode, get_cfg

from .atomic import write_atomically
from .errors import MaskinitError, one_line
from .recipes import list_presets, preset_file, recipe_file  # noqa: F401 - presets and recipes live in recipes.py

DEFAULT_BASE = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
DEFAULT_PRESET = "r50-fpn"
SCHEDULES = {"1x": 1, "3x": 3, "6x": 6, "9x": 9}
# Detectron2's 1x: 90k iterations at batch 16, LR steps 30k and 10k before the end; longer
# schedules step 60k and 20k before the end (3x: 210k/250k of 270k; 9x: 750k/790k of 810k).
ITERS_PER_X_AT_16 = 90000

# Optimizers `MASKINIT.OPTIMIZER` accepts; the adaptive ones want LRs and weight decays of their own.
ADAPTIVE_OPTIMIZERS = ("adam", "adamw")
OPTIMIZERS = ("sgd", *ADAPTIVE_OPTIMIZERS)
LR_SCHEDULES = ("step", "cosine", "plateau")
AMP_DTYPES = ("auto", "bfloat16", "float16")
# ResNet depths Detectron2's build_resnet_backbone knows.
RESNET_DEPTHS = (18, 34, 50, 101, 152)
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
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": "one box regressor for all classes: every foreground proposal trains it",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": "one mask for all classes: every foreground proposal trains it",
    "SOLVER.WEIGHT_DECAY": "AdamW's decoupled weight decay (the default optimizer; SGD wants about 1e-4)",
    "SOLVER.CLIP_GRADIENTS.ENABLED": "random-init heads give large early gradients: clip each parameter's at norm 1",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "per-parameter gradient-norm clipping",
    "MODEL.ANCHOR_GENERATOR.SIZES": "anchors scaled to the preset's image size",
}


def add_maskinit_config(cfg: CfgNode) -> CfgNode:
    """Add the `cfg.MASKINIT` keys (Detectron2's `add_*_config` extension style)."""
    if "MASKINIT" in cfg:
        return cfg
    _C = cfg
    _C.MASKINIT = CfgNode()
    # Name of the preset this config started from (informational).
    _C.MASKINIT.PRESET = ""
    # Name of the published recipe (configs/recipes/) this config started from (informational).
    _C.MASKINIT.RECIPE = ""
    # Norm variant for backbone, FPN, box head and mask head: NAME[:key=value,...] from the norm registry.
    _C.MASKINIT.NORM = "GN"
    # Also put the norm variant into the RPN head's convolutions.
    _C.MASKINIT.RPN_NORM = False
    # Initializer for every component without one of its own: NAME[:key=value,...].
    _C.MASKINIT.INIT = "c2"
    # Per-component initializers; empty means MASKINIT.INIT.
    _C.MASKINIT.COMPONENT_INIT = CfgNode()
    # Initializer of the ResNet bottom-up backbone.
    _C.MASKINIT.COMPONENT_INIT.BACKBONE = ""
    # Initializer of the FPN lateral and output convolutions.
    _C.MASKINIT.COMPONENT_INIT.FPN = ""
    # Initializer of the RPN head's hidden convolutions.
    _C.MASKINIT.COMPONENT_INIT.RPN = ""
    # Initializer of the box head's convolutions and FCs.
    _C.MASKINIT.COMPONENT_INIT.BOX_HEAD = ""
    # Initializer of the mask head's convolutions and deconvolution.
    _C.MASKINIT.COMPONENT_INIT.MASK_HEAD = ""
    # Keep Detectron2's detection-head priors (box cls std 0.01, box reg 0.001, mask 0.001, RPN 0.01).
    _C.MASKINIT.HEAD_PRIORS = True
    # Focal-style prior foreground probability for the RPN and box classifier biases; 0 disables.
    _C.MASKINIT.PRIOR_PROB = 0.0
    # Zero-init the scale of the last norm in each residual block (Goyal et al.).
    _C.MASKINIT.ZERO_INIT_RESIDUAL = False
    # Python modules imported before building, registering initializers and norms.
    _C.MASKINIT.PLUGINS = []
    # Optimizer: sgd (Detectron2's), adam or adamw (same parameter groups, weight decay and clipping).
    _C.MASKINIT.OPTIMIZER = "sgd"
    # LR schedule after warmup: step (SOLVER.STEPS), cosine, or plateau (see MASKINIT.PLATEAU).
    _C.MASKINIT.LR_SCHEDULE = "step"
    # Fit the config to the user's training data (data/fit.py): safe (pixel statistics, anchors, counts, and a
    # larger input or RoI batch only within 1.2x the preset's estimated s/iter), full (the input and RoI batch the
    # objects need, at any cost) or off.
    _C.MASKINIT.FIT = "safe"
    # False turns the fit off whatever MASKINIT.FIT says (the switch configs written before MASKINIT.FIT carry).
    _C.MASKINIT.FIT_TO_DATA = True
    # Refuse, before training, a run whose estimated peak memory exceeds what this machine has (maskinit/machine.py).
    _C.MASKINIT.MEMORY_CHECK = True
    # Mixed-precision dtype when SOLVER.AMP.ENABLED: auto (bf16 where supported, else fp16), bfloat16, float16.
    _C.MASKINIT.AMP_DTYPE = "auto"
    _C.MASKINIT.PLATEAU = CfgNode()
    # Metric watched: a validation AP such as segm/AP or bbox/AP (needs TEST.EVAL_PERIOD), or total_loss.
    _C.MASKINIT.PLATEAU.METRIC = "total_loss"
    # Iterations between checks of the metric (for AP, use TEST.EVAL_PERIOD).
    _C.MASKINIT.PLATEAU.PERIOD = 100
    # Checks without improvement tolerated before the LR is divided.
    _C.MASKINIT.PLATEAU.PATIENCE = 2
    # Factor applied to the LR on a plateau.
    _C.MASKINIT.PLATEAU.FACTOR = 0.1
    # The LR never goes below this.
    _C.MASKINIT.PLATEAU.MIN_LR = 0.0
    _C.MASKINIT.AUGMENT = CfgNode()
    # Training augmentation: default (Detectron2's INPUT.* resize and flip) or lsj (large-scale jitter).
    _C.MASKINIT.AUGMENT.NAME = "default"
    # LSJ: smallest random scale of the LSJ_IMAGE_SIZE square the image is resized to fit.
    _C.MASKINIT.AUGMENT.LSJ_MIN_SCALE = 0.1
    # LSJ: largest random scale of that square.
    _C.MASKINIT.AUGMENT.LSJ_MAX_SCALE = 2.0
    # LSJ: side of the square training image, randomly cropped or padded (image 128, segmentation 255) to it.
    _C.MASKINIT.AUGMENT.LSJ_IMAGE_SIZE = 1024
    # Simple Copy-Paste (maskinit/copy_paste.py): objects of another training image pasted by their masks.
    _C.MASKINIT.AUGMENT.COPY_PASTE = CfgNode()
    # Probability that a training image gets objects pasted, in [0, 1]; 0 (the default) turns copy-paste off.
    _C.MASKINIT.AUGMENT.COPY_PASTE.PROB = 0.0
    # Most objects pasted onto one image (a random 1 to this many of the source image's objects).
    _C.MASKINIT.AUGMENT.COPY_PASTE.MAX_INSTANCES = 20
    # Pixels below which an instance that lost pixels (covered by pasted objects, or cropped) is dropped.
    _C.MASKINIT.AUGMENT.COPY_PASTE.MIN_AREA = 16
    # Exponential moving average of the weights (maskinit/ema.py), for evaluation and model_final.pth.
    _C.MASKINIT.EMA = CfgNode()
    # Keep the average (True) or not (False, the default).
    _C.MASKINIT.EMA.ENABLED = False
    # Decay d of w_ema = d * w_ema + (1 - d) * w per iteration, in (0, 1); the window is about 1 / (1 - d) iterations.
    _C.MASKINIT.EMA.DECAY = 0.9998
    # Warmup of the decay: d * (1 - exp(-iteration / WARMUP_ITERS)); 0 for none (mmdetection's ExpMomentumEMA: 2000).
    _C.MASKINIT.EMA.WARMUP_ITERS = 2000
    # Restart the average from the current weights at each LR step (SOLVER.STEPS), its decay warming up again,
    # so that after a step it averages the weights of the new LR only (True) or not (False).
    _C.MASKINIT.EMA.RESTART_AT_STEPS = False
    # The data a run used, recorded by train (maskinit/data/sources.py: record_data), so that `train --resume`
    # and `eval RUN_DIR` find it again; empty everywhere: the embedded default set.
    _C.MASKINIT.DATA = CfgNode()
    # The folder or data.yaml given as --data (any format maskinit reads); empty: COCO files or registered names.
    _C.MASKINIT.DATA.SOURCE = ""
    # Its format (coco, label-image, instance-masks, yolo, labelme, via, cvat, voc), detected or given by --format.
    _C.MASKINIT.DATA.FORMAT = ""
    # Share of a one-split source's images held back for validation (--val-fraction), in [0, 1); 0: none held back.
    _C.MASKINIT.DATA.VAL_FRACTION = 0.0
    # Seed of that split (--split-seed): the same seed holds back the same images.
    _C.MASKINIT.DATA.SPLIT_SEED = 0
    # COCO instances JSON the run trained on (for --data: its converted copy).
    _C.MASKINIT.DATA.TRAIN_JSON = ""
    # Image folder of TRAIN_JSON.
    _C.MASKINIT.DATA.TRAIN_IMAGES = ""
    # COCO instances JSON the run validated on; empty: none, or a registered name.
    _C.MASKINIT.DATA.VAL_JSON = ""
    # Image folder of VAL_JSON.
    _C.MASKINIT.DATA.VAL_IMAGES = ""
    # Registered dataset name trained on (--dataset).
    _C.MASKINIT.DATA.DATASET = ""
    # Registered dataset name validated on (--val-dataset).
    _C.MASKINIT.DATA.VAL_DATASET = ""
    # Training set's category names in model output (contiguous) order, set by train; empty: unknown.
    _C.MASKINIT.CLASS_NAMES = []
    # Training set's category ids (COCO category_id) in the same order as CLASS_NAMES; empty: unknown.
    _C.MASKINIT.CLASS_IDS = []
    return cfg


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


def new_config() -> CfgNode:
    cfg = get_cfg()
    add_maskinit_config(cfg)
    return cfg


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
            raise MaskinitError(f"{where} is not valid YAML: {one_line(error)}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise MaskinitError(f"cannot read {where}: {one_line(error)}") from None
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
    except FileNotFoundError:
        raise MaskinitError(f"{what} {path} not found") from None
    except yaml.YAMLError as error:
        raise MaskinitError(f"{what} {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    except KeyError as error:
        raise MaskinitError(f"{what} {path}: unknown config key {error.args[0]}") from None
    except (ValueError, AssertionError, TypeError, AttributeError) as error:
        raise MaskinitError(f"{what} {path}: {one_line(error)}") from None


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
        except KeyError:
            raise MaskinitError(f"unknown config key {key}") from None
        except (ValueError, AssertionError, TypeError) as error:
            if "Non-existent key" in str(error):
                raise MaskinitError(f"unknown config key {key}") from None
            raise MaskinitError(f"bad value {value!r} for {key}: {one_line(error)}") from None


def _float_literal(cfg: CfgNode, key: str, value: str) -> str:
    """`0` or `-1` for a float key means the float: yacs would refuse the int as a type mismatch."""
    from ast import literal_eval

    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return value
        node = node[part]
    try:
        number = literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value
    if isinstance(node, float) and isinstance(number, int) and not isinstance(number, bool):
        return repr(float(number))
    return value


def refuse_pretrained_settings(cfg: CfgNode, source: str) -> None:
    """What a user states (a config file, overrides) may not undo training from scratch."""
    from .norms import REFUSED_NORMS

    if cfg.MODEL.WEIGHTS:
        raise MaskinitError(
            f"{source} sets MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r}: maskinit trains from scratch and loads no weights"
        )
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        raise MaskinitError(
            f"{source} sets MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT}: from scratch every stage must train (0)"
        )
    for key, value in flatten(cfg).items():
        if key.endswith(".NORM") and value in REFUSED_NORMS:
            raise MaskinitError(f"{source} sets {key}={value}: " + REFUSED_NORMS[value])


def sync_norm_keys(cfg: CfgNode) -> None:
    """Write the norm variant's stock Detectron2 name into every component's NORM key."""
    from .norms import NORM_KEYS, build_norm_variant

    variant = build_norm_variant(cfg.MASKINIT.NORM)
    for key in NORM_KEYS:
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = variant.detectron2_name


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


def flatten(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


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
    from .plugins import load_plugins

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
        _number(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
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
    ("MODEL.PIXEL_STD", lambda v: len(v) > 0 and all(_positive(x) for x in v), "positive finite numbers (one per channel)"),
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
    ("MASKINIT.FIT", "fit mode", ("off", "safe", "full")),
    ("SOLVER.LR_SCHEDULER_NAME", "LR scheduler", ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")),
    ("SOLVER.WARMUP_METHOD", "warmup method", ("linear", "constant")),
    ("MODEL.RESNETS.DEPTH", "ResNet depth", RESNET_DEPTHS),
)


def config_value(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_config(cfg: CfgNode) -> None:
    """Every `MASKINIT.*` key and the Detectron2 keys a user is likely to get wrong, checked when the
    config is built: a one-line MaskinitError naming the first bad key and its value."""
    from .augment import check_augment
    from .ema import check_ema
    from .initializers import build_initializer
    from .norms import build_norm_variant

    check_from_scratch(cfg)
    for key, name, choices in CHOICE_RULES:
        value = config_value(cfg, key)
        if value not in choices:
            raise MaskinitError(f"unknown {name} {value!r} for {key} (known: {', '.join(map(str, choices))})")
    for key, test, rule in VALUE_RULES:
        value = config_value(cfg, key)
        try:
            ok = bool(test(value))
        except TypeError:  # a number where a list belongs, or the reverse
            ok = False
        if not ok:
            raise MaskinitError(f"{key} must be {rule}, got {value!r}")
    model = cfg.MODEL
    if len(model.PIXEL_MEAN) != len(model.PIXEL_STD):
        raise MaskinitError(
            f"MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need one value per channel each, got {len(model.PIXEL_MEAN)} and {len(model.PIXEL_STD)}"
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
            raise MaskinitError(f"unknown clip type {clip.CLIP_TYPE!r} for SOLVER.CLIP_GRADIENTS.CLIP_TYPE (known: value, norm)")
        if not _positive(clip.CLIP_VALUE):
            raise MaskinitError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be a positive finite number, got {clip.CLIP_VALUE!r}")
        if not (_positive(clip.NORM_TYPE) or clip.NORM_TYPE == math.inf):
            raise MaskinitError(f"SOLVER.CLIP_GRADIENTS.NORM_TYPE must be positive (inf: max norm), got {clip.NORM_TYPE!r}")
    names, ids = cfg.MASKINIT.CLASS_NAMES, cfg.MASKINIT.CLASS_IDS
    if len(names) != len(ids):
        raise MaskinitError(f"MASKINIT.CLASS_NAMES and MASKINIT.CLASS_IDS differ in length: {len(names)} and {len(ids)}")
    if names and len(names) != model.ROI_HEADS.NUM_CLASSES:
        raise MaskinitError(
            f"MASKINIT.CLASS_NAMES names {len(names)} classes but MODEL.ROI_HEADS.NUM_CLASSES is {model.ROI_HEADS.NUM_CLASSES}"
        )
    if not isinstance(cfg.MASKINIT.PLATEAU.METRIC, str) or not cfg.MASKINIT.PLATEAU.METRIC:
        raise MaskinitError(f"MASKINIT.PLATEAU.METRIC must name a metric (total_loss, segm/AP, ...), got {cfg.MASKINIT.PLATEAU.METRIC!r}")
    if cfg.MASKINIT.DATA.FORMAT:
        from .data.formats import FORMAT_NAMES

        if cfg.MASKINIT.DATA.FORMAT not in FORMAT_NAMES:
            raise MaskinitError(f"unknown data format {cfg.MASKINIT.DATA.FORMAT!r} for MASKINIT.DATA.FORMAT "
                                f"(known: {', '.join(FORMAT_NAMES)})")
    check_augment(cfg)
    check_ema(cfg)
    build_norm_variant(cfg.MASKINIT.NORM)
    for key, spec in [("INIT", cfg.MASKINIT.INIT), *(("COMPONENT_INIT." + k, v) for k, v in cfg.MASKINIT.COMPONENT_INIT.items())]:
        if spec or key == "INIT":
            try:
                build_initializer(spec)
            except MaskinitError as error:
                raise MaskinitError(f"MASKINIT.{key}: {error}") from None


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


class _NoAliasDumper(yaml.SafeDumper):
    """YAML without &anchors: Detectron2 shares list objects between keys, a reader should not see that."""

    def ignore_aliases(self, data):
        return True


def dump_yaml(cfg: CfgNode) -> str:
    return yaml.dump(yaml.safe_load(cfg.dump()), Dumper=_NoAliasDumper, default_flow_style=False)


def to_yaml(cfg: CfgNode, plain: bool = False) -> str:
    """The config as YAML; `plain` keeps only keys stock Detectron2 knows."""
    from .norms import build_norm_variant

    if not plain:
        return dump_yaml(cfg)
    variant = build_norm_variant(cfg.MASKINIT.NORM)
    if not variant.plain_equivalent:
        raise MaskinitError(
            f"--plain cannot express norm {cfg.MASKINIT.NORM}: stock Detectron2 has no such norm (use GN, SyncBN or BN)"
        )
    plain_cfg = cfg.clone()
    plain_cfg.defrost()
    plain_cfg.pop("MASKINIT")
    header = (
        "# Exported by maskinit --plain: stock Detectron2 keys only. Stock Detectron2 initializes with its own\n"
        f"# c2 scheme; maskinit's initializer ({cfg.MASKINIT.INIT}) applies only when maskinit builds the model.\n"
    )
    dropped = maskinit_only_settings(cfg)
    if dropped:
        header += "# Dropped, stock Detectron2 has no such setting (its trainer uses SGD): " + ", ".join(dropped) + "\n"
    return header + dump_yaml(plain_cfg)


def maskinit_only_settings(cfg: CfgNode) -> list[str]:
    """`KEY=value` for each MASKINIT training/model setting that differs from stock behaviour."""
    neutral = {"OPTIMIZER": "sgd", "LR_SCHEDULE": "step", "RPN_NORM": False, "PRIOR_PROB": 0.0, "ZERO_INIT_RESIDUAL": False}
    dropped = [f"MASKINIT.{key}={cfg.MASKINIT[key]}" for key, value in neutral.items() if cfg.MASKINIT[key] != value]
    if cfg.MASKINIT.AUGMENT.NAME != "default":
        dropped.append(f"MASKINIT.AUGMENT.NAME={cfg.MASKINIT.AUGMENT.NAME}")
    if cfg.MASKINIT.AUGMENT.COPY_PASTE.PROB > 0:
        dropped.append(f"MASKINIT.AUGMENT.COPY_PASTE.PROB={cfg.MASKINIT.AUGMENT.COPY_PASTE.PROB}")
    if cfg.MASKINIT.EMA.ENABLED:
        dropped.append("MASKINIT.EMA.ENABLED=True")
    return dropped


def export_config(output: str | Path | None = None, *, plain: bool = False, **options) -> str:
    """Build a from-scratch config and return it as YAML; write it to `output` when given."""
    text = to_yaml(load_config(**options), plain=plain)
    if output is not None:
        output = Path(output)
        if output.is_dir():
            raise MaskinitError(f"output {output} is a directory")
        try:
            write_atomically(output, text)
        except OSError as error:
            raise MaskinitError(f"cannot write {output}: {error.strerror}") from None
    return text
