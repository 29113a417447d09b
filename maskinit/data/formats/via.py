"""VGG Image Annotator (VIA) 2.x JSON: its annotation export (`via_region_data.json`, as in the balloon
set of Detectron2's tutorial: `train/via_region_data.json` + `val/via_region_data.json`, the pictures
beside each) or a VIA project file (`_via_img_metadata`).

Regions: polygons, rectangles, circles and ellipses (the last two as polygons of vertices under a pixel
apart); polylines and points are not regions and are left out. The class is the region attribute the
project declares as a dropdown or radio (else the first of class, label, name, category, type that every
region has, else the one attribute every region has); without one, every region is one class, "object".
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import (
    DatasetBuilder,
    bad_file,
    detect_with_splits,
    ellipse_polygon,
    json_kind,
    read_with_splits,
    rectangle_polygon,
)

NAME = "via"
LAYOUT = "via_region_data.json (VIA 2.x export or project) beside the pictures; train/ and val/ for a split"
CLASS_KEYS = ("class", "label", "name", "category", "type")
DEFAULT_CLASS = "object"
NOT_REGIONS = ("polyline", "point")


def _via_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix.lower() == ".json" and json_kind(path) == "via" else []
    if not path.is_dir():
        return []
    return [p for p in sorted(path.glob("*.json")) if p.is_file() and json_kind(p) == "via"]


def _detect_one(path: Path) -> str | None:
    files = _via_files(path)
    return f"VIA JSON {', '.join(f.name for f in files[:2])}" if files else None


def detect(path: Path) -> str | None:
    return detect_with_splits(path, _detect_one)


def _regions(entry: dict) -> list[dict]:
    regions = entry.get("regions") or []
    return list(regions.values()) if isinstance(regions, dict) else list(regions)  # VIA 1.x keeps a dict


def _class_key(data: dict, entries: list[dict]) -> str | None:
    declared = (data.get("_via_attributes") or {}).get("region") or {}
    for key, spec in declared.items():
        if isinstance(spec, dict) and spec.get("type") in ("dropdown", "radio"):
            return key
    regions = [r for e in entries for r in _regions(e) if isinstance(r, dict)]
    keys = [set((r.get("region_attributes") or {}).keys()) for r in regions]
    common = set.intersection(*keys) if keys else set()
    for key in CLASS_KEYS:
        if key in common:
            return key
    return next(iter(common)) if len(common) == 1 else None


def _class_of(region: dict, key: str | None, where) -> str:
    if key is None:
        return DEFAULT_CLASS
    value = (region.get("region_attributes") or {}).get(key)
    if isinstance(value, dict):  # a checkbox attribute: {"name": true}
        chosen = [name for name, on in value.items() if on]
        if len(chosen) != 1:
            raise bad_file(where, f"region attribute {key!r} names {len(chosen)} classes; one is needed")
        value = chosen[0]
    if value is None or str(value).strip() == "":
        raise bad_file(where, f"a region without its class (region attribute {key!r})")
    return str(value).strip()


def _polygon(shape: dict, where) -> list[float] | None:
    name = shape.get("name")
    try:
        if name == "polygon":
            xs, ys = shape["all_points_x"], shape["all_points_y"]
            if len(xs) != len(ys):
                raise bad_file(where, f"a polygon with {len(xs)} x and {len(ys)} y coordinates")
            return [float(v) for point in zip(xs, ys) for v in point]
        if name == "rect":
            x, y = float(shape["x"]), float(shape["y"])
            return rectangle_polygon(x, y, x + float(shape["width"]), y + float(shape["height"]))
        if name == "circle":
            r = float(shape["r"])
            return ellipse_polygon(float(shape["cx"]), float(shape["cy"]), r, r)
        if name == "ellipse":
            return ellipse_polygon(float(shape["cx"]), float(shape["cy"]), float(shape["rx"]), float(shape["ry"]),
                                   float(shape.get("theta", 0.0)))
    except (KeyError, TypeError, ValueError) as error:
        raise bad_file(where, f"a {name} region without its coordinates ({error})") from error
    if name in NOT_REGIONS:
        return None
    raise bad_file(where, f"unknown region shape {name!r}")


def _picture(via_file: Path, data: dict, filename: str) -> Path:
    base = ((data.get("_via_settings") or {}).get("core") or {}).get("default_filepath") or ""
    candidates = [via_file.parent / filename, via_file.parent / "images" / filename]
    if base and not base.startswith(("http://", "https://")):
        candidates.insert(1, Path(base) / filename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise bad_file(via_file, f"its picture {filename} is not there (looked in {via_file.parent})")


def read_file(builder: DatasetBuilder, split: str, path: Path) -> None:
    files = _via_files(path)
    if len(files) != 1:
        raise bad_file(path, f"{len(files)} VIA JSON files; give one as --data, or one per train/ and val/ folder")
    via_file = files[0]
    try:
        data = json.loads(via_file.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise bad_file(via_file, f"not readable JSON ({error})") from error
    metadata = data.get("_via_img_metadata", data)
    entries = [e for e in metadata.values() if isinstance(e, dict) and "filename" in e]
    builder.add_split(split, via_file.parent)
    key = _class_key(data, entries)
    left_out = 0
    for entry in entries:
        picture = _picture(via_file, data, str(entry["filename"]))
        image_id = builder.add_image(split, picture, named_in=via_file)
        for index, region in enumerate(_regions(entry)):
            where = f"{via_file} ({entry['filename']}, region {index})"
            polygon = _polygon(region.get("shape_attributes") or {}, where)
            if polygon is None:
                left_out += 1
                continue
            builder.add_polygons(image_id, _class_of(region, key, where), [polygon], where)
    if left_out:
        builder.notes.append(f"{via_file}: {left_out} polylines or points left out (not regions)")


def read(path: Path):
    builder = DatasetBuilder(NAME, path)
    read_with_splits(path, builder, _detect_one, read_file)
    return builder.finish()
