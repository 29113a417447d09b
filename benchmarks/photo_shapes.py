"""Synthetic sets with the geometry of real photo sets: one class of objects from a few pixels to most of
the image, on photo-sized images (longest side 512), written apart from maskinit's embedded generator and
used to choose nothing but the data fit's rules, which depend on the geometry (image and object sizes,
aspect ratios) and not on what the objects look like.

- `balloons`: 61 training / 13 validation images of 512 x 340-400 px (either orientation), 1 to 6 round
  objects each (height/width 0.8-1.3, sides log-uniform from 12 to 320 px), shaded, on smooth gradients with
  low-frequency noise; later objects cover earlier ones. The counts and image sizes of Detectron2's balloon
  tutorial set.
- `pedestrians`: 136 / 34 images of 300-500 x 250-400 px, 1 to 5 upright figures each (head, body, legs;
  height/width 2-4, heights log-uniform from 30 to 330 px), the counts of the Penn-Fudan set.

Masks are the visible parts, written as polygons (outer contours). Usage:
python benchmarks/photo_shapes.py OUT --kind balloons|pedestrians [--seed 0]
writes OUT/{train.json, train/, val.json, val/}, the layout `recipes.py --data NAME=OUT` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from maskinit.data.synthetic import mask_polygons  # noqa: E402

KINDS = {
    # name: (train images, val images, class name)
    "balloons": (61, 13, "balloon"),
    "pedestrians": (136, 34, "pedestrian"),
}
MIN_VISIBLE = 30  # pixels: smaller visible remnants are not labelled


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth two-colour gradient with low-frequency noise and a few soft blobs, uint8 BGR."""
    top, bottom = rng.integers(30, 230, size=(2, 3))
    t = np.linspace(0, 1, height)[:, None, None]
    image = (1 - t) * top + t * bottom
    image = np.broadcast_to(image, (height, width, 3)).copy()
    noise = rng.normal(0, 1, size=(max(2, height // 32), max(2, width // 32), 3))
    image += 25 * cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 6))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(20, width // 2)), int(rng.integers(10, height // 3)))
        overlay = image.copy()
        cv2.ellipse(overlay, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.integers(0, 256, 3).tolist(), -1)
        image = 0.7 * image + 0.3 * overlay
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def balloon(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    side = math.exp(rng.uniform(math.log(12), math.log(min(320, 0.9 * min(height, width)))))
    aspect = rng.uniform(0.8, 1.3)
    w, h = side / math.sqrt(aspect), side * math.sqrt(aspect)
    cx, cy = rng.uniform(-0.1 * w, width + 0.1 * w), rng.uniform(-0.1 * h, height + 0.1 * h)
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(
        mask, (int(cx), int(cy)), (max(2, int(w / 2)), max(2, int(h / 2))), float(rng.uniform(-20, 20)), 0, 360, 1, -1
    )
    knot = np.array(
        [[cx, cy + h / 2 - 1], [cx - w / 12, cy + h / 2 + h / 10], [cx + w / 12, cy + h / 2 + h / 10]], np.int32
    )
    cv2.fillPoly(mask, [knot], 1)
    return mask.astype(bool)


def pedestrian(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    tall = math.exp(rng.uniform(math.log(30), math.log(min(330, 0.95 * height))))
    aspect = rng.uniform(2.0, 4.0)
    broad = tall / aspect
    cx, feet = rng.uniform(0, width), rng.uniform(0.6 * tall, height + 0.1 * tall)
    top = feet - tall
    mask = np.zeros((height, width), np.uint8)
    head = broad * 0.35
    cv2.circle(mask, (int(cx), int(top + head)), max(1, int(head)), 1, -1)
    body_top, body_bottom = top + 2 * head, top + 0.6 * tall
    cv2.rectangle(mask, (int(cx - broad / 2), int(body_top)), (int(cx + broad / 2), int(body_bottom)), 1, -1)
    leg = broad * 0.22
    for offset in (-broad / 4, broad / 4):
        x = cx + offset + rng.uniform(-0.1, 0.1) * broad
        cv2.rectangle(mask, (int(x - leg), int(body_bottom)), (int(x + leg), int(feet)), 1, -1)
    return mask.astype(bool)


def shade(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Paint the object: a random colour with a lighter spot towards its top left and some noise."""
    ys, xs = np.nonzero(mask)
    colour = rng.integers(0, 256, 3).astype(np.float64)
    spot = np.array([xs.min() + 0.3 * (xs.max() - xs.min()), ys.min() + 0.3 * (ys.max() - ys.min())])
    reach = max(1.0, 0.7 * max(xs.max() - xs.min(), ys.max() - ys.min()))
    light = np.clip(1 - np.hypot(xs - spot[0], ys - spot[1]) / reach, 0, 1)[:, None]
    values = colour * (0.6 + 0.4 * light) + 70 * light + rng.normal(0, 5, size=(len(xs), 3))
    image[ys, xs] = np.clip(values, 0, 255).astype(np.uint8)


def draw(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
    if kind == "balloons":
        long, short = 512, int(rng.integers(340, 401))
        height, width = (short, long) if rng.random() < 0.6 else (long, short)
        count, make = int(rng.integers(1, 7)), balloon
    else:
        height, width = int(rng.integers(300, 501)), int(rng.integers(250, 401))
        count, make = int(rng.integers(1, 6)), pedestrian
    image = background(rng, height, width)
    masks = []
    for _ in range(count):
        mask = make(rng, height, width)
        if mask.sum() < MIN_VISIBLE:
            continue
        shade(image, mask, rng)
        masks = [m & ~mask for m in masks]
        masks.append(mask)
    return image, [m for m in masks if m.sum() >= MIN_VISIBLE]


def write_split(out: Path, split: str, count: int, kind: str, seed: int, first_id: int) -> None:
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(first_id, first_id + count):
        rng = np.random.default_rng([seed, image_id])
        image, masks = draw(rng, kind)
        name = f"{image_id:05d}.jpg"
        cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": image_id, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for mask in masks:
            polygons = mask_polygons(mask)
            if not polygons:
                continue
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "bbox": box, "area": float(mask.sum()), "segmentation": polygons})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": KINDS[kind][2], "supercategory": "object"}]}
    (out / f"{split}.json").write_text(json.dumps(coco) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kind", choices=sorted(KINDS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, val, _ = KINDS[args.kind]
    write_split(args.out, "train", train, args.kind, args.seed, 1)
    write_split(args.out, "val", val, args.kind, args.seed, 100001)
    print(f"{args.kind}: {args.out}", flush=True)


if __name__ == "__main__":
    main()
