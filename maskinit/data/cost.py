"""What a config costs on a measured training set (`analysis.DataAnalysis`): the padded pixels and the
mask-head RoIs of a training image under the config, the estimated seconds of one training step
(`machine.step_seconds`, fitted to measured steps), and the estimated s/iter and peak memory of one config
relative to another. The data fit (`fit.py`) keeps a larger input or RoI batch within a budget of these."""

from __future__ import annotations

import math

import numpy as np

from ..cfgkeys import get_key as config_get
from .analysis import DataAnalysis, resize_factors

# Foreground RoIs the heads sample per object (the object's own box and the proposals matching it;
# measured 3.4-4.3 per object on 4-object images, benchmarks/results/step-cost.json), at most the RoI
# batch's positive fraction.
FOREGROUND_PER_OBJECT = 4



def train_pixels(analysis: DataAnalysis, cfg) -> float:
    """Mean padded pixels per training image under the config's resize rule (each MIN_SIZE_TRAIN alike)."""
    sizes = config_get(cfg, "INPUT.MIN_SIZE_TRAIN")
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]
    if config_get(cfg, "INPUT.MIN_SIZE_TRAIN_SAMPLING") == "range" and len(sizes) == 2:
        sizes = [sum(sizes) / 2]
    if config_get(cfg, "MASKINIT.AUGMENT.NAME") == "lsj":
        side = math.ceil(config_get(cfg, "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE") / 32) * 32
        return float(side * side)
    heights, widths = analysis.image_sizes[:, 0], analysis.image_sizes[:, 1]
    total = 0.0
    for size in sizes:
        factor = resize_factors(analysis, size, config_get(cfg, "INPUT.MAX_SIZE_TRAIN"))
        total += float(np.mean(np.ceil(heights * factor / 32) * 32 * np.ceil(widths * factor / 32) * 32))
    return total / len(sizes)


def mask_rois(analysis: DataAnalysis, cfg) -> float:
    """Mean foreground RoIs per training image the mask head trains on (FOREGROUND_PER_OBJECT per object,
    at most the RoI batch's positive fraction)."""
    batch = (config_get(cfg, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE")
             * config_get(cfg, "MODEL.ROI_HEADS.POSITIVE_FRACTION"))
    return float(np.mean(np.minimum(batch, FOREGROUND_PER_OBJECT * analysis.instances_per_image)))


def step_seconds(analysis: DataAnalysis, cfg) -> float:
    """The estimated seconds of one training step of `cfg` on this data (machine.step_seconds)."""
    from ..machine import step_seconds as machine_step_seconds

    width = config_get(cfg, "MODEL.ROI_MASK_HEAD.CONV_DIM") / config_get(cfg, "MODEL.FPN.OUT_CHANNELS")
    pool = config_get(cfg, "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION")
    return machine_step_seconds(train_pixels(analysis, cfg), config_get(cfg, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"),
                                mask_rois(analysis, cfg), pool, width)


def relative_cost(analysis: DataAnalysis, cfg, reference) -> float:
    """Estimated s/iter of `cfg` over that of `reference` on this data."""
    return step_seconds(analysis, cfg) / step_seconds(analysis, reference)


def relative_memory(cfg, reference) -> float:
    """Estimated peak memory of one training process of `cfg` over that of `reference` (machine.estimate_memory)."""
    from ..machine import per_image_bytes

    return per_image_bytes(cfg) / per_image_bytes(reference)
