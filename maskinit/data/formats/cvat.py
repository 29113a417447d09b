"""CVAT for images 1.1 XML (`annotations.xml`, the pictures under `images/` beside it, as CVAT's export
zip holds them).

Shapes: polygons, boxes (turned by their `rotation`), ellipses (as polygons of vertices under a pixel
apart) and masks (CVAT's RLE: alternating run lengths, background first, over the mask's
left/top/width/height box, row by row); shapes sharing a `group_id` and a label are one instance.
Polylines, points, skeletons, cuboids and tags are not regions and are left out. The classes are the
task's or project's labels, in their order. An image's `subset` (Train, Validation, ...) is its split.
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from .common import (
    TRAIN,
    VAL,
    DatasetBuilder,
    bad_file,
    detect_with_splits,
    ellipse_polygon,
    read_with_splits,
)

NAME = "cvat"
LAYOUT = "annotations.xml (CVAT for images 1.1) + images/"
NOT_REGIONS = ("polyline", "points", "skeleton", "cuboid", "tag")
SUBSETS = {"train": TRAIN, "training": TRAIN, "default": TRAIN, "": TRAIN,
           "val": VAL, "valid": VAL, "validation": VAL}


def _is_cvat(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return "<annotations" in head and ("<version>1.1</version>" in head or "<image " in head)


def _xml_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix.lower() == ".xml" and _is_cvat(path) else []
    if not path.is_dir():
        return []
    return [p for p in sorted(path.glob("*.xml")) if _is_cvat(p)]


def _detect_one(path: Path) -> str | None:
    files = _xml_files(path)
    return f"CVAT XML {files[0].name}" if files else None


def detect(path: Path) -> str | None:
    return detect_with_splits(path, _detect_one)


def _points(text: str, where) -> list[float]:
    try:
        return [float(v) for pair in text.split(";") if pair.strip() for v in pair.split(",")]
    except ValueError as error:
        raise bad_file(where, f"points that are not numbers: {text[:60]!r}") from error


def _turned(points: list[float], cx: float, cy: float, degrees: float) -> list[float]:
    if not degrees:
        return points
    angle = math.radians(degrees)
    out = []
    for x, y in zip(points[0::2], points[1::2]):
        dx, dy = x - cx, y - cy
        out += [cx + dx * math.cos(angle) - dy * math.sin(angle), cy + dx * math.sin(angle) + dy * math.cos(angle)]
    return out


def decode_mask(element, height: int, width: int, where) -> np.ndarray:
    """A CVAT mask element as a boolean array of the picture's size."""
    try:
        counts = [int(v) for v in element.get("rle", "").replace(" ", "").split(",") if v]
        left, top = int(float(element.get("left"))), int(float(element.get("top")))
        box_width, box_height = int(float(element.get("width"))), int(float(element.get("height")))
    except (TypeError, ValueError) as error:
        raise bad_file(where, "a mask without a readable rle, left, top, width and height") from error
    if sum(counts) != box_width * box_height or any(c < 0 for c in counts):
        raise bad_file(
            where,
            f"a mask whose RLE covers {sum(counts)} pixels, its {box_width}x{box_height} box {box_width * box_height}",
        )
    values = np.arange(len(counts)) % 2 == 1  # background first
    patch = np.repeat(values, counts).reshape(box_height, box_width)
    if left < 0 or top < 0 or left + box_width > width or top + box_height > height:
        raise bad_file(
            where, f"a mask box at ({left}, {top}) of {box_width}x{box_height} outside its {width}x{height} picture"
        )
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + box_height, left:left + box_width] = patch
    return mask


def _labels(root) -> list[str]:
    for path in ("meta/task/labels/label", "meta/project/labels/label", "meta/job/labels/label"):
        names = [label.findtext("name") for label in root.findall(path)]
        if names:
            return [n for n in names if n]
    return []


def _picture(xml_file: Path, name: str) -> Path:
    for candidate in (
        xml_file.parent / "images" / name,
        xml_file.parent / name,
        xml_file.parent / "images" / Path(name).name,
    ):
        if candidate.is_file():
            return candidate
    raise bad_file(xml_file, f"its picture {name} is not there (looked in {xml_file.parent / 'images'})")


