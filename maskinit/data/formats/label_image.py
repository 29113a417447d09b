"""Instance label images: one 8, 16 or 32-bit PNG or TIFF per picture, 0 the background and each other
value one instance (the microscopy standard: cellpose, StarDist, CellProfiler; what `maskinit predict
--format label-image` writes).

Layouts (each may also be split into train/ and val/ subfolders):
- `images/` + `labels/` (or `masks/`): `labels/NAME.png|.tif` for `images/NAME.*`;
- one folder: `NAME.png` + `NAME_masks.png` (or `_mask`, `_label`, `_labels`, `_seg`, `_instances`);
- `labels/` + `classes.json` whose `"images"` names the pictures' folder (predict's output).

Classes: one class ("object", or the one name `classes.json` gives) unless `classes.json` (or
`class_map.json`) beside them says more: `{"classes": {"1": "cell", "2": "debris"}}` names the class
values, `"instances": {"NAME": {"<label>": <class value or name>}}` gives each instance its class;
without instances, a semantic mask `semantic/NAME.png` (or `classes/`) beside each label image gives
each instance the class value most of its pixels have.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import MaskinitError
from .common import (
    TRAIN,
    DatasetBuilder,
    bad_file,
    detect_with_splits,
    find_picture,
    read_label_image,
    read_with_splits,
)

NAME = "label-image"
LAYOUT = "images/NAME.* + labels/NAME.png|.tif (or masks/), or NAME.png + NAME_masks.png; classes.json optional"
PICTURE_DIRS = ("images", "imgs", "image", "img")
LABEL_DIRS = ("labels", "masks", "label", "mask", "label_images")
SEMANTIC_DIRS = ("semantic", "classes", "class_masks")
LABEL_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_seg", "_instances")
LABEL_FILE_SUFFIXES = (".png", ".tif", ".tiff")
CLASS_MAP_FILES = ("classes.json", "class_map.json")
DEFAULT_CLASS = "object"


def _class_map_file(folder: Path) -> Path | None:
    for place in (folder, folder.parent):
        for name in CLASS_MAP_FILES:
            if (place / name).is_file():
                return place / name
    return None


def _load_class_map(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise bad_file(path, f"not a readable class map ({error})") from error
    if (
        not isinstance(data, dict)
        or not set(data) <= {"classes", "instances", "images", "scores"}
        or not isinstance(data.get("classes", {}), dict)
        or not all(str(k).isdigit() for k in data.get("classes", {}))
        or not isinstance(data.get("instances", {}), dict)
    ):
        raise bad_file(path, 'a class map is {"classes": {"1": "name", ...}, "instances": {"NAME": {"label": class}}}')
    return data


def _label_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LABEL_FILE_SUFFIXES
                  and not p.name.startswith("."))


def _picture_for(label: Path, pictures: Path) -> Path | None:
    stem = label.stem
    found = find_picture(pictures, stem)
    if found is not None and found != label:
        return found
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            return find_picture(pictures, stem[: -len(suffix)])
    return None


def _layout(folder: Path) -> tuple[Path, Path, list[Path]] | None:
    """(pictures folder, labels folder, label files) of a folder in one of the layouts, or None."""
    if not folder.is_dir():
        return None
    class_map = _load_class_map(_class_map_file(folder)) if _class_map_file(folder) else {}
    labels_dir = next((folder / d for d in LABEL_DIRS if (folder / d).is_dir()), None)
    if labels_dir is not None:
        if isinstance(class_map.get("images"), str):
            pictures = (folder / class_map["images"]).resolve()
        else:
            pictures = next((folder / d for d in PICTURE_DIRS if (folder / d).is_dir()), None)
        if pictures is None:
            return None
        files = _label_files(labels_dir)
        matched = [f for f in files if _picture_for(f, pictures) is not None]
        if files and len(matched) * 2 >= len(files):
            return pictures, labels_dir, files
        return None
    files = [f for f in _label_files(folder) if any(f.stem.endswith(s) for s in LABEL_SUFFIXES)]
    files = [f for f in files if _picture_for(f, folder) is not None]
    return (folder, folder, files) if files else None


def _detect_one(path: Path) -> str | None:
    layout = _layout(path)
    if layout is None:
        return None
    pictures, labels, files = layout
    where = f"{labels.name}/ for {pictures.name}/" if labels != pictures else "NAME_masks beside NAME"
    return f"{len(files)} label images ({where})"


def detect(path: Path) -> str | None:
    return detect_with_splits(path, _detect_one)


def _instances(label: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(value, flat pixel indices) of each instance, by value."""
    flat = label.reshape(-1)
    indices = np.flatnonzero(flat)
    values = flat[indices]
    order = np.argsort(values, kind="stable")
    values, indices = values[order], indices[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.array([], int)
    ends = np.r_[starts[1:], len(values)]
    return [(int(values[s]), indices[s:e]) for s, e in zip(starts, ends)]


def _class_name(value, names: dict, where, class_map_path) -> str:
    if isinstance(value, str) and not value.isdigit():
        return value
    key = str(int(value))
    if names:
        if key not in names:
            raise bad_file(class_map_path or where, f"class {key} (of {where}) has no name in its classes")
        return str(names[key])
    return f"class_{key}"


def read_labels(builder: DatasetBuilder, split: str, folder: Path) -> None:
    layout = _layout(folder)
    if layout is None:
        raise bad_file(folder, f"no label images found ({LAYOUT})")
    pictures, labels_dir, files = layout
    class_map_path = _class_map_file(folder)
    class_map = _load_class_map(class_map_path)
    names = {str(k): v for k, v in (class_map.get("classes") or {}).items()}
    per_instance = class_map.get("instances")
    single = str(next(iter(names.values()))) if len(names) == 1 else DEFAULT_CLASS
    semantic_dir = next((labels_dir.parent / d for d in SEMANTIC_DIRS if (labels_dir.parent / d).is_dir()), None)
    builder.add_split(split, pictures)
    labelled = set()
    for label_file in files:
        picture = _picture_for(label_file, pictures)
        if picture is None:
            raise bad_file(label_file, f"a mask file without a picture (no {label_file.stem}.* in {pictures})")
        labelled.add(picture)
        label = read_label_image(label_file)
        image_id = builder.add_image(split, picture, named_in=label_file)
        height, width = builder.size(image_id)
        if label.shape != (height, width):
            raise bad_file(
                label_file,
                f"label image is {label.shape[1]}x{label.shape[0]} but its picture {picture} is {width}x{height}",
            )
        semantic = None
        if per_instance is None and semantic_dir is not None:
            semantic_file = find_picture(semantic_dir, label_file.stem) or find_picture(semantic_dir, picture.stem)
            if semantic_file is not None:
                semantic = read_label_image(semantic_file)
                if semantic.shape != label.shape:
                    raise bad_file(
                        semantic_file,
                        f"semantic mask is {semantic.shape[1]}x{semantic.shape[0]}, its label image {width}x{height}",
                    )
        own = None
        if per_instance is not None:
            own = next(
                (per_instance[k] for k in (label_file.stem, picture.stem, picture.name) if k in per_instance), None
            )
            if own is None:
                raise bad_file(class_map_path, f"its instances name no classes for {label_file.name}")
        for value, pixels in _instances(label):
            if own is not None:
                if str(value) not in own:
                    raise bad_file(class_map_path, f"class map missing label {value} of {label_file.name}")
                category = _class_name(own[str(value)], names, label_file, class_map_path)
            elif semantic is not None:
                classes = semantic.reshape(-1)[pixels]
                classes = classes[classes != 0]
                if not len(classes):
                    raise bad_file(label_file, f"instance {value} lies on background (0) of its semantic mask")
                found, counts = np.unique(classes, return_counts=True)
                category = _class_name(int(found[np.argmax(counts)]), names, label_file, class_map_path)
            else:
                category = single
            builder.add_pixels(image_id, category, pixels)
    if labels_dir != pictures:
        from .common import sorted_images

        missing = [p for p in sorted_images(pictures) if p not in labelled]
        if missing:
            builder.notes.append(
                f"{len(missing)} pictures in {pictures} have no label image and are left out (e.g. {missing[0].name})"
            )


def read(path: Path) -> object:
    class_map = _load_class_map(_class_map_file(path)) if path.is_dir() else {}
    names = class_map.get("classes") or {}
    declared = [str(names[k]) for k in sorted(names, key=lambda k: int(k))] if len(names) > 1 else ()
    builder = DatasetBuilder(NAME, path, declared)
    read_with_splits(path, builder, _detect_one, read_labels)
    if TRAIN not in builder.splits:
        raise bad_file(path, "no training split")
    return builder.finish()


def paint_labels(masks: np.ndarray, scores) -> tuple[np.ndarray, dict[int, int]]:
    """One 16-bit label image of instances (N, H, W) that may overlap: the highest score on top, labels
    1, 2, ... by falling score; returns it and {label: index of its instance} for the instances left
    with pixels (one wholly under higher-scoring ones is not in it)."""
    count, height, width = masks.shape
    if count >= 1 << 16:
        raise MaskinitError(f"{count} instances do not fit a 16-bit label image")
    order = sorted(range(count), key=lambda i: -float(scores[i]))  # label k is the k-th best
    label = np.zeros((height, width), np.uint16)
    for rank in reversed(range(count)):  # the best painted last
        label[masks[order[rank]]] = rank + 1
    present = set(np.unique(label).tolist()) - {0}
    return label, {rank + 1: order[rank] for rank in range(count) if rank + 1 in present}
