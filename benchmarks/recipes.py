"""Recipe benchmark: stock Detectron2 (naive, scratch GN over an LR sweep, scratch SyncBN) against
maskinit's default and its variants, at the tiny scale, 400 iterations at batch 4, 3 seeds, on the
embedded synthetic set, a held-out set of the same kind, or any COCO set given by path. Runs are
cached per set under benchmarks/runs/SET/ (delete a run's folder to redo it; a run whose command
changed is redone, and so is a maskinit run once the tiny preset's config changed); two run side by side, one
thread each (on a GPU, --jobs 14 share it).

Usage: python benchmarks/recipes.py [--heldout | --data NAME=PATH ... [--synthetic] | --train-json J --train-images D
                                     --val-json J --val-images D --name NAME]
                                    [--only NAME ... | --all | --ablation] [--seeds 0 1 2] [--iters 400]
                                    [--lrs 0.01 0.02 0.04 0.08 | --lrs best] [--comparator-input fitted|tiny]
                                    [--jobs 2] [--device cuda] [--runs-dir DIR] [--results-dir DIR]
                                    [--tag=-gpu] [--report-only]
PATH holds train.json, train/, val.json, val/ (as ../shared/data/rice_leaf). maskinit runs
`maskinit train --preset tiny` with nothing but the data and the seed (it fits pixel statistics,
input size and anchors to the data itself); the comparator is Detectron2's scratch-GN recipe at the
tiny model scale, at its best LR of the sweep (mean mask AP over seeds), and by default at the input
size maskinit fits to the set (--comparator-input tiny: the tiny preset's 128 pixels).
--synthetic: the --data sets are synthetic, e.g. plain_shapes.py's (the goal is 1.5x on every set).
The report names the comparator's best LR, says when it is at the edge of the LRs run, and where the
comparator's mask AP is above 100/goal, gives the ratio of the errors (100 - AP) too.
--iters 1600: 4x the budget, warmup and LR step scaled the same for both.
--ablation: the default and the default minus one part at a time (ABLATIONS).
--only maskinit-preset-pixels maskinit-preset-anchors: the data fit split into its parts (FIT_PARTS).
Writes RESULTS/recipes-SET[-Nit][-ablation]{TAG}.json and .md (plots.py draws the PNGs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ITERS,
    MASKINIT,
    PYTHON,
    REAL_SETS,
    RESULTS,
    ROOT,
    RUNS,
    SEEDS,
    CocoSet,
    budget,
    comparator_settings,
    eval_period,
    input_sizes,
    parse_data,
    read_json,
    run,
    synthetic_set,
    write_json,
)

# name -> arguments of stock_detectron2.py. Stock runs go through Detectron2's DefaultTrainer only.
STOCK = {
    "d2-naive": ["naive", "--lr", "0.02"],
    "d2-scratch-gn@0.01": ["scratch-gn", "--lr", "0.01"],
    "d2-scratch-gn@0.02": ["scratch-gn", "--lr", "0.02"],
    "d2-scratch-gn@0.04": ["scratch-gn", "--lr", "0.04"],
    "d2-scratch-gn@0.08": ["scratch-gn", "--lr", "0.08"],
    # beyond the sweep: for a set whose best LR is the sweep's largest (the report says so)
    "d2-scratch-gn@0.16": ["scratch-gn", "--lr", "0.16"],
    "d2-scratch-syncbn": ["scratch-syncbn", "--lr", "0.02"],
}
# the comparator's LR sweep {0.01, 0.02, 0.04, 0.08}; `--lrs ... 0.16` extends it
SWEEP = ["0.01", "0.02", "0.04", "0.08"]
COMPARATOR = [f"d2-scratch-gn@{lr}" for lr in SWEEP]

# maskinit runs: `maskinit train --preset tiny` plus these options (the budget is the preset's).
# The variants are measured against an SGD recipe (SGD_BASE: SGD at LR 0.02, c2 init, no focal prior,
# no RPN norm, per-class heads, anchors 32-512), restated on top of the default so that each name
# always trains the same config (docs/benchmarks.md).
SGD_BASE = [
    "--optimizer", "sgd", "--lr", "0.02", "SOLVER.WEIGHT_DECAY", "0.0001", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
    "MASKINIT.PRIOR_PROB", "0.0", "MASKINIT.RPN_NORM", "False", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False", "MODEL.ANCHOR_GENERATOR.SIZES",
    "[[32],[64],[128],[256],[512]]",
]
ANCHORS = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]"]
CLS_AGNOSTIC = ["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"]
CLS_AGNOSTIC_BOX = ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"]
ADAMW = ["--optimizer", "adamw", "SOLVER.WEIGHT_DECAY", "0.05"]
# lr 0.04 with clipping, focal prior on the classifiers, GN in the RPN head
COMBO = ["--lr", "0.04", "--clip-grad", "1.0", "MASKINIT.PRIOR_PROB", "0.01", "MASKINIT.RPN_NORM", "True"]
# AdamW 1e-3 with clipping, on top of the rest of COMBO, anchors and class-agnostic heads: the default's core
A1 = [*ADAMW, "--lr", "0.001", "--clip-grad", "1.0", "MASKINIT.PRIOR_PROB", "0.01", "MASKINIT.RPN_NORM", "True",
      *ANCHORS, *CLS_AGNOSTIC, *CLS_AGNOSTIC_BOX]
MASKINIT_RUNS = {
    "maskinit-default": [],
    "maskinit-sgd-previous-default": [*SGD_BASE],
    # one change at a time against the default
    "maskinit-kaiming": [*SGD_BASE, "--init", "kaiming_normal"],
    "maskinit-gnws": [*SGD_BASE, "--norm", "GNWS"],
    "maskinit-bn": [*SGD_BASE, "--norm", "BN"],
    "maskinit-zero-init-residual": [*SGD_BASE, "MASKINIT.ZERO_INIT_RESIDUAL", "True"],
    "maskinit-prior0.01": [*SGD_BASE, "MASKINIT.PRIOR_PROB", "0.01"],
    "maskinit-rpn-norm": [*SGD_BASE, "MASKINIT.RPN_NORM", "True"],
    "maskinit-lr0.01": [*SGD_BASE, "--lr", "0.01"],
    "maskinit-lr0.03": [*SGD_BASE, "--lr", "0.03"],
    "maskinit-lr0.04-clip": [*SGD_BASE, "--lr", "0.04", "--clip-grad", "1.0"],
    "maskinit-warmup20": [*SGD_BASE, "--warmup-iters", "20"],
    "maskinit-cosine": [*SGD_BASE, "--lr-schedule", "cosine"],
    "maskinit-adamw1e-4": [*SGD_BASE, *ADAMW, "--lr", "0.0001"],
    "maskinit-adamw3e-4": [*SGD_BASE, *ADAMW, "--lr", "0.0003"],
    "maskinit-adamw1e-3": [*SGD_BASE, *ADAMW, "--lr", "0.001", "--clip-grad", "1.0"],
    "maskinit-pixel-std1": [*SGD_BASE, "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"],
    "maskinit-wd-norm": [*SGD_BASE, "SOLVER.WEIGHT_DECAY_NORM", "0.0001"],
    "maskinit-box-2fc": [*SGD_BASE, "MODEL.ROI_BOX_HEAD.NUM_CONV", "0", "MODEL.ROI_BOX_HEAD.NUM_FC", "2"],
    "maskinit-giou": [
        *SGD_BASE, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", "2.0",
    ],
    "maskinit-anchors16": [*SGD_BASE, *ANCHORS],
    "maskinit-pos0.5": [*SGD_BASE, "MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.5"],
    "maskinit-scale-aug": [
        *SGD_BASE, "INPUT.MIN_SIZE_TRAIN", "(96, 112, 128, 144, 160)", "INPUT.MAX_SIZE_TRAIN", "160",
    ],
    "maskinit-score0": [*SGD_BASE, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"],
    "maskinit-cls-agnostic-mask": [*SGD_BASE, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"],
    # combinations of what helped alone
    "maskinit-c1": [*SGD_BASE, *COMBO],
    "maskinit-c1-anchors16": [*SGD_BASE, *COMBO, *ANCHORS],
    "maskinit-c1-cls-agnostic-mask": [*SGD_BASE, *COMBO, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"],
    "maskinit-c1-lr0.06": [*SGD_BASE, *COMBO, "--lr", "0.06"],
    "maskinit-c2": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC],
    "maskinit-c2-lr0.06": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, "--lr", "0.06"],
    "maskinit-c2-lr0.06-warmup40": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, "--lr", "0.06", "--warmup-iters", "40"],
    "maskinit-c3": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, *CLS_AGNOSTIC_BOX],
    "maskinit-c3-gn16": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, *CLS_AGNOSTIC_BOX, "--norm", "GN:groups=16"],
    "maskinit-a1": [*SGD_BASE, *A1],
    "maskinit-a1-lr5e-4": [*SGD_BASE, *A1, "--lr", "0.0005"],
    "maskinit-a1-lr2e-3": [*SGD_BASE, *A1, "--lr", "0.002"],
}


# The embedded set's table: the stock recipes and maskinit's default (the variants: --all).
MAIN = [*STOCK, "maskinit-default"]
# The comparison on other sets: the scratch-GN LR sweep and the default.
COMPARE = [*COMPARATOR, "maskinit-default"]

# --ablation: maskinit's default minus one part of its recipe at a time (configs/Base-Scratch.yaml,
# configs/tiny.yaml). Each is an explicit KEY VALUE override, which the data fit never changes.
D2_ANCHORS = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[32],[64],[128],[256],[512]]",
              "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.5,1.0,2.0]]"]
ABLATIONS = {
    # classifiers start at Detectron2's 0.5 foreground probability, not the focal prior 0.01
    "maskinit-no-focal-prior": ["MASKINIT.PRIOR_PROB", "0.0"],
    # no GN in the RPN head's conv (stock Detectron2's RPN head)
    "maskinit-no-rpn-gn": ["MASKINIT.RPN_NORM", "False"],
    # one box regressor and one mask per class
    "maskinit-no-cls-agnostic": [
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False",
    ],
    # Detectron2's anchors (sizes 32-512, ratios 0.5/1/2) in place of the ones fitted to the data's
    # boxes; everything else (pixel statistics, input size) still fitted
    "maskinit-no-anchors": D2_ANCHORS,
    # no per-parameter gradient-norm clipping
    "maskinit-no-clip": ["SOLVER.CLIP_GRADIENTS.ENABLED", "False"],
    # Detectron2's weight decay 1e-4 in place of AdamW's 0.05
    "maskinit-no-wd": ["SOLVER.WEIGHT_DECAY", "0.0001"],
    # no Copy-Paste (on in the tiny preset: measured with 3 seeds on the embedded set and rice_leaf)
    "maskinit-no-copy-paste": ["MASKINIT.AUGMENT.COPY_PASTE.PROB", "0.0"],
    # Detectron2's c2 init in place of LSUV (the tiny preset's init: measured with 3 seeds on the
    # embedded set and rice_leaf)
    "maskinit-no-lsuv": ["MASKINIT.INIT", "c2"],
    # 64 RoIs per image and the mask head's 14x14 pool (28x28 masks) in place of the preset's 96 and 7x7
    "maskinit-previous-heads": [
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "14",
    ],
    # the whole data fit off (MASKINIT.FIT_TO_DATA False): the preset's pixel statistics, 128-pixel
    # input, anchors 16-256 and detection counts. Changes the input size, so also the s/iter.
    "maskinit-no-fit-to-data": ["MASKINIT.FIT_TO_DATA", "False"],
}
MASKINIT_RUNS.update({name: list(options) for name, options in ABLATIONS.items()})
ABLATION = ["maskinit-default", *ABLATIONS]

# The data fit split into its parts (--only these): the default with one fitted part replaced by the
# tiny preset's value, everything else still fitted.
FIT_PARTS = {
    # the preset's pixel statistics (ImageNet's BGR mean and std) in place of the data's
    "maskinit-preset-pixels": [
        "MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]", "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
    ],
    # the preset's anchors (16-256, ratios 0.5/1/2) in place of the ones fitted to the data's boxes
    "maskinit-preset-anchors": [*ANCHORS, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.5,1.0,2.0]]"],
}
MASKINIT_RUNS.update({name: list(options) for name, options in FIT_PARTS.items()})

# The data fit key by key (--only these): the default (--fit safe) with one group of fitted keys switched back
# to the tiny preset's values, and the other modes. Explicit KEY VALUE options: the fit keeps them. With the
# RoI batch pinned, a crowded set's s/iter budget goes to the input size instead.
PRESET_INPUT = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
                "INPUT.MAX_SIZE_TEST", "128"]
PRESET_PIXELS = FIT_PARTS["maskinit-preset-pixels"]
PRESET_ANCHOR_SIZES = ANCHORS
PRESET_RATIOS = ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.5,1.0,2.0]]"]
PRESET_TEST_COUNTS = ["TEST.DETECTIONS_PER_IMAGE", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
                      "MODEL.RPN.PRE_NMS_TOPK_TEST", "200"]
PRESET_ROI_BATCH = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "96", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "256",
                    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "400"]
PRESET_MASK_POOL = ["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "7"]
FIT_KEYS = {"input": PRESET_INPUT, "pixels": PRESET_PIXELS, "anchors": PRESET_ANCHOR_SIZES, "ratios": PRESET_RATIOS,
            "test-counts": PRESET_TEST_COUNTS, "roi-batch": PRESET_ROI_BATCH, "mask-pool": PRESET_MASK_POOL}
FIT_ABLATION = {f"maskinit-fit-preset-{key}": list(options) for key, options in FIT_KEYS.items()}
FIT_ABLATION.update({"maskinit-fit-full": ["MASKINIT.FIT", "full"], "maskinit-fit-off": ["MASKINIT.FIT", "off"]})
MASKINIT_RUNS.update(FIT_ABLATION)

# Ingredients, each added alone to the default. Copy-Paste and LSUV are on in the tiny preset, so
# maskinit-copy-paste and maskinit-lsuv train the default's config.
INGREDIENTS = {
    # weight EMA with a window of ~50 iterations (an eighth of the 400-iteration run), warmed up over 40
    "maskinit-ema": ["MASKINIT.EMA.ENABLED", "True", "MASKINIT.EMA.DECAY", "0.98", "MASKINIT.EMA.WARMUP_ITERS", "40"],
    # the preset's EMA as it stands: its window (an eighth of the run) and warmup rescale with --iters, so
    # this is maskinit-ema at 400 iterations and a window of about 200 at 1,600
    "maskinit-ema-scaled": ["MASKINIT.EMA.ENABLED", "True"],
    # the same, restarted from the weights at the LR step (the average that spans the step lost at 1,600)
    "maskinit-ema-restart": ["MASKINIT.EMA.ENABLED", "True", "MASKINIT.EMA.RESTART_AT_STEPS", "True"],
    # Simple Copy-Paste on half of the training images, Detectron2's default resize (no LSJ)
    "maskinit-copy-paste": ["MASKINIT.AUGMENT.COPY_PASTE.PROB", "0.5"],
    # LSUV (orthogonal, then each layer's output variance set to 1 on the first training batch); the
    # tiny preset's init, so this trains the default's config
    "maskinit-lsuv": ["--init", "lsuv"],
}
MASKINIT_RUNS.update({name: list(options) for name, options in INGREDIENTS.items()})

# Schedule probes for the 400-iteration budget (--only these): the default with its warmup (80 of 400),
# LR schedule (one step at 320) or LR changed. Explicit keys, so --iters does not rescale them.
SCHEDULE = {
    # a quarter of the warmup: AdamW at full LR from iteration 20
    "maskinit-warmup20": ["SOLVER.WARMUP_ITERS", "20"],
    # cosine decay to zero over the run in place of the step at 320 (warmup 80 kept)
    "maskinit-cosine": ["MASKINIT.LR_SCHEDULE", "cosine"],
    # a short warmup with twice the LR
    "maskinit-warmup20-lr2e-3": ["SOLVER.WARMUP_ITERS", "20", "SOLVER.BASE_LR", "0.002"],
    # twice the RoIs per image for the box and mask heads (64 -> 128)
    "maskinit-roi128": ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128"],
}
MASKINIT_RUNS.update({name: list(options) for name, options in SCHEDULE.items()})

# Training probes at 400 iterations (--only these): the default with one thing changed that the
# variant sweep left untried. Explicit keys: the data fit keeps them.
PROBES = {
    # Copy-Paste on every training image rather than half
    "maskinit-cp1.0": ["MASKINIT.AUGMENT.COPY_PASTE.PROB", "1.0"],
    # a mild large-scale jitter (scales 0.5-1.5 of the fitted square, cropped or padded to it) under Copy-Paste
    "maskinit-lsj-mild": ["MASKINIT.AUGMENT.NAME", "lsj", "MASKINIT.AUGMENT.LSJ_MIN_SCALE", "0.5",
                          "MASKINIT.AUGMENT.LSJ_MAX_SCALE", "1.5"],
    # half of the heads' 96 sampled RoIs per image may be foreground (Detectron2: a quarter); the mask head
    # trains on the foreground ones only
    "maskinit-pos0.5": ["MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.5"],
    # AdamW at 1.5e-3 (the default 1e-3; 2e-3 with warmup 20 ended lower in the schedule probe)
    "maskinit-lr1.5e-3": ["SOLVER.BASE_LR", "0.0015"],
}
MASKINIT_RUNS.update({name: list(options) for name, options in PROBES.items()})

# Probes for photo sets of large objects (--only these): the default (fit included) with one thing changed.
PHOTO_PROBES = {
    # the mask head's 14x14 pool (28x28 masks) in place of the preset's 7x7 (14x14 masks)
    "maskinit-mask14": ["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "14"],
    # AdamW at twice the default LR (2e-3), the default warmup
    "maskinit-lr2e-3": ["SOLVER.BASE_LR", "0.002"],
    # the 14x14 pool with a mask head half as wide (32 channels): its convs' FLOPs per RoI are those of the
    # preset's 64-channel head at 7x7; the whole head costs about what a 9x9 pool at 64 channels does
    "maskinit-mask14-dim32": ["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "14", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32"],
    # a 9x9 pool (18x18 masks), what the safe fit's budget leaves for the pool on balloons and pedestrians
    "maskinit-mask9": ["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "9"],
    # the 14x14 pool with two of the mask head's four convs
    "maskinit-mask14-conv2": ["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "14", "MODEL.ROI_MASK_HEAD.NUM_CONV", "2"],
}
# the 14x14 mask pool at the preset's 128-pixel input: about the safe fit's cost (est. 1.2x the preset's s/iter)
PHOTO_PROBES["maskinit-mask14-input128"] = [*PHOTO_PROBES["maskinit-mask14"], *PRESET_INPUT]
# the 14x14 pool at 32 channels at the 160-px input the safe fit gives balloons and pedestrians, in place of the
# 9x9 pool at 64 channels that its budget leaves there (about the same estimated s/iter)
PHOTO_PROBES["maskinit-mask14-dim32-input160"] = [
    *PHOTO_PROBES["maskinit-mask14-dim32"], "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "160",
]
# the box head as two 256-wide fully connected layers (Detectron2's default head) in place of the preset's four GN
# convs and one fully connected layer: the cheaper head a larger input could be paid with
PHOTO_PROBES["maskinit-box2fc"] = ["MODEL.ROI_BOX_HEAD.NUM_CONV", "0", "MODEL.ROI_BOX_HEAD.NUM_FC", "2"]
# the mask loss at twice its weight (Detectron2's mask head with loss_weight 2, benchmarks/mask_loss_probe.py)
PHOTO_PROBES["maskinit-maskloss2"] = [
    "MASKINIT.PLUGINS", "['benchmarks/mask_loss_probe.py']", "MODEL.ROI_MASK_HEAD.NAME", "MaskLoss20",
]
# the RoIs pooled from coarser FPN levels: canonical box 112 at level 4 (Detectron2's 224 puts nearly every RoI of a
# 128-160 px input on P2), benchmarks/canonical_probe.py
PHOTO_PROBES["maskinit-canonical112"] = [
    "MASKINIT.PLUGINS", "['benchmarks/canonical_probe.py']", "MODEL.ROI_HEADS.NAME", "StandardROIHeadsCanonical112",
]
# photometric jitter on the training images (brightness, contrast, saturation, each 0.8-1.2),
# benchmarks/photometric_probe.py
PHOTO_PROBES["maskinit-photometric"] = ["MASKINIT.PLUGINS", "['benchmarks/photometric_probe.py']"]
# GroupNorm with 8 groups (8 channels a group in the 64-channel layers) in place of 32 (2 channels a group)
PHOTO_PROBES["maskinit-gn8"] = ["MASKINIT.NORM", "GN:groups=8"]
# masks at 4x the pool's side (a second 2x upsampling to 32 channels before the predictor),
# benchmarks/mask_upsample_probe.py
PHOTO_PROBES["maskinit-mask-up4"] = [
    "MASKINIT.PLUGINS", "['benchmarks/mask_upsample_probe.py']", "MODEL.ROI_MASK_HEAD.NAME", "MaskUpsample4",
]
# two anchor sizes per FPN level, an octave apart in half-octave steps (16 and 22.6 on P2 ... 256 and 362 on
# P6; the preset: one size per level), so an object between two octaves has an anchor of its size
PHOTO_PROBES["maskinit-anchors-2scale"] = [
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 22.6], [32, 45.3], [64, 90.5], [128, 181], [256, 362]]",
]
# the mask head trained with a Dice loss beside its cross-entropy (benchmarks/mask_dice_probe.py)
PHOTO_PROBES["maskinit-mask-dice"] = [
    "MASKINIT.PLUGINS", "['benchmarks/mask_dice_probe.py']", "MODEL.ROI_MASK_HEAD.NAME", "MaskDice",
]
# the box head's regression by the GIoU loss of its decoded boxes, weighted 10 (Detectron2's option; the preset:
# an L1 loss of the box deltas, weights 10/10/5/5), as mmdetection's GIoU R-CNN configs weigh it
PHOTO_PROBES["maskinit-giou"] = [
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", "10.0",
]
MASKINIT_RUNS.update({name: list(options) for name, options in PHOTO_PROBES.items()})

# Where the RoI heads' time goes at the tiny scale (one thread, fwd+bwd per iteration of 4
# images): backbone ~170 ms, the 4-conv box head ~100 ms at 64 RoIs per image (~200 at 128), the mask
# head ~150 ms at 16 positives per image (~310 at 32), an fc-only box head ~11 ms (~19 at 128). So the
# box head's convs are what RoI batch 128 pays for twice over; these buy more RoIs with an fc head.
HEAD_PROBES = {
    # Detectron2's standard box head (two fc layers of FC_DIM, no convs) at the default's 64 RoIs
    "maskinit-box2fc": ["MODEL.ROI_BOX_HEAD.NUM_CONV", "0", "MODEL.ROI_BOX_HEAD.NUM_FC", "2"],
    # the same head with twice the RoIs per image (128, a quarter foreground: up to 32 for the mask head)
    "maskinit-roi128-box2fc": [
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128", "MODEL.ROI_BOX_HEAD.NUM_CONV", "0", "MODEL.ROI_BOX_HEAD.NUM_FC",
        "2",
    ],
    # The mask head's four 64-channel convs cost ~150 ms per 64 RoIs at the 14x14 pool, ~60 at 10x10 and ~31
    # at 7x7 (28x28, 20x20 and 14x14 masks): a smaller pool pays for twice the RoIs with the 4-conv box head.
    "maskinit-roi128-mask10": [
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "10",
    ],
    "maskinit-roi128-mask7": [
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "7",
    ],
    # 128 RoIs with the 7x7 pool ran at 1.26x the comparator's s/iter one at a time (speed.py, 200 iterations):
    # the box head's convs and RoIAlign on 512 RoIs. 96 RoIs per image: 1.03x. The tiny preset's values, so
    # this trains the default's config.
    "maskinit-roi96-mask7": [
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "96", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "7",
    ],
}
MASKINIT_RUNS.update({name: list(options) for name, options in HEAD_PROBES.items()})

# The goal: mask AP of the default over the comparator's, at most this s/iter ratio.
GOAL_SYNTHETIC, GOAL_REAL, SPEED_LIMIT = 1.5, 1.5, 1.25


def set_folder(dataset: CocoSet, iters: int) -> str:
    """The runs of one set and budget: runs/SET at the 400-iteration budget, runs/SET-Nit otherwise."""
    return dataset.name if iters == ITERS else f"{dataset.name}-{iters}it"


def ap_curve(metrics: Path, iters: int = ITERS) -> list[list[float]]:
    """[iteration, box AP, mask AP] at each evaluation, from Detectron2's metrics.json."""
    if not metrics.is_file():
        return []
    from maskinit.curves import read_metrics

    return [[min(row["iteration"] + 1, iters), ap(row["bbox/AP"]), ap(row.get("segm/AP"))]
            for row in read_metrics(metrics) if "bbox/AP" in row and "iteration" in row]


