"""What a training step costs as the input size and the RoI batch grow: the measurements behind the
relative s/iter that `maskinit analyze-data` and `train` print for a fitted config (maskinit/machine.py,
STEP_COST).

One process, one thread, the CPU time of the process (not wall time, so another job on the other core
hardly moves it): forward, backward and AdamW step of the tiny preset's model on generated batches of 4
images, each image with a given number of instances (random ellipses), at several input sizes and RoI
batches. The step time is then fitted as

    t = FIXED + PER_PIXEL x padded pixels per image + PER_ROI x sampled RoIs per image
        + PER_MASK_ROI x (foreground RoIs per image) x (mask pool / 7)^2

by least squares; each term is written as the share of the tiny preset's step (128 px, 96 RoIs, a 7x7
mask pool, 24 foreground RoIs per image), which is what machine.STEP_COST holds. With --mask-width, six
steps with 32- and 64-channel mask heads join the grid and the mask term is split into a part that grows
with the square of the head's width w (relative to 64) and one that grows with w:

        + (foreground RoIs per image) x (mask pool / 7)^2 x (PER_MASK_ROI x w^2 + PER_MASK_ROI_LINEAR x w)

(machine.MASK_WIDTH_SQUARE is the first part's share at w = 1).

Usage: python benchmarks/step_cost.py [--steps 8] [--mask-width] [--out FILE]
(default FILE: benchmarks/results/step-cost.json, with --mask-width step-cost-mask-width.json)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (height, width, RoI batch per image, instances per image, mask pool, mask head width)
GRID = [
    (96, 128, 96, 4, 7, 64), (128, 128, 96, 4, 7, 64), (128, 128, 96, 30, 7, 64), (192, 192, 96, 4, 7, 64),
    (256, 256, 96, 4, 7, 64), (256, 320, 96, 30, 7, 64), (384, 384, 96, 4, 7, 64), (128, 128, 192, 30, 7, 64),
    (128, 128, 336, 90, 7, 64), (256, 320, 336, 90, 7, 64), (128, 128, 96, 30, 14, 64), (256, 256, 192, 30, 7, 64),
]
# --mask-width adds these: 9x9 and 14x14 pools, 32- and 64-channel mask heads (the FPN's 64 channels)
WIDTH_GRID = [
    (160, 160, 96, 30, 14, 64), (160, 160, 96, 30, 9, 64), (128, 128, 96, 30, 14, 32), (160, 160, 96, 30, 14, 32),
    (160, 160, 96, 4, 14, 32), (128, 128, 96, 30, 7, 32),
]
IMAGES = 4
PRESET = {"pixels": 128 * 128, "rois": 96, "mask_rois": 24.0}


def batch(height: int, width: int, instances: int, rng: np.random.Generator) -> list[dict]:
    import cv2
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    items = []
    for _ in range(IMAGES):
        image = rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)
        masks, boxes = [], []
        for _ in range(instances):
            side = rng.uniform(0.05, 0.3) * min(height, width)
            cx, cy = rng.uniform(side, width - side), rng.uniform(side, height - side)
            mask = np.zeros((height, width), np.uint8)
            cv2.ellipse(mask, (int(cx), int(cy)), (int(side / 2), int(side / 3)), 0, 0, 360, 1, -1)
            masks.append(mask)
            boxes.append([cx - side / 2, cy - side / 3, cx + side / 2, cy + side / 3])
        target = Instances((height, width))
        target.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        target.gt_classes = torch.zeros(instances, dtype=torch.int64)
        target.gt_masks = BitMasks(torch.from_numpy(np.stack(masks)).bool())
        items.append({"image": torch.from_numpy(image), "instances": target, "height": height, "width": width})
    return items


def measure(height: int, width: int, rois: int, instances: int, pool: int, steps: int, mask_dim: int = 64) -> dict:
    import torch

    from maskinit.config import load_config
    from maskinit.model import build_model
    from maskinit.trainer import Trainer

    overrides = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(rois), "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", str(pool),
                 "MODEL.ROI_MASK_HEAD.CONV_DIM", str(mask_dim),
                 "INPUT.MIN_SIZE_TRAIN", f"({min(height, width)},)", "INPUT.MAX_SIZE_TRAIN", str(max(height, width)),
                 "MODEL.ROI_HEADS.NUM_CLASSES", "1", "MASKINIT.INIT", "c2", "INPUT.MASK_FORMAT", "bitmask"]
    cfg = load_config(preset="tiny", overrides=overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    rng = np.random.default_rng(0)
    data = batch(height, width, instances, rng)
    from detectron2.utils.events import EventStorage

    times = []
    with EventStorage(0) as storage:
        for step in range(steps + 3):
            start = time.process_time()
            losses = model(data)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 3:
                times.append(time.process_time() - start)
            storage.step()
        # the mask head trains on the foreground RoIs (Detectron2 logs their count per image)
        foreground = float(np.median([value for value, _ in storage.history("roi_head/num_fg_samples").values()[3:]]))
    padded = math.ceil(height / 32) * 32 * math.ceil(width / 32) * 32
    return {"height": height, "width": width, "padded_pixels": padded, "rois": rois, "instances": instances,
            "mask_pool": pool, "mask_dim": mask_dim, "mask_rois": foreground, "seconds": float(np.median(times))}


def fit(points: list[dict]) -> dict:
    def mask_bins(p):
        return p["mask_rois"] * (p["mask_pool"] / 7) ** 2

    widths = any(p.get("mask_dim", 64) != 64 for p in points)
    rows = [[1.0, p["padded_pixels"], p["rois"], mask_bins(p) * (p.get("mask_dim", 64) / 64) ** 2]
            + ([mask_bins(p) * p["mask_dim"] / 64] if widths else []) for p in points]
    coef, *_ = np.linalg.lstsq(np.asarray(rows), np.asarray([p["seconds"] for p in points]), rcond=None)
    fixed, pixel, roi, mask, *linear = coef.tolist()
    mask_linear = linear[0] if linear else 0.0
    preset = (fixed + pixel * PRESET["pixels"] + roi * PRESET["rois"] + (mask + mask_linear) * PRESET["mask_rois"])
    predicted = np.asarray(rows) @ coef
    errors = [round(float(e), 3) for e in (predicted / np.asarray([p["seconds"] for p in points]) - 1)]
    return {
        "seconds": {"fixed": fixed, "per_pixel": pixel, "per_roi": roi, "per_mask_roi": mask,
                    **({"per_mask_roi_linear": mask_linear, "mask_width_square": mask / (mask + mask_linear)}
                       if widths else {})},
        "preset_step_seconds": preset,
        "shares_of_preset_step": {
            "fixed": fixed / preset,
            "pixels": pixel * PRESET["pixels"] / preset,
            "rois": roi * PRESET["rois"] / preset,
            "mask_rois": (mask + mask_linear) * PRESET["mask_rois"] / preset,
        },
        "relative_errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--mask-width", action="store_true", help="add the 32- and 64-channel mask head steps")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    points = []
    name = "step-cost-mask-width.json" if args.mask_width else "step-cost.json"
    out = args.out or ROOT / "benchmarks" / "results" / name
    for height, width, rois, instances, pool, mask_dim in GRID + (WIDTH_GRID if args.mask_width else []):
        points.append(measure(height, width, rois, instances, pool, args.steps, mask_dim))
        print(points[-1], flush=True)
    result = {"grid": points, "fit": fit(points), "threads": 1, "images_per_step": IMAGES,
              "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["fit"], indent=2))


if __name__ == "__main__":
    main()
