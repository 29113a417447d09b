"""Benchmark sets derived from the real sets, for kinds of data the real sets do not cover alone.

- `coco128-person`: the coco128 photos that show people, with the person instances only (one class;
  tall objects, large and small: the pedestrian and "one class of large and small objects" cases).
- `coco128-objects`: every coco128 photo, all 80 classes merged into one class `object` (class-
  agnostic instance segmentation of real photos; objects from a few pixels to the whole image).
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


DERIVED = {"coco128-person": coco128_person, "coco128-objects": coco128_objects, "nuclei_gray": nuclei_gray}


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
