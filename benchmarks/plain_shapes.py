"""A second synthetic generator, written apart from maskinit's embedded one, to check the recipe on
synthetic data it was never chosen on.

It follows the classic toy set of Matterport's Mask R-CNN ("shapes"): a plain background of one random
colour, 1 to 4 shapes (square, circle, triangle) of a random colour, sizes 20 to 32 px in a 128 px
image, and overlap limited by non-maximum suppression of the boxes (IoU 0.3), so instances rarely
occlude each other. Masks are the visible parts (later shapes cover earlier ones) and are written as
RLE, where the embedded set writes polygons. The embedded set differs on every count: textured
backgrounds, shaded fills, five classes, frequent occlusion, polygons.

Usage: python benchmarks/plain_shapes.py OUT [--train 300] [--val 60] [--seed 0] [--size 128]
writes OUT/{train.json, train/, val.json, val/}, the layout `recipes.py --data NAME=OUT` reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_util
from torchvision.ops import nms

CLASS_NAMES = ("square", "circle", "triangle")


def draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One uint8 RGB image and its instances as (class index, visible mask), bottom first."""
    background = rng.integers(0, 256, size=3)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    buffer = max(2, size * 20 // 128)
    specs, boxes = [], []
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(len(CLASS_NAMES)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        y, x = (int(v) for v in rng.integers(buffer, size - buffer, size=2))
        s = int(rng.integers(buffer, max(buffer + 1, size // 4 + 1)))
        specs.append((label, colour, x, y, s))
        boxes.append((x - s, y - s, x + s, y + s))
    # as Matterport, NMS of the boxes at IoU 0.3; the earlier shape wins (Matterport: the later)
    keep = nms(torch.tensor(boxes, dtype=torch.float32), -torch.arange(len(boxes), dtype=torch.float32), 0.3)
    specs = [specs[i] for i in sorted(keep.tolist())]
    masks = []
    for label, colour, x, y, s in specs:
        mask = np.zeros((size, size), np.uint8)
        if CLASS_NAMES[label] == "square":
            cv2.rectangle(mask, (x - s, y - s), (x + s, y + s), 1, -1)
        elif CLASS_NAMES[label] == "circle":
            cv2.circle(mask, (x, y), s, 1, -1)
        else:
            half = s / np.sin(np.pi / 3)
            points = np.array([[x, y - s], [x - half, y + s], [x + half, y + s]], np.int32)
            cv2.fillPoly(mask, [points], 1)
        image[mask.astype(bool)] = colour
        masks.append((label, mask.astype(bool)))
    visible, covered = [], np.zeros((size, size), bool)
    for label, mask in reversed(masks):
        own = mask & ~covered
        covered |= mask
        if own.sum() >= 16:
            visible.append((label, own))
    visible.reverse()
    return image, visible


def write_split(out: Path, split: str, count: int, seed: int, size: int) -> None:
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, image_id])
        image, instances = draw(rng, size)
        name = f"{image_id:05d}.png"
        cv2.imwrite(str(folder / name), image[:, :, ::-1])
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for label, mask in instances:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "segmentation": rle, "area": float(mask.sum()), "bbox": [x, y, w, h], "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASS_NAMES)]
    (out / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                   "categories": categories}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    for split, count in (("train", args.train), ("val", args.val)):
        write_split(args.out, split, count, args.seed, args.size)
    print(f"wrote {args.train} training and {args.val} validation images to {args.out}")


if __name__ == "__main__":
    main()