def ap(value) -> float:
    """An AP rounded; Detectron2's NaN (no detections at all) and a missing value count as 0."""
    return round(value, 3) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


DATA_OPTIONS = ("--train-json", "--train-images", "--val-json", "--val-images")


def data_fingerprint(command: list[str]) -> dict | None:
    """What the data options of `command` hold, independent of where: a hash of each JSON file's bytes and
    of each image folder's file names and sizes (the same synthetic set generated into another cache dir
    is the same data). None when a path is gone (an old result whose data cannot be checked)."""
    import hashlib

    found = {}
    for option, value in zip(command, command[1:]):
        if option not in DATA_OPTIONS:
            continue
        path, digest = Path(value), hashlib.sha256()
        if path.is_file():
            digest.update(path.read_bytes())
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
        else:
            return None
        found[option] = digest.hexdigest()[:16]
    return found


def comparable(command: list[str], folder: Path) -> list[str]:
    """`command` with what may differ between two calls of the same run blanked: the data paths (compared
    by data_fingerprint), the run's own folder (SET/NAME/seedN under any runs dir: a copied cache is the same
    cache) and the project's root (a clone elsewhere; not a longer name that starts with it)."""
    run = re.compile(r"[^\s=]*/" + re.escape("/".join(folder.parts[-3:])) + r"(?=/|$)")
    root = re.compile(re.escape(str(ROOT)) + r"(?=/|$)")
    blanked, skip = [], False
    for arg in command:
        if skip:
            blanked.append("<data>")
        else:
            blanked.append(root.sub("<root>", run.sub("<run>", arg)))
        skip = arg in DATA_OPTIONS
    return blanked


