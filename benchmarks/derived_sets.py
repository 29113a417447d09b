"""Benchmark sets derived from the real sets, for kinds of data the real sets do not cover alone.

- `coco128-person`: the coco128 photos that show people, with the person instances only (one class;
  tall objects, large and small: the pedestrian and "one class of large and small objects" cases).
- `coco128-objects`: every coco128 photo, all 80 classes merged into one class `object` (class-
  agnostic instance segmentation of real photos; objects from a few pixels to the whole image).
- `coco128-pedestrians`: one photo per large person of coco128 (at least 80 px tall), cropped around
  that person with a margin as a pedestrian photo is framed (the person about four fifths of the
  height); every person the crop shows keeps its mask, clipped to the crop (one class; real photos of
  standing people, one to a few per image, large; split as coco128 splits its photos).
- `nuclei_gray`: nuclei_tissue's micrographs converted to one-channel 8-bit PNGs (gray micrographs of
  crowded small nuclei; masks as RLE, unchanged).

Each is written as OUT/NAME/{train.json, train/, val.json, val/}, the layout `recipes.py --data
NAME=PATH` reads; images are linked (the gray set's are converted) and the JSON files are rewritten,
so the same source gives the same bytes on every call. The sources are read where they are (default
../shared/data beside the project), never copied into the project.

Usage: python benchmarks/derived_sets.py OUT [--source ../shared/data] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import real_data_dir  # noqa: E402

SPLITS = ("train", "val")


def _load(folder: Path, split: str) -> dict:
    return json.loads((folder / f"{split}.json").read_text())


def _write(out: Path, split: str, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}.json").write_text(json.dumps(data) + "\n")


def _link_images(source: Path, out: Path, images: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for image in images:
        target = out / image["file_name"]
        if not target.exists():
            os.symlink((source / image["file_name"]).resolve(), target)


def coco128_person(source: Path, out: Path) -> None:
    for split in SPLITS:
        data = _load(source / "coco128", split)
        person = next(c for c in data["categories"] if c["name"] == "person")
        annotations = [dict(a, category_id=1) for a in data["annotations"] if a["category_id"] == person["id"]]
        kept = {a["image_id"] for a in annotations}
        images = [i for i in data["images"] if i["id"] in kept]
        _link_images(source / "coco128" / split, out / split, images)
        _write(out, split, {"images": images, "annotations": annotations,
                            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]})


def coco128_objects(source: Path, out: Path) -> None:
    for split in SPLITS:
        data = _load(source / "coco128", split)
        annotations = [dict(a, category_id=1) for a in data["annotations"]]
        _link_images(source / "coco128" / split, out / split, data["images"])
        _write(out, split, {"images": data["images"], "annotations": annotations,
                            "categories": [{"id": 1, "name": "object", "supercategory": "object"}]})


PEDESTRIAN_MIN_HEIGHT = 80  # px in the source photo
PEDESTRIAN_MARGIN = 0.25  # the crop's height is the person's times 1 + this
PEDESTRIAN_MIN_WIDTH = 0.75  # the crop is at least this times its height wide
PEDESTRIAN_MIN_VISIBLE = 0.3  # another person is kept when this share of its mask is in the crop


def _person_mask(annotation: dict, height: int, width: int):
    from pycocotools import mask as mask_util

    rles = mask_util.frPyObjects(annotation["segmentation"], height, width)
    return mask_util.decode(mask_util.merge(rles) if isinstance(rles, list) else rles)


def _crop_box(box: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the crop framing `box` (x, y, w, h), inside the photo."""
    x, y, w, h = box
    crop_h = min(height, h * (1 + PEDESTRIAN_MARGIN))
    crop_w = min(width, max(w * (1 + PEDESTRIAN_MARGIN), crop_h * PEDESTRIAN_MIN_WIDTH))
    cx, cy = x + w / 2, y + h / 2
    x0 = int(round(min(max(0.0, cx - crop_w / 2), width - crop_w)))
    y0 = int(round(min(max(0.0, cy - crop_h / 2), height - crop_h)))
    return x0, y0, x0 + int(round(crop_w)), y0 + int(round(crop_h))


def coco128_pedestrians(source: Path, out: Path) -> None:
    from pycocotools import mask as mask_util

    for split in SPLITS:
        data = _load(source / "coco128", split)
        person = next(c["id"] for c in data["categories"] if c["name"] == "person")
        by_image: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            if a["category_id"] == person and not a.get("iscrowd"):
                by_image.setdefault(a["image_id"], []).append(a)
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image in sorted(data["images"], key=lambda i: i["id"]):
            people = by_image.get(image["id"], [])
            framed = sorted((a for a in people if a["bbox"][3] >= PEDESTRIAN_MIN_HEIGHT), key=lambda a: a["id"])
            if not framed:
                continue
            photo = cv2.imread(str(source / "coco128" / split / image["file_name"]), cv2.IMREAD_COLOR)
            height, width = photo.shape[:2]
            masks = {a["id"]: _person_mask(a, height, width) for a in people}
            for subject in framed:
                x0, y0, x1, y1 = _crop_box(subject["bbox"], height, width)
                new_id = len(images) + 1
                name = f"{Path(image['file_name']).stem}_{subject['id']}.png"
                target = out / split / name
                if not target.exists():
                    cv2.imwrite(str(target), photo[y0:y1, x0:x1])
                images.append({"id": new_id, "file_name": name, "height": y1 - y0, "width": x1 - x0})
                for a in people:
                    whole = masks[a["id"]]
                    part = np.asfortranarray(whole[y0:y1, x0:x1])
                    area = int(part.sum())
                    if area == 0 or area < PEDESTRIAN_MIN_VISIBLE * max(1, int(whole.sum())):
                        continue
                    rle = mask_util.encode(part)
                    bx, by, bw, bh = (float(v) for v in mask_util.toBbox(rle))
                    rle["counts"] = rle["counts"].decode("ascii")
                    annotations.append({"id": len(annotations) + 1, "image_id": new_id, "category_id": 1,
                                        "segmentation": rle, "area": area, "bbox": [bx, by, bw, bh],
                                        "iscrowd": 0})
        _write(out, split, {"images": images, "annotations": annotations,
                            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]})


def nuclei_gray(source: Path, out: Path) -> None:
    for split in SPLITS:
        data = _load(source / "nuclei_tissue", split)
        (out / split).mkdir(parents=True, exist_ok=True)
        images = []
        for image in data["images"]:
            name = Path(image["file_name"]).with_suffix(".png").name
            target = out / split / name
            if not target.exists():
                colour = cv2.imread(str(source / "nuclei_tissue" / split / image["file_name"]), cv2.IMREAD_COLOR)
                cv2.imwrite(str(target), cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
            images.append(dict(image, file_name=name))
        _write(out, split, {**data, "images": images})


DERIVED = {"coco128-person": coco128_person, "coco128-pedestrians": coco128_pedestrians,
           "coco128-objects": coco128_objects, "nuclei_gray": nuclei_gray}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=None, help="folder holding coco128/ and nuclei_tissue/")
    parser.add_argument("--only", nargs="*", choices=sorted(DERIVED), default=list(DERIVED))
    args = parser.parse_args()
    source = (args.source or real_data_dir()).resolve()
    for name in args.only:
        DERIVED[name](source, args.out / name)
        print(f"{name}: {args.out / name}", flush=True)


if __name__ == "__main__":
    main()
