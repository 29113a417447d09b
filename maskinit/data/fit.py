"""Fit a config to a measured training set (`analysis.DataAnalysis`): the keys that follow from the data.

Three modes (`MASKINIT.FIT`, `--fit`):

- `safe` (the default): only what cannot leave a run worse off than the preset, at about the preset's
  cost. The pixel statistics (every image kind needs its own); anchors that keep the preset's and add
  larger sizes where the large objects outgrow them; aspect ratios that keep the preset's and add the elongated
  boxes' ratios; test-time detections and proposals for crowded images; and, within SAFE_STEP_COST of
  the preset's estimated s/iter, a larger input for small objects and more sampled RoIs for crowded
  images. What the budget leaves out is said, with what `full` would do and its cost.
- `full`: the larger input the small objects need (up to the images' own size) and the sampled RoIs the
  crowded images need, at whatever cost; the rest as `safe`.
- `off`: the preset as it is.

Every fit carries the statistic it came from; keys the user set explicitly are never fitted.
`fit_config` returns the fits, `apply_fits` a fitted copy of the config, `fit_to_data` both steps on a
run's data, `fit_report` the cost of a fitted config against the preset's on the same data.

About 630 lines in one module on purpose: every rule reads the same analysis and the same preset, the safe
mode's budget is spent across keys (input size against sampled RoIs) and the report prices the fitted config
against what `full` would do, so the rules, their budget and their report change together; what they cost is
estimated in `data/cost.py`, what they read is measured in `data/analysis.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..cfgkeys import get_key as config_get
from ..cfgkeys import with_keys
from ..errors import MaskinitError
from .analysis import DataAnalysis, analyze_coco, resize_factors, scaled_box_sides
from .cost import relative_cost, relative_memory

FIT_MODES = ("off", "safe", "full")
# The estimated s/iter a safe fit may reach, against the preset's on the same data (machine.step_seconds).
SAFE_STEP_COST = 1.2
# The input size may not shrink the small objects (this percentile of box sides) below this many
# pixels: at 8 pixels an object spans two cells of P2 (stride 4), smaller ones vanish from the features.
MIN_OBJECT_PIXELS = 8
SMALL_OBJECT_PERCENTILE = 5
# The boxes the anchors must cover: these percentiles of the box sides sqrt(w*h), at the test input size.
ANCHOR_PERCENTILES = (2, 98)
# An object is covered by an anchor of size a when its side is within this factor of a (an IoU of 0.5
# for a centred square at a factor sqrt(2)).
ANCHOR_REACH = math.sqrt(2)
# FPN levels differ twofold in stride, and so do their anchors (Detectron2's rule).
ANCHOR_STEP = 2.0
# Aspect ratios (height / width, Detectron2's convention): the boxes' 10th and 90th percentiles are added
# to the preset's ratios when they lie beyond them by more than this factor.
RATIO_PERCENTILES = (10, 50, 90)
RATIO_MARGIN = 1.5
# Detections per image: the largest instance count times this (an image of the test set may hold more).
DETECTION_MARGIN = 1.5
# Test proposals per detection kept: the box head can only keep what the RPN proposed, and NMS removes some.
PROPOSALS_PER_DETECTION = 2
# Sampled RoIs (and RPN anchors) per image at most: Detectron2's full-scale value (memory).
MAX_ROI_BATCH = 512
# The RoI and RPN batches should hold a positive for each object of all but the most crowded images.
CROWD_PERCENTILE = 90
# Significant digits of the fitted pixel mean and std, and of the aspect ratios.
PIXEL_DIGITS = 6
RATIO_DIGITS = 2
# A channel whose std is below this share of its mean (or of 1) is constant up to rounding; a channel's
# std is never below this share of the largest channel std, so that no channel is amplified past the others.
CONSTANT_CHANNEL = 1e-6
MIN_STD_SHARE = 0.01
# The mask head pools each RoI of all but the largest boxes from FPN's finest level (stride FINEST_STRIDE) into
# POOLER_RESOLUTION x POOLER_RESOLUTION bins: a box side beyond bins x stride is pooled coarser than its features
# resolve. The large objects (this percentile of box sides) get up to DETAILED_MASK_POOL bins (Detectron2's 14).
LARGE_OBJECT_PERCENTILE = 75
FINEST_STRIDE = 4
DETAILED_MASK_POOL = 14
MASK_POOL_KEY = "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"
INPUT_KEYS = ("INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST")
ROI_KEYS = ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.POST_NMS_TOPK_TRAIN",
            "MODEL.RPN.PRE_NMS_TOPK_TRAIN")


@dataclass(frozen=True)
class Fit:
    """One config key fitted to the data: its value, and the statistic it came from."""

    key: str
    value: object
    reason: str


@dataclass(frozen=True)
class FitReport:
    """A fitted config against the preset on the same data: the mode, the keys (key, preset value,
    fitted value, reason), the estimated s/iter and peak memory relative to the preset's, and what the
    mode left out (with the cost it would have)."""

    mode: str
    rows: tuple = ()
    step_cost: float = 1.0
    memory_cost: float = 1.0
    held_back: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def lines(self) -> list[str]:
        """What `train` and `analyze-data` print under the table of fitted keys."""
        if self.mode == "off":
            return ["data fit off (--fit safe fits the pixel statistics, anchors and counts to the data)"]
        if not self.rows:
            return []
        lines = [f"data fit {self.mode}: estimated {self.step_cost:.2f}x the preset's s/iter and "
                 f"{self.memory_cost:.2f}x its peak memory on this data"]
        lines += list(self.notes) + list(self.held_back)
        return lines

    def to_dict(self) -> dict:
        return {"mode": self.mode, "step_cost": round(self.step_cost, 3), "memory_cost": round(self.memory_cost, 3),
                "held_back": list(self.held_back), "notes": list(self.notes)}


def fit_mode(cfg) -> str:
    """The config's fit mode: `MASKINIT.FIT`, or off where `MASKINIT.FIT_TO_DATA` is False."""
    return "off" if not cfg.MASKINIT.FIT_TO_DATA else cfg.MASKINIT.FIT