def why_not_cached(cached: dict, command: list[str], folder: Path, recipe: str | None = None) -> str | None:
    """None when `cached` (a result.json, or started.json) is a run of `command`; else why not, in words.
    Older results record no command (kept). For a maskinit run, the recipe digest must match too: the
    same command trains something else once the preset changed."""
    if recipe is not None and cached.get("recipe") != recipe:
        return f"the tiny preset's config changed (recipe {cached.get('recipe')} -> {recipe})"
    if "command" not in cached:
        return None
    old, new = comparable(cached["command"], folder), comparable(command, folder)
    if old != new:
        diff = next(((a, b) for a, b in zip(old, new) if a != b), (" ".join(old[len(new):]), " ".join(new[len(old):])))
        return f"another command ({diff[0]!r} -> {diff[1]!r})"
    stored = cached.get("data_fingerprint") or data_fingerprint(cached["command"])
    if stored != data_fingerprint(command):
        return "other data (the data options' files differ, or the cached run's data is gone)"
    return None


def cached_result(result_file: Path, command: list[str], recipe: str | None = None) -> dict | None:
    """A finished run's result, if it ran this command on this data (and, for a maskinit run, this recipe);
    a result that does not is reported on one line and redone."""
    cached = read_json(result_file)
    if not cached:
        return None
    reason = why_not_cached(cached, command, result_file.parent, recipe)
    if reason is None:
        return cached
    print(f"{cached.get('name', result_file.parent.parent.name)} seed {cached.get('seed', '?')}: "
          f"cached result not used, redone: {reason}", flush=True)
    return None