def read_file(builder: DatasetBuilder, split: str, path: Path) -> None:
    from pycocotools import mask as mask_util

    files = _xml_files(path)
    if len(files) != 1:
        raise bad_file(path, f"{len(files)} CVAT XML files; give one as --data")
    xml_file = files[0]
    try:
        root = ElementTree.parse(xml_file).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise bad_file(xml_file, f"not readable XML ({error})") from error
    for label in _labels(root):
        builder.category_id(label)
    images_root = xml_file.parent / "images" if (xml_file.parent / "images").is_dir() else xml_file.parent
    left_out, test = 0, 0
    if root.find("track") is not None:
        builder.notes.append(f"{xml_file}: tracks left out (export the task as CVAT for images)")
    for image in root.findall("image"):
        subset = (image.get("subset") or "").strip().lower()
        if subset not in SUBSETS:
            test += 1
            continue
        part = SUBSETS[subset] if split == TRAIN else split
        builder.add_split(part, images_root)
        name = image.get("name", "")
        stated = (int(image.get("height", 0)), int(image.get("width", 0)))
        image_id = builder.add_image(part, _picture(xml_file, name), stated, named_in=xml_file)
        height, width = builder.size(image_id)
        instances: dict[tuple, dict] = {}
        for index, shape in enumerate(image):
            label = shape.get("label", "")
            where = f"{xml_file} ({name}, {shape.tag} {index}, {label!r})"
            group = shape.get("group_id")
            key = (label, group) if group not in (None, "", "0") else (label, "shape", index)
            entry = {"label": label, "polygons": [], "masks": [], "where": where}
            rotation = float(shape.get("rotation", 0) or 0)
            if shape.tag == "polygon":
                instances.setdefault(key, entry)["polygons"].append(_points(shape.get("points", ""), where))
            elif shape.tag == "box":
                x0, y0, x1, y1 = (float(shape.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                box = [x0, y0, x1, y0, x1, y1, x0, y1]
                instances.setdefault(key, entry)["polygons"].append(
                    _turned(box, (x0 + x1) / 2, (y0 + y1) / 2, rotation)
                )
            elif shape.tag == "ellipse":
                cx, cy, rx, ry = (float(shape.get(k)) for k in ("cx", "cy", "rx", "ry"))
                instances.setdefault(key, entry)["polygons"].append(
                    ellipse_polygon(cx, cy, rx, ry, math.radians(rotation))
                )
            elif shape.tag == "mask":
                instances.setdefault(key, entry)["masks"].append(decode_mask(shape, height, width, where))
            elif shape.tag in NOT_REGIONS:
                left_out += 1
        for instance in instances.values():
            if not instance["masks"]:
                builder.add_polygons(image_id, instance["label"], instance["polygons"], instance["where"])
                continue
            mask = np.logical_or.reduce(instance["masks"])
            polygons = builder.checked_polygons(image_id, instance["label"], instance["polygons"], instance["where"])
            if polygons:
                mask |= mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, height, width))).astype(bool)
            builder.add_mask(image_id, instance["label"], mask, instance["where"])
    if left_out:
        builder.notes.append(
            f"{xml_file}: {left_out} polylines, points, skeletons, cuboids or tags left out (not regions)"
        )
    if test:
        builder.notes.append(f"{xml_file}: {test} images of other subsets (test, ...) left out")


def read(path: Path):
    xml_files = _xml_files(path)
    declared = ()
    if len(xml_files) == 1:
        try:
            declared = _labels(ElementTree.parse(xml_files[0]).getroot())
        except (OSError, ElementTree.ParseError):
            declared = ()
    builder = DatasetBuilder(NAME, path, declared)
    read_with_splits(path, builder, _detect_one, read_file)
    if TRAIN not in builder.splits:
        raise bad_file(path, "no image of a training subset (Train, default or none)")
    return builder.finish()
