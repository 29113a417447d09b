"""LabelMe JSON: one `NAME.json` per picture, beside it (or naming it by `imagePath`), each shape an
instance: polygons, rectangles, circles (a centre and a point on the circle, turned into a polygon of
vertices under a pixel apart, as LabelMe's own labelme2coco does) and masks; shapes sharing a
`group_id` and a label are one instance. Lines and points are not regions and are left out. The
classes are the labels, by name (in the order of a `labels.txt` beside them when there is one).
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np

from .common import (
    DatasetBuilder,
    bad_file,
    detect_with_splits,
    ellipse_polygon,
    find_picture,
    json_kind,
    read_with_splits,
    rectangle_polygon,
)

NAME = "labelme"
LAYOUT = "NAME.json (LabelMe: polygons, rectangles, circles, masks) beside NAME.jpg"
NOT_REGIONS = ("line", "linestrip", "point", "points")
IGNORED_LABELS = ("__ignore__", "_background_")


def _json_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if p.is_file() and not p.name.startswith("."))


def _detect_one(path: Path) -> str | None:
    files = _json_files(path)
    sample = files[:5]
    if sample and sum(json_kind(f) == "labelme" for f in sample) * 2 > len(sample):
        return f"{len(files)} LabelMe JSON files"
    return None


def detect(path: Path) -> str | None:
    return detect_with_splits(path, _detect_one)


def _picture(json_file: Path, data: dict) -> Path:
    named = str(data.get("imagePath") or "").replace("\\", "/")
    candidates = []
    if named:
        candidates += [json_file.parent / named, json_file.parent / Path(named).name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = find_picture(json_file.parent, json_file.stem)
    if found is None:
        raise bad_file(json_file, f"its picture {named or json_file.stem + '.*'} is not there "
                                  "(an image embedded as imageData is not read: keep the picture beside the JSON)")
    return found


def _shape_mask(shape: dict, points: list, height: int, width: int, where) -> np.ndarray:
    from PIL import Image

    try:
        patch = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))) != 0
    except (KeyError, ValueError, OSError) as error:
        raise bad_file(where, f"a mask shape whose mask is not a base64 PNG ({error})") from error
    if patch.ndim == 3:
        patch = patch.any(axis=2)
    x0, y0 = (math.floor(v) for v in points[0])
    mask = np.zeros((height, width), dtype=bool)
    rows, cols = slice(max(y0, 0), min(y0 + patch.shape[0], height)), slice(max(x0, 0), min(x0 + patch.shape[1], width))
    mask[rows, cols] = patch[rows.start - y0: rows.stop - y0, cols.start - x0: cols.stop - x0]
    return mask


def _polygon(shape_type: str, points: list, where, label: str) -> list[float]:
    if shape_type == "rectangle":
        if len(points) != 2:
            raise bad_file(where, f"a rectangle of {label!r} needs 2 corner points, has {len(points)}")
        (x0, y0), (x1, y1) = points
        return rectangle_polygon(x0, y0, x1, y1)
    if shape_type == "circle":
        if len(points) != 2:
            raise bad_file(where, f"a circle of {label!r} needs its centre and a point on it, has {len(points)} points")
        (cx, cy), (px, py) = points
        radius = math.hypot(px - cx, py - cy)
        return ellipse_polygon(cx, cy, radius, radius)
    return [float(v) for point in points for v in point]


def read_folder(builder: DatasetBuilder, split: str, folder: Path) -> None:
    from pycocotools import mask as mask_util

    builder.add_split(split, folder)
    left_out = 0
    for json_file in _json_files(folder):
        try:
            data = json.loads(json_file.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as error:
            raise bad_file(json_file, f"not readable JSON ({error})") from error
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise bad_file(json_file, "not a LabelMe file (no shapes list)")
        picture = _picture(json_file, data)
        stated = (data.get("imageHeight"), data.get("imageWidth"))
        image_id = builder.add_image(split, picture, stated if all(isinstance(v, int) for v in stated) else None,
                                     named_in=json_file)
        height, width = builder.size(image_id)
        instances: dict[tuple, dict] = {}
        for index, shape in enumerate(data["shapes"]):
            label, shape_type = str(shape.get("label", "")), shape.get("shape_type") or "polygon"
            points = shape.get("points") or []
            where = f"{json_file} (shape {index}, {label!r})"
            if shape_type in NOT_REGIONS or label in IGNORED_LABELS:
                left_out += 1
                continue
            group = shape.get("group_id")
            key = (label, group) if group is not None else (label, "shape", index)
            instance = instances.setdefault(key, {"label": label, "polygons": [], "masks": [], "where": where})
            if shape_type == "mask":
                instance["masks"].append(_shape_mask(shape, points, height, width, where))
            elif shape_type in ("polygon", "rectangle", "circle"):
                instance["polygons"].append(_polygon(shape_type, points, where, label))
            else:
                raise bad_file(where, f"unknown shape type {shape_type!r}")
        for instance in instances.values():
            if not instance["masks"]:
                builder.add_polygons(image_id, instance["label"], instance["polygons"], instance["where"])
                continue
            mask = np.logical_or.reduce(instance["masks"])
            polygons = builder.checked_polygons(image_id, instance["label"], instance["polygons"], instance["where"])
            if polygons:  # polygons grouped with a mask: rasterized as COCO rasterizes them
                rles = mask_util.frPyObjects(polygons, height, width)
                mask |= mask_util.decode(mask_util.merge(rles)).astype(bool)
            builder.add_mask(image_id, instance["label"], mask, instance["where"])
    if left_out:
        builder.notes.append(f"{left_out} LabelMe lines, points or ignored labels left out (not regions)")


def _declared(path: Path) -> list[str]:
    for place in (path / "labels.txt", path.parent / "labels.txt"):
        if place.is_file():
            return [n.strip() for n in place.read_text().splitlines() if n.strip() and n.strip() not in IGNORED_LABELS]
    return []


def read(path: Path):
    builder = DatasetBuilder(NAME, path, _declared(path) if path.is_dir() else ())
    read_with_splits(path, builder, _detect_one, read_folder)
    return builder.finish()