def recipe_digest(preset: str = "tiny") -> str:
    """A short hash of the preset's whole config as maskinit builds it (its YAML chain and maskinit's
    defaults, before any run option and the data fit): what `maskinit train --preset P` trains."""
    import hashlib

    from maskinit.config import load_config

    return hashlib.sha256(load_config(preset=preset).dump().encode()).hexdigest()[:16]


def execute(name: str, kind: str, command: list[str], folder: Path, timeout: float | None = None,
            resume: list[str] | None = None, keep_weights: bool = False, **meta) -> dict:
    """Run a stock (stock_detectron2.py) or maskinit (`maskinit train`) command into folder/out, unless
    cached; result.json: status, s/iter, final box and mask AP, AP curve, input sizes.

    A run stopped by a signal (SIGTERM or Ctrl-C) writes no result.json; with
    `resume` (the command that continues a run from out/last_checkpoint), the next call continues it
    from its last checkpoint if it was started by this same command, and starts it afresh otherwise.
    Once its result is written, the run's weights (out/*.pth, 150 MB a tiny run) are removed unless
    `keep_weights`: the result holds all that the reports read, and a sweep of hundreds of runs would
    otherwise fill the disk."""
    result_file, started = folder / "result.json", folder / "started.json"
    recipe = meta.get("recipe")
    cached = cached_result(result_file, command, recipe)
    if cached:
        return cached
    out = folder / "out"
    begun = read_json(started) or {}
    resuming = (bool(resume) and (out / "last_checkpoint").is_file() and "command" in begun
                and why_not_cached(begun, command, folder, recipe) is None)
    if not resuming:
        if out.is_dir():  # a redone run starts from an empty folder: nothing of the old one (metrics.json) mixes in
            shutil.rmtree(out)
        write_json(started, {"command": command, "recipe": recipe, "data_fingerprint": data_fingerprint(command)})
    code = run(resume if resuming else command, folder / "log.txt", timeout=timeout, append=resuming)
    if kind == "stock":
        result = read_json(out / "result.json") or {"status": f"exit {code}", "box_ap": 0.0, "mask_ap": 0.0}
        if code < 0 or code in (130, 143):  # killed by a signal: Detectron2's loop saves nothing then
            result = {"status": "interrupted", "box_ap": 0.0, "mask_ap": 0.0}
    else:
        summary = read_json(out / "run_summary.json") or {}
        evaluation = summary.get("eval", {})
        result = {
            "runner": "maskinit train", "status": summary.get("status", f"exit {code}"),
            "seconds_per_iter": summary.get("seconds_per_iter"),
            "box_ap": (evaluation.get("bbox", {}).get("AP") or 0.0),
            "mask_ap": (evaluation.get("segm", {}).get("AP") or 0.0),
        }
    result["box_ap"], result["mask_ap"] = ap(result.get("box_ap")), ap(result.get("mask_ap"))
    if code and result.get("status") == "finished":
        result["status"] = f"exit {code}"
    if result.get("status") != "finished":
        result["error"] = last_error(folder / "log.txt")
    result.update(name=name, **meta, input=input_sizes(out / "config.yaml"),
                  curve=ap_curve(out / "metrics.json", meta.get("iters", ITERS)), command=command,
                  data_fingerprint=data_fingerprint(command))
    if resuming:
        result["resumed"] = True
    if result["status"] != "interrupted":
        write_json(result_file, result)
        if not keep_weights:
            from maskinit.checkpoint import remove_checkpoints

            remove_checkpoints(out)
    return result