def _significant(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


# ---------------------------------------------------------------------------------------------
# The rules


def _pixel_fits(cfg, analysis: DataAnalysis) -> list[Fit]:
    """Pixel mean and std per channel, in the units and channel order the model sees (read_image's; RGB
    if the config says so). A constant channel (up to rounding) gets the largest std of the others, and no
    channel's std is below MIN_STD_SHARE of the largest, so that a value the training set never showed
    there is not amplified past the other channels'."""
    mean, std = list(analysis.pixel_mean), list(analysis.pixel_std)
    names = list(analysis.channel_names)
    order = "/".join(names)
    if analysis.channels == 3 and config_get(cfg, "INPUT.FORMAT") == "RGB":
        mean, std, names, order = mean[::-1], std[::-1], names[::-1], "R/G/B"
    where = f"{analysis.num_sampled} sampled images ({order}, {analysis.dtype} units)"
    constant = [s <= CONSTANT_CHANNEL * max(abs(m), 1.0) for m, s in zip(mean, std)]
    varying = [s for s, flat in zip(std, constant) if not flat]
    largest = max(varying, default=1.0)
    floor = MIN_STD_SHARE * largest
    fitted, notes = [], []
    for name, value, flat in zip(names, std, constant):
        if flat:
            fitted.append(_significant(largest, PIXEL_DIGITS))
            notes.append(f"{name} constant: {largest:.4g}")
        elif value < floor:
            fitted.append(_significant(floor, PIXEL_DIGITS))
            notes.append(f"{name} {value:.3g} raised to {floor:.4g} ({MIN_STD_SHARE:g} of the largest)")
        else:
            fitted.append(_significant(value, PIXEL_DIGITS))
    std_reason = f"pixel std per channel of {where}" + (f"; {', '.join(notes)}" if notes else "")
    rounded = [_significant(v, PIXEL_DIGITS) for v in mean]
    fits = [Fit("MODEL.PIXEL_MEAN", rounded, f"pixel mean per channel of {where}"),
            Fit("MODEL.PIXEL_STD", fitted, std_reason)]
    if analysis.channels == 1 and config_get(cfg, "INPUT.FORMAT") not in (None, "L"):
        fits.append(Fit("INPUT.FORMAT", "L", "one-channel images: Detectron2's grayscale format"))
    return fits


def _small_side(analysis: DataAnalysis, min_size: float, max_size: float) -> float:
    return float(np.percentile(scaled_box_sides(analysis, min_size, max_size), SMALL_OBJECT_PERCENTILE))


def _zoomed_inputs(cfg, zoom: float) -> dict:
    """The preset's four INPUT sizes times `zoom` (its multi-scale jitter kept)."""
    train = config_get(cfg, "INPUT.MIN_SIZE_TRAIN")
    train = list(train) if isinstance(train, (list, tuple)) else [train]
    return {
        "INPUT.MIN_SIZE_TRAIN": tuple(max(1, int(round(value * zoom))) for value in train),
        "INPUT.MAX_SIZE_TRAIN": int(round(config_get(cfg, "INPUT.MAX_SIZE_TRAIN") * zoom)),
        "INPUT.MIN_SIZE_TEST": int(round(config_get(cfg, "INPUT.MIN_SIZE_TEST") * zoom)),
        "INPUT.MAX_SIZE_TEST": int(round(config_get(cfg, "INPUT.MAX_SIZE_TEST") * zoom)),
    }


def _native_zoom(cfg, analysis: DataAnalysis) -> float:
    """The zoom of the preset's resize rule at which the median image is at its own size."""
    factors = resize_factors(analysis, config_get(cfg, "INPUT.MIN_SIZE_TEST"), config_get(cfg, "INPUT.MAX_SIZE_TEST"))
    return float(np.median(1.0 / factors))


def _needed_zoom(cfg, analysis: DataAnalysis) -> float:
    """The smallest zoom of the preset's resize rule at which the small objects have MIN_OBJECT_PIXELS."""
    low, high = config_get(cfg, "INPUT.MIN_SIZE_TEST"), config_get(cfg, "INPUT.MAX_SIZE_TEST")
    side = _small_side(analysis, low, high)
    return max(1.0, MIN_OBJECT_PIXELS / side) if side > 0 else 1.0


def _full_input_size(analysis: DataAnalysis, cap: int, which: str) -> tuple[int, int, str, str]:
    """(min size, max size, reason for each) of `full`: the images' own median shorter side (so nothing is
    upscaled past it), and the longer side their most elongated image needs, never beyond the longest side
    of any image; both within the preset's max size unless that would shrink the small objects below
    MIN_OBJECT_PIXELS."""
    shorter, longer = analysis.image_sizes.min(axis=1), analysis.image_sizes.max(axis=1)
    elongation, largest = float((longer / shorter).max()), int(longer.max())
    native = int(round(float(np.median(shorter))))

    def longest(min_size: int) -> int:
        return min(int(math.ceil(min_size * elongation - 1e-9)), largest)

    size, max_size = min(native, cap), min(longest(min(native, cap)), cap)
    reason = f"median shorter side of {analysis.num_images} images: {native} px"
    capped = (size, max_size) != (native, longest(native))
    tag = f"p{SMALL_OBJECT_PERCENTILE} of box sides"
    if analysis.num_instances and _small_side(analysis, size, max_size) < MIN_OBJECT_PIXELS:
        at_cap = _small_side(analysis, size, max_size)
        at_native = _small_side(analysis, native, longest(native))
        if at_native < MIN_OBJECT_PIXELS:
            size, max_size = native, longest(native)
            reason += f"; not shrunk: {tag} is {at_native:.1f} px even at the images' own size"
            if capped:
                reason += f" (above the preset's {which} {cap})"
        else:
            low, high = size, native  # small side below the floor at `low` (capped), above it at `high`
            if _small_side(analysis, low, longest(low)) >= MIN_OBJECT_PIXELS:
                high = low
            while high - low > 1:
                middle = (low + high) // 2
                if _small_side(analysis, middle, longest(middle)) >= MIN_OBJECT_PIXELS:
                    high = middle
                else:
                    low = middle
            size, max_size = high, longest(high)
            reason += (f"; above the preset's {which} {cap}, at which {tag} would be {at_cap:.1f} px "
                       f"(< {MIN_OBJECT_PIXELS}); at {size} it is {_small_side(analysis, size, max_size):.1f} px")
    elif capped:
        reason += f"; within the preset's {which} {cap}"
    max_reason = f"shorter side {size} px x longest/shortest side {elongation:.2f}"
    if longest(size) < math.ceil(size * elongation - 1e-9):
        max_reason += f", at most the longest image side {largest} px"
    if max_size < longest(size):
        max_reason += f"; within the preset's {which} {cap}"
    return size, max_size, reason, max_reason


def _train_sizes(preset_sizes: Sequence[int], size: int) -> tuple[int, ...]:
    """The preset's training sizes (multi-scale jitter, or a (low, high) range) rescaled so that its
    largest becomes `size`; as many values, in the same order."""
    top = max(preset_sizes)
    return tuple(max(1, int(round(value * size / top))) for value in preset_sizes)


def anchor_sizes(preset: Sequence[Sequence[int]], sides: np.ndarray) -> tuple[list[list[int]], str]:
    """The preset's anchor sizes per FPN level, with one more size on every level, twice each level's, where
    the large objects (p98 of the box sides) are larger than the largest anchor x ANCHOR_REACH. Each level
    keeps its size-to-stride ratio, so the anchors tile every level's grid as densely as the preset's
    (Detectron2 wants as many sizes per level). Small objects keep the preset's anchors: sizes fitted down
    to them (the smallest anchor at the p2 box, x2 per level) measured worse on every set, the small nuclei
    included (docs/benchmarks.md, "Data fit against the preset"), since the coarse levels' anchors then fall
    to a fraction of their stride and match few objects."""
    low, high = (float(v) for v in np.percentile(sides, ANCHOR_PERCENTILES))
    levels = [list(level) for level in preset]
    smallest, largest = min(min(level) for level in levels), max(max(level) for level in levels)
    lower, upper = ANCHOR_PERCENTILES
    reason = f"p{lower}-p{upper} of box sides sqrt(w*h) at the test size: {low:.1f}-{high:.1f} px"
    if high > largest * ANCHOR_REACH:
        levels = [[*level, round(level[-1] * ANCHOR_STEP)] for level in levels]
        reason += f"; the preset's anchors {smallest}-{largest} and twice each level's, for the large objects"
    else:
        reason += f": the large ones within the preset's anchors {smallest}-{largest} (x{ANCHOR_REACH:.2f}), kept"
    return levels, reason


def aspect_ratios(preset: Sequence[float], ratios: np.ndarray) -> tuple[list[float], str]:
    """The preset's aspect ratios, plus the boxes' 10th (90th) percentile of height/width where it lies
    beyond the preset's smallest (largest) ratio by more than RATIO_MARGIN: elongated objects widen the
    set, nothing narrows it."""
    low, middle, high = np.percentile(ratios, RATIO_PERCENTILES)
    chosen = sorted(float(value) for value in preset)
    reason = (f"p{RATIO_PERCENTILES[0]}/p{RATIO_PERCENTILES[1]}/p{RATIO_PERCENTILES[2]} of box height/width of "
              f"{len(ratios)} boxes: {low:.2f}/{middle:.2f}/{high:.2f}")
    added = []
    if low < chosen[0] / RATIO_MARGIN:
        added.append(_significant(float(low), RATIO_DIGITS))
    if high > chosen[-1] * RATIO_MARGIN:
        added.append(_significant(float(high), RATIO_DIGITS))
    if added:
        reason += f"; added to the preset's {'/'.join(f'{v:g}' for v in chosen)}"
    else:
        reason += f": within the preset's {'/'.join(f'{v:g}' for v in chosen)} (x{RATIO_MARGIN:g}), kept"
    return sorted(chosen + added), reason


def _crowd_batches(cfg, analysis: DataAnalysis) -> list[tuple[str, int, str]]:
    """(key, value, reason): the RoI and RPN batches that hold a positive for each object of all but the
    most crowded images (CROWD_PERCENTILE), and the training proposals that go with a larger RoI batch."""
    counts = analysis.instances_per_image
    crowd = int(math.ceil(np.percentile(counts, CROWD_PERCENTILE)))
    out = []
    for key in ("MODEL.ROI_HEADS", "MODEL.RPN"):
        batch = int(config_get(cfg, f"{key}.BATCH_SIZE_PER_IMAGE"))
        fraction = float(config_get(cfg, f"{key}.POSITIVE_FRACTION"))
        if fraction * batch < crowd and batch < MAX_ROI_BATCH:
            wanted = min(int(math.ceil(crowd / fraction)), MAX_ROI_BATCH)
            out.append((f"{key}.BATCH_SIZE_PER_IMAGE", wanted,
                        f"{CROWD_PERCENTILE}th percentile of instances per image: {crowd}; {batch} x {fraction:g} "
                        f"positive fraction gives only {fraction * batch:g} positives per image "
                        f"(at most {MAX_ROI_BATCH})"))
    return out


def _proposals(cfg, phase: str, needed: int, reason: str) -> list[tuple[str, int, str]]:
    """RPN.POST_NMS_TOPK_<phase> raised to `needed` (and PRE_NMS_TOPK_<phase> at the preset's pre/post ratio)."""
    post = int(config_get(cfg, f"MODEL.RPN.POST_NMS_TOPK_{phase}"))
    pre = int(config_get(cfg, f"MODEL.RPN.PRE_NMS_TOPK_{phase}"))
    if post >= needed:
        return []
    out = [(f"MODEL.RPN.POST_NMS_TOPK_{phase}", needed, reason)]
    wanted_pre = int(math.ceil(needed * pre / post))
    if wanted_pre > pre:
        out.append((f"MODEL.RPN.PRE_NMS_TOPK_{phase}", wanted_pre,
                    f"POST_NMS_TOPK_{phase} {post} -> {needed} at the preset's pre/post ratio {pre / post:g}"))
    return out


# ---------------------------------------------------------------------------------------------
# Fitting


def fit_config(cfg, analysis: DataAnalysis, keep: Iterable[str] = frozenset(), mode: str | None = None) -> list[Fit]:
    """The config keys that follow from the data in `mode` (default: the config's), each with the
    statistic it came from; `cfg` is not changed. Keys in `keep` (set explicitly by the user) are not
    fitted, and the fits that depend on them (the anchors on the input size, the proposals on the
    detections per image) use the config's value. Box-based keys are fitted only when the data has instances."""
    mode = mode or fit_mode(cfg)
    if mode not in FIT_MODES:
        raise MaskinitError(f"unknown fit mode {mode!r} (known: {', '.join(FIT_MODES)})")
    if mode == "off":
        return []
    keep = frozenset(keep)
    fits = [fit for fit in _pixel_fits(cfg, analysis) if fit.key not in keep]
    values: dict = {}

    def fit(key: str, value, reason: str) -> bool:
        if key in keep or config_get(cfg, key) is None:
            return False
        fits.append(Fit(key, value, reason))
        values[key] = value
        return True

    # Detections and test proposals for the most crowded images: test time only, nearly free.
    counts = analysis.instances_per_image
    most = int(counts.max()) if len(counts) else 0
    preset_detections = int(config_get(cfg, "TEST.DETECTIONS_PER_IMAGE"))
    wanted = int(math.ceil(most * DETECTION_MARGIN))
    if wanted > preset_detections:
        crowded = analysis.file_names[int(np.argmax(counts))]
        fit("TEST.DETECTIONS_PER_IMAGE", wanted,
            f"largest instance count {most} ({crowded}) x {DETECTION_MARGIN:g} = {wanted}")
    detections = wanted if "TEST.DETECTIONS_PER_IMAGE" in values else int(config_get(cfg, "TEST.DETECTIONS_PER_IMAGE"))
    why = f"{PROPOSALS_PER_DETECTION} x {detections} detections per image: the box head keeps only proposals"
    for key, value, reason in _proposals(cfg, "TEST", PROPOSALS_PER_DETECTION * detections, why):
        fit(key, value, reason)

    # Input sizes first: for small objects a larger input paid more than more RoIs at the same cost
    # (nuclei_tissue, seed 0: 19.7 mask AP at 160 px and 96 RoIs, 19.2 at 128 px and 150 RoIs, at a lower
    # measured s/iter).
    base = with_keys(cfg, {fit.key: fit.value for fit in fits})
    if not keep & set(INPUT_KEYS):
        for key, value, reason in _input_fits(cfg, base, analysis, mode, keep):
            fit(key, value, reason)

    # The mask pool for large objects (training time: in safe mode, within what the budget has left).
    base = with_keys(cfg, {fit.key: fit.value for fit in fits})
    if analysis.num_instances:
        scale = (values.get("INPUT.MIN_SIZE_TEST", config_get(cfg, "INPUT.MIN_SIZE_TEST")),
                 values.get("INPUT.MAX_SIZE_TEST", config_get(cfg, "INPUT.MAX_SIZE_TEST")))
        pool = _mask_pool_fit(cfg, base, analysis, scale, mode, keep)
        if pool:
            fit(*pool)

    # Sampled RoIs for crowded images (they cost training time: in safe mode, within what the budget has left).
    crowd = [(key, value, reason) for key, value, reason in _crowd_batches(cfg, analysis) if key not in keep]
    base = with_keys(cfg, {fit.key: fit.value for fit in fits})
    if crowd:
        roi = next(((key, value, reason) for key, value, reason in crowd if key.startswith("MODEL.ROI_HEADS")), None)
        if roi and mode == "safe":
            affordable = _affordable(base, analysis, cfg, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                                     int(config_get(cfg, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE")), roi[1], keep)
            if affordable < roi[1]:
                roi = (roi[0], affordable, roi[2] + f"; {affordable} within the safe fit's {SAFE_STEP_COST:g}x s/iter")
        for key, value, reason in crowd:
            if key == "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE":
                key, value, reason = roi
                if value <= int(config_get(cfg, key)):
                    continue
            fit(key, value, reason)
        if "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE" in values:
            batch = int(config_get(cfg, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"))
            wanted = values["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"]
            post = int(config_get(cfg, "MODEL.RPN.POST_NMS_TOPK_TRAIN"))
            why = f"RoI batch {batch} -> {wanted}: training proposals at the preset's {post / batch:g} per RoI"
            for key, value, reason in _proposals(cfg, "TRAIN", int(math.ceil(wanted * post / batch)), why):
                fit(key, value, reason)
    if config_get(cfg, "MASKINIT.AUGMENT.NAME") == "lsj":
        side = values.get("INPUT.MAX_SIZE_TRAIN", config_get(cfg, "INPUT.MAX_SIZE_TRAIN"))
        if side != config_get(cfg, LSJ_KEY):
            fit(LSJ_KEY, side, "large-scale jitter square: the training max size")

    if analysis.num_instances:
        # Anchors and aspect ratios, at the input size the model will see at test time.
        scale = (values.get("INPUT.MIN_SIZE_TEST", config_get(cfg, "INPUT.MIN_SIZE_TEST")),
                 values.get("INPUT.MAX_SIZE_TEST", config_get(cfg, "INPUT.MAX_SIZE_TEST")))
        preset_sizes = config_get(cfg, "MODEL.ANCHOR_GENERATOR.SIZES")
        sizes, reason = anchor_sizes(preset_sizes, scaled_box_sides(analysis, *scale))
        if sizes != [list(level) for level in preset_sizes]:
            fit("MODEL.ANCHOR_GENERATOR.SIZES", sizes, reason)
        preset_ratios = config_get(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
        if len(preset_ratios) == 1:
            ratios, reason = aspect_ratios(preset_ratios[0], analysis.box_ratios)
            if ratios != sorted(preset_ratios[0]):
                fit("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [ratios], reason)
    return fits


def _mask_pool_fit(cfg, base, analysis: DataAnalysis, scale, mode: str,
                   keep: frozenset) -> tuple[str, int, str] | None:
    """The mask pool the large objects need at the test input `scale`: as many bins as their side spans cells
    of the finest FPN level, up to DETAILED_MASK_POOL; in safe mode as far as the s/iter budget pays for."""
    pool = int(config_get(cfg, MASK_POOL_KEY) or 0)
    if not pool or pool >= DETAILED_MASK_POOL:
        return None
    side = float(np.percentile(scaled_box_sides(analysis, *scale), LARGE_OBJECT_PERCENTILE))
    needed = min(DETAILED_MASK_POOL, int(math.ceil(side / FINEST_STRIDE)))
    if needed <= pool:
        return None
    cells = side / FINEST_STRIDE
    why = (f"p{LARGE_OBJECT_PERCENTILE} of box sides {side:.1f} px at the fitted input spans {cells:.1f} cells of "
           f"the finest level (stride {FINEST_STRIDE}), more than the {pool}x{pool} pool's bins")
    if mode == "safe":
        affordable = _affordable(base, analysis, cfg, MASK_POOL_KEY, pool, needed, keep)
        if affordable <= pool:
            return None
        if affordable < needed:
            why += f"; {affordable} within the safe fit's {SAFE_STEP_COST:g}x s/iter"
        needed = affordable
    return MASK_POOL_KEY, needed, why


LSJ_KEY = "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE"


def _step_cost(analysis: DataAnalysis, candidate, preset, keep: frozenset) -> float:
    """The estimated s/iter of `candidate` over the preset's, both as the fit trains them: with large-scale
    jitter on and its square not set by the user, the square is the training max size (the preset's 1024
    would price the preset as if it trained 1024-px squares, and every larger input as nearly free)."""
    return relative_cost(analysis, _as_trained(candidate, keep), _as_trained(preset, keep))


def _as_trained(cfg, keep: frozenset):
    """`cfg` as the fit trains it: with large-scale jitter on and its square not set by the user (in `keep`),
    the square is the training max size."""
    if LSJ_KEY in keep or config_get(cfg, "MASKINIT.AUGMENT.NAME") != "lsj":
        return cfg
    return with_keys(cfg, {LSJ_KEY: config_get(cfg, "INPUT.MAX_SIZE_TRAIN")})


def _affordable(base, analysis: DataAnalysis, preset, key: str, low: int, high: int, keep: frozenset) -> int:
    """The largest value of `key` between `low` and `high` at which `base` stays within SAFE_STEP_COST
    of the preset's estimated s/iter."""
    if _step_cost(analysis, with_keys(base, {key: high}), preset, keep) <= SAFE_STEP_COST:
        return high
    while high - low > 1:
        middle = (low + high) // 2
        if _step_cost(analysis, with_keys(base, {key: middle}), preset, keep) <= SAFE_STEP_COST:
            low = middle
        else:
            high = middle
    return low


def _input_fits(cfg, base, analysis: DataAnalysis, mode: str, keep: frozenset) -> list[tuple[str, object, str]]:
    """The INPUT sizes of `mode`: full, the images' own size as far as the small objects need it; safe, the
    preset's resize rule zoomed in only as far as the small objects need, the images' own size allows and
    the s/iter budget pays for (`base`: the config with the other fits, whose cost counts too)."""
    if mode == "full":
        test_min, test_max, test_reason, test_max_reason = _full_input_size(
            analysis, int(config_get(cfg, "INPUT.MAX_SIZE_TEST")), "MAX_SIZE_TEST")
        train_min, train_max, train_reason, train_max_reason = _full_input_size(
            analysis, int(config_get(cfg, "INPUT.MAX_SIZE_TRAIN")), "MAX_SIZE_TRAIN")
        preset_train = list(config_get(cfg, "INPUT.MIN_SIZE_TRAIN"))
        jitter = (f"; the preset's jitter {min(preset_train) / max(preset_train):.2f}-1 x"
                  if len(set(preset_train)) > 1 else "")
        return [("INPUT.MIN_SIZE_TRAIN", _train_sizes(preset_train, train_min), train_reason + jitter),
                ("INPUT.MAX_SIZE_TRAIN", train_max, train_max_reason),
                ("INPUT.MIN_SIZE_TEST", test_min, test_reason), ("INPUT.MAX_SIZE_TEST", test_max, test_max_reason)]
    if not analysis.num_instances:
        return []
    needed, native = _needed_zoom(cfg, analysis), _native_zoom(cfg, analysis)
    if needed <= 1.0 or native <= 1.0:
        return []
    target = min(needed, native)
    low, high = 1.0, target
    if _step_cost(analysis, with_keys(base, _zoomed_inputs(cfg, high)), cfg, keep) > SAFE_STEP_COST:
        for _ in range(20):  # bisect the zoom within the budget
            middle = (low + high) / 2
            if _step_cost(analysis, with_keys(base, _zoomed_inputs(cfg, middle)), cfg, keep) <= SAFE_STEP_COST:
                low = middle
            else:
                high = middle
        zoom = low
    else:
        zoom = target
    sizes = _zoomed_inputs(cfg, zoom)
    if sizes["INPUT.MIN_SIZE_TEST"] == config_get(cfg, "INPUT.MIN_SIZE_TEST"):
        return []
    tag = f"p{SMALL_OBJECT_PERCENTILE} of box sides"
    at_preset = _small_side(analysis, config_get(cfg, "INPUT.MIN_SIZE_TEST"), config_get(cfg, "INPUT.MAX_SIZE_TEST"))
    at_zoom = _small_side(analysis, sizes["INPUT.MIN_SIZE_TEST"], sizes["INPUT.MAX_SIZE_TEST"])
    why = f"{tag} {at_preset:.1f} px at the preset's size (< {MIN_OBJECT_PIXELS}); x{zoom:.2f}: {at_zoom:.1f} px"
    if zoom < target - 1e-6:
        why += f", as far as the safe fit's {SAFE_STEP_COST:g}x s/iter goes"
    elif native < needed:
        why += ", the images' own size"
    return [(key, value, why) for key, value in sizes.items()]


# One value per channel each: with one of them set by the user, the other is applied only if its length matches.
PIXEL_PAIR = ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")


def apply_fits(cfg, fits: Iterable[Fit], keep: Iterable[str] = frozenset()):
    """(a copy of `cfg` with the fits applied, the fits applied): keys in `keep` (set explicitly by the
    user) keep the config's value. `cfg` itself is not changed."""
    keep = frozenset(keep)
    applied = [fit for fit in fits if fit.key not in keep]
    for kept, other in (PIXEL_PAIR, PIXEL_PAIR[::-1]):
        if kept in keep:
            length = len(config_get(cfg, kept))
            applied = [fit for fit in applied if not (fit.key == other and len(fit.value) != length)]
    patch: dict = {}
    for fit in applied:
        if config_get(cfg, fit.key) is None:
            raise MaskinitError(f"cannot apply the fitted {fit.key}: the config has no such key")
        node = patch
        *parents, leaf = fit.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = fit.value
    result = cfg.clone()
    frozen = result.is_frozen()
    result.defrost()
    try:
        result.merge_from_other_cfg(type(cfg)(patch))
    except (KeyError, ValueError) as error:
        raise MaskinitError(f"cannot apply the fitted keys: {error}") from error
    if frozen:
        result.freeze()
    return result, applied


def fit_report(cfg, fitted, analysis: DataAnalysis, fits: Sequence[Fit],
               keep: Iterable[str] = frozenset()) -> FitReport:
    """`fitted` (the config with `fits` applied) against the preset `cfg` on this data: the estimated cost,
    and in safe mode what `full` would add (the input size, the sampled RoIs, the mask pool) and at what cost."""
    mode = fit_mode(cfg)
    if mode == "off":
        return FitReport("off")
    rows = tuple(fit_rows(cfg, fits))
    keep = frozenset(keep)
    step = _step_cost(analysis, fitted, cfg, keep)
    memory = relative_memory(_as_trained(fitted, keep), _as_trained(cfg, keep))
    held_back = []
    if mode == "safe":
        full, _ = apply_fits(cfg, fit_config(cfg, analysis, keep=keep, mode="full"), keep=keep)
        parts = []  # (what full adds, the keys that add it, a short name)
        size, max_size = config_get(fitted, "INPUT.MIN_SIZE_TEST"), config_get(fitted, "INPUT.MAX_SIZE_TEST")
        small = _small_side(analysis, size, max_size)
        if config_get(full, "INPUT.MIN_SIZE_TEST") != size and small < MIN_OBJECT_PIXELS:
            larger = f"{config_get(full, 'INPUT.MIN_SIZE_TEST')}/{config_get(full, 'INPUT.MAX_SIZE_TEST')}"
            parts.append((f"input {larger} px (p{SMALL_OBJECT_PERCENTILE} of box sides {small:.1f} px here)",
                          INPUT_KEYS, "the input"))
        roi = "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"
        if config_get(full, roi) > config_get(fitted, roi):
            parts.append((f"{config_get(full, roi)} sampled RoIs per image", ROI_KEYS, "the RoIs"))
        pool = config_get(full, MASK_POOL_KEY)
        if pool and pool > config_get(fitted, MASK_POOL_KEY):
            parts.append((f"a {pool}x{pool} mask pool ({2 * pool}x{2 * pool} masks) for the large objects",
                          (MASK_POOL_KEY,), f"the mask pool ({MASK_POOL_KEY} {pool})"))
        if parts:
            line = (f"--fit full would train with {' and '.join(part for part, _, _ in parts)}: estimated "
                    f"{_step_cost(analysis, full, cfg, keep):.2f}x the preset's s/iter")
            if len(parts) > 1:  # what each part would cost on its own, on top of this fit
                alone = [(name, with_keys(fitted, {key: config_get(full, key) for key in keys}))
                         for _, keys, name in parts]
                alone = [f"{name} {_step_cost(analysis, part, cfg, keep):.2f}x" for name, part in alone]
                line += f"; alone, {', '.join(alone)}"
            held_back.append(line)
    return FitReport(mode, rows, step, memory, tuple(held_back))


def fit_to_data(cfg, data, keep: Iterable[str] = frozenset()):
    """(`cfg` fitted to the run's training data, the FitReport), as `train` does before training.

    Only for the user's own COCO training data (`data.train_json`), and only in fit mode safe or full:
    the embedded default set and datasets registered by name keep the preset as it is. Keys in `keep`
    (the user's explicit `KEY VALUE` overrides) are never changed.
    """
    mode = fit_mode(cfg)
    if mode == "off" or not getattr(data, "train_json", None) or getattr(data, "dataset", None):
        return cfg, FitReport(mode)
    if not getattr(data, "train_images", None):
        raise MaskinitError("--train-json needs --train-images")
    keep = frozenset(keep)
    analysis = analyze_coco(data.train_json, data.train_images)
    fitted, applied = apply_fits(cfg, fit_config(cfg, analysis, keep=keep), keep=keep)
    return fitted, fit_report(cfg, fitted, analysis, applied, keep)


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def fit_rows(cfg, fits: Iterable[Fit]) -> list[tuple[str, object, object, str]]:
    """(key, the config's value, the fitted value, reason) for each fit; tuples as lists, so that equal values
    compare equal."""
    return [(fit.key, _jsonable(config_get(cfg, fit.key)), _jsonable(fit.value), fit.reason) for fit in fits]