def stopped_left_out(results: list[dict]) -> list[dict]:
    """The results without the runs a signal stopped (no result yet: the same command continues them)."""
    stopped = [r for r in results if r.get("status") == "interrupted"]
    for r in stopped:
        print(
            f"{r['name']} seed {r['seed']}: stopped; the same command continues it from its last checkpoint", flush=True
        )
    return [r for r in results if r.get("status") != "interrupted"]


def maskinit_resume(out: Path, dataset: CocoSet, device: str, period: int) -> list[str]:
    """`maskinit train --resume` of the run in `out`, from the config it saved (the command that
    `maskinit train` itself prints when it is interrupted)."""
    return [
        *MASKINIT, "train", "--config", str(out / "config.yaml"), "--output-dir", str(out), "--resume", "--no-progress",
        "--device", device, "--eval-period", str(period),
        *dataset.args(),
    ]


def last_error(log: Path) -> str | None:
    """The last line of a failed run's log that looks like an error (for the tables and the report)."""
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line or line.startswith("killed")]
    return (errors or lines or [None])[-1]


class Context:
    """What every run of one invocation shares: the set, the budget, the device, the comparator's input."""

    def __init__(self, dataset: CocoSet, args):
        self.dataset, self.iters, self.device = dataset, args.iters, args.device
        self.eval_period = args.eval_period or eval_period(args.iters)
        self.runs = args.runs_dir / set_folder(dataset, args.iters)
        self.timeout = args.run_timeout
        self.recipe = recipe_digest("tiny")  # a cached maskinit run of another tiny preset is redone
        self.stock_input: list[str] = []
        self.stock_suffix = ""
        if args.comparator_input == "tiny":
            self.stock_suffix = "" if dataset.synthetic else "-128px"
        elif not dataset.synthetic:  # the synthetic sets are 128-pixel images: the fit keeps 128
            self.stock_input = comparator_settings(
                dataset, "tiny", args.runs_dir / dataset.name / "comparator-settings-tiny.json"
            )

    def stock_name(self, name: str) -> str:
        return name + self.stock_suffix

    def run_one(self, name: str, seed: int) -> dict:
        folder = (
            self.runs / self.stock_name(name) / f"seed{seed}" if name in STOCK else self.runs / name / f"seed{seed}"
        )
        out = folder / "out"
        meta = dict(seed=seed, dataset=self.dataset.name, heldout=self.dataset.name == "heldout", device=self.device,
                    iters=self.iters)
        if name in STOCK:
            command = [
                PYTHON,
                str(Path(__file__).with_name("stock_detectron2.py")),
                STOCK[name][0],
                str(out),
                *STOCK[name][1:],
                "--seed", str(seed), "--eval-period", str(self.eval_period), "--iters", str(self.iters),
                *self.dataset.args(),
                "MODEL.DEVICE",
                self.device,
                *self.stock_input,
            ]
            return execute(
                self.stock_name(name), "stock", command, folder, self.timeout, resume=[*command, "--resume"], **meta
            )
        command = [*MASKINIT, "train", "--preset", "tiny", "--output-dir", str(out), "--overwrite", "--no-progress",
                   "--seed", str(seed), "--max-iter", str(self.iters), "--device", self.device,
                   "--eval-period", str(self.eval_period), *self.dataset.args(), *MASKINIT_RUNS[name]]
        return execute(
            name, "maskinit", command, folder, self.timeout,
            resume=maskinit_resume(out, self.dataset, self.device, self.eval_period),
            recipe=self.recipe,
            **meta,
        )


def earlier_runs(path: Path, results: list[dict], recipe: str) -> list[dict]:
    """The finished runs of an earlier report of the same set and tag that this call did not run: same data
    (fingerprint) and, for maskinit runs, the same tiny preset. So `--only NAME` adds a run to a set's table
    instead of replacing the table, and the run cache may be gone."""
    earlier = read_json(path) or {}
    done = {(r["name"], r["seed"]) for r in results}
    prints = {json.dumps(r.get("data_fingerprint"), sort_keys=True) for r in results}
    return [
        r for r in earlier.get("runs", [])
        if (r["name"], r["seed"]) not in done and r.get("status") == "finished"
        and json.dumps(r.get("data_fingerprint"), sort_keys=True) in prints
        and (r.get("runner") != "maskinit train" or r.get("recipe") == recipe)
    ]


def summarize(results: list[dict]) -> dict:
    table = {}
    for name in dict.fromkeys(r["name"] for r in results):
        rows = [r for r in results if r["name"] == name]
        speeds = [r["seconds_per_iter"] for r in rows if r.get("seconds_per_iter")]
        table[name] = {
            "seeds": [r["seed"] for r in rows],
            "box_ap": [round(r["box_ap"], 2) for r in rows],
            "mask_ap": [round(r["mask_ap"], 2) for r in rows],
            "box_ap_mean": round(statistics.mean(r["box_ap"] for r in rows), 2),
            "mask_ap_mean": round(statistics.mean(r["mask_ap"] for r in rows), 2),
            "seconds_per_iter": round(statistics.median(speeds), 3) if speeds else None,
            "status": sorted({r["status"] for r in rows}),
            "input": sorted({r["input"] for r in rows if r.get("input")}),
        }
    return table


def comparison(table: dict, goal: float) -> dict | None:
    """The comparator (scratch GN at its best LR by mean mask AP) against maskinit's default: ratios."""
    ranked = [(row["mask_ap_mean"], name) for name, row in table.items() if name.startswith("d2-scratch-gn@")]
    if not ranked or "maskinit-default" not in table:
        return None
    best = max(ranked)[1]
    ours, theirs = table["maskinit-default"], table[best]

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    out = {
        "comparator": best,
        "goal_mask_ratio": goal,
        "speed_limit": SPEED_LIMIT,
        "mask_ap": [ours["mask_ap_mean"], theirs["mask_ap_mean"]],
        "box_ap": [ours["box_ap_mean"], theirs["box_ap_mean"]],
        "seconds_per_iter": [ours["seconds_per_iter"], theirs["seconds_per_iter"]],
        "mask_ratio": ratio(ours["mask_ap_mean"], theirs["mask_ap_mean"]),
        "box_ratio": ratio(ours["box_ap_mean"], theirs["box_ap_mean"]),
        "speed_ratio": ratio(ours["seconds_per_iter"], theirs["seconds_per_iter"]),
    }
    out["goal_met"] = bool(
        out["mask_ratio"] and out["mask_ratio"] >= goal and out["speed_ratio"] and out["speed_ratio"] <= SPEED_LIMIT
    )
    # an optimum at the end of the LRs run may lie beyond it: the next LR that way, when one is defined
    lrs = sorted((float(name.split("@")[1]), name) for _, name in ranked)
    if len(lrs) > 1 and best in (lrs[0][1], lrs[-1][1]):
        beyond = lrs[-1][0] * 2 if best == lrs[-1][1] else lrs[0][0] / 2
        out["best_at_edge"] = f"d2-scratch-gn@{beyond:g}"
    # where the comparator is above 100 / goal mask AP, no AP can reach the ratio: the errors' ratio says more
    out["error_ratio"] = ratio(100 - theirs["mask_ap_mean"], 100 - ours["mask_ap_mean"])
    return out


def report(dataset: CocoSet, args, results: list[dict], names: list[str], stem: str) -> None:
    table = summarize(results)
    goal = GOAL_SYNTHETIC if dataset.synthetic else GOAL_REAL
    compared = comparison(table, goal)
    ranked = [(row["mask_ap_mean"], name) for name, row in table.items() if name.startswith("d2-scratch-gn@")]
    write_json(args.results_dir / f"{stem}.json", {
        "dataset": dataset.name, "data": {k: str(v) for k, v in vars(dataset).items()}, "set": dataset.describe(),
        "budget": budget(args.iters), "iters": args.iters, "eval_period": args.eval_period or eval_period(args.iters),
        "device": args.device, "comparator_input": args.comparator_input, "ablation": args.ablation, "goal": goal,
        "table": table, "comparator_best": max(ranked) if ranked else None, "comparison": compared, "runs": results,
    })
    info = dataset.describe()["train"]
    lines = [
        f"{dataset.name}: {info['images']} training images, {info['instances']} instances, "
        f"{info['classes_listed']} classes listed ({info['classes_present']} present); "
        f"{args.iters} iterations at batch 4, "
        f"seeds {' '.join(map(str, sorted({r['seed'] for r in results})))}, {args.device}",
        "",
    ]
    default = table.get("maskinit-default")
    if args.ablation and default:
        lines += ["| run | box AP (mean) | mask AP (mean) | mask AP - default | mask AP per seed | s/iter | input |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in table.items():
            delta = round(row["mask_ap_mean"] - default["mask_ap_mean"], 2)
            lines.append(f"| {name} | {row['box_ap_mean']} | {row['mask_ap_mean']} | {delta:+} | {row['mask_ap']} | "
                         f"{row['seconds_per_iter']} | {'; '.join(row['input'])} |")
    else:
        lines += [
            "| run | box AP (mean) | mask AP (mean) | mask AP per seed | s/iter | input |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in table.items():
            lines.append(f"| {name} | {row['box_ap_mean']} | {row['mask_ap_mean']} | {row['mask_ap']} | "
                         f"{row['seconds_per_iter']} | {'; '.join(row['input'])} |")
    if compared:
        lines += [
            "", f"Comparator: {compared['comparator']} (best mean mask AP of the scratch-GN LRs run).", "",
            "| | maskinit default | comparator | ratio | goal |", "|---|---|---|---|---|",
            f"| mask AP | {compared['mask_ap'][0]} | {compared['mask_ap'][1]} | {compared['mask_ratio']}x "
            f"| >= {goal}x |",
            f"| box AP | {compared['box_ap'][0]} | {compared['box_ap'][1]} | {compared['box_ratio']}x | |",
            f"| s/iter | {compared['seconds_per_iter'][0]} | {compared['seconds_per_iter'][1]} "
            f"| {compared['speed_ratio']}x "
            f"| <= {SPEED_LIMIT}x |",
            "",
            f"Goal met: {'yes' if compared['goal_met'] else 'no'}.",
        ]
        if compared["mask_ap"][1] * goal > 100:
            lines += ["", f"The comparator's mask AP is above {100 / goal:.1f}, where no AP reaches {goal}x: mask AP "
                          f"error (100 - AP) of the comparator over maskinit's: {compared['error_ratio']}x."]
        if compared.get("best_at_edge"):
            edge = compared["best_at_edge"]
            lines += ["", "The comparator's best LR is at the edge of the LRs run: its optimum may lie beyond"
                          + (f" (run `--only {edge}` too)." if edge in STOCK else ".")]
    failed = [r for r in results if r.get("status") != "finished"]
    if failed:
        lines += ["", "Runs that did not finish:"] + [
            f"- {r['name']} seed {r['seed']}: {r['status']} ({r.get('error')})" for r in failed
        ]
    (args.results_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def chosen_lrs(args, dataset: CocoSet) -> list[str]:
    """--lrs, or `best`: the best LR of this set's 400-iteration sweep (its results file)."""
    if args.lrs != ["best"]:
        return args.lrs
    sweep = read_json(args.results_dir / f"recipes-{dataset.name}{args.tag}.json") or {}
    best = sweep.get("comparison") or {}
    if not best.get("comparator") and sweep.get("comparator_best"):  # result files without a comparison
        best = {"comparator": sweep["comparator_best"][1]}
    if not best.get("comparator"):
        raise SystemExit(f"--lrs best: no comparator in {args.results_dir / f'recipes-{dataset.name}{args.tag}.json'}: "
                         "run the 400-iteration sweep on this set first")
    return [best["comparator"].split("@")[1].split("-")[0]]


def select(args, dataset: CocoSet, parser) -> list[str]:
    if args.all:
        names = [*STOCK, *MASKINIT_RUNS]
    elif args.ablation:
        names = list(ABLATION)
    elif args.only:
        names = list(args.only)
    else:
        names = MAIN if dataset.name == "default" and args.iters == ITERS else COMPARE
        lrs = chosen_lrs(args, dataset)
        unknown = [lr for lr in lrs if f"d2-scratch-gn@{lr}" not in STOCK]
        if unknown:
            parser.error(f"--lrs: no run for {unknown} (STOCK has {SWEEP})")
        names = [n for n in names if not n.startswith("d2-scratch-gn@") or n.split("@")[1] in lrs]
    unknown = [name for name in names if name not in STOCK and name not in MASKINIT_RUNS]
    if unknown:
        parser.error(f"unknown run(s): {', '.join(unknown)}")
    return names


def data_sets(args, parser) -> list[CocoSet]:
    explicit = [args.train_json, args.train_images, args.val_json, args.val_images]
    if any(explicit):
        if not all(explicit) or not args.name:
            parser.error("--train-json, --train-images, --val-json, --val-images and --name go together")
        return [CocoSet(args.name, *(Path(p).resolve() for p in explicit))]
    if args.data:
        return [dataclasses.replace(parse_data(spec), synthetic=args.synthetic) for spec in args.data]
    return [synthetic_set(args.heldout)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", nargs="*", help="run names (default: the comparison, COMPARE; MAIN on the embedded set)"
    )
    parser.add_argument("--all", action="store_true", help="every run defined here (hours on 2 CPU cores)")
    parser.add_argument("--ablation", action="store_true", help="the default minus one part at a time (ABLATIONS)")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--heldout", action="store_true", help="the synthetic held-out set instead of the embedded one")
    parser.add_argument("--data", action="append", metavar="NAME=PATH",
                        help=f"a COCO set folder (train.json, train/, val.json, val/), repeatable; e.g. "
                             f"{REAL_SETS[0]}=../shared/data/{REAL_SETS[0]}")
    parser.add_argument("--synthetic", action="store_true",
                        help="the --data sets are synthetic (recorded in the results; the goal is the same)")
    parser.add_argument("--train-json")
    parser.add_argument("--train-images")
    parser.add_argument("--val-json")
    parser.add_argument("--val-images")
    parser.add_argument("--name", help="the set's name with the four explicit paths (results-SET, runs/SET)")
    parser.add_argument("--iters", type=int, default=ITERS, help="budget (400; 1600 is 4x), schedule scaled for both")
    parser.add_argument("--eval-period", type=int, default=0, help="0: every 100 iterations, 8 points past 400")
    parser.add_argument(
        "--lrs", nargs="*", default=SWEEP, help="the comparator's LR sweep; `best`: the 400-iteration sweep's best"
    )
    parser.add_argument(
        "--comparator-input",
        choices=("fitted", "tiny"),
        default="fitted",
        help="stock Detectron2 at the input size maskinit fits to the set, or at the tiny preset's 128 px",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (all runs share the device)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="cache of finished runs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--run-timeout", type=float, default=None, help="seconds after which a run is killed")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. --tag=-gpu)")
    parser.add_argument("--report-only", action="store_true", help="summarize the cached runs, start none")
    args = parser.parse_args()
    args.runs_dir, args.results_dir = args.runs_dir.resolve(), args.results_dir.resolve()
    for dataset in data_sets(args, parser):
        names = select(args, dataset, parser)
        context = Context(dataset, args)
        jobs = [(name, seed) for seed in args.seeds for name in names]  # every name's first seed first
        if args.report_only:
            found = [
                read_json((context.runs / (context.stock_name(n) if n in STOCK else n) / f"seed{s}") / "result.json")
                for n, s in jobs
            ]
            results = [result for result in found if result]
        else:
            with ThreadPoolExecutor(args.jobs) as pool:
                results = stopped_left_out(list(pool.map(lambda job, context=context: context.run_one(*job), jobs)))
        if not results:
            print(f"{dataset.name}: no finished runs", flush=True)
            continue
        suffix = (f"-{args.iters}it" if args.iters != ITERS else "") + ("-ablation" if args.ablation else "")
        stem = f"recipes-{dataset.name}{suffix}{args.tag}"
        results = [*results, *earlier_runs(args.results_dir / f"{stem}.json", results, context.recipe)]
        report(dataset, args, results, names, stem)


if __name__ == "__main__":
    main()
