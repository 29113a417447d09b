"""YOLO segmentation labels (Ultralytics): `data.yaml` naming the classes and the train/val pictures,
`images/{train,val}/NAME.jpg` with `labels/{train,val}/NAME.txt`, one instance a line:
`CLASS x1 y1 x2 y2 ...`, the polygon's coordinates normalized to [0, 1] by the picture's size.

The data.yaml's split is kept; paths resolve as Ultralytics resolves them (`path:`, else the YAML's
folder; a split given as a folder of pictures, a list of them, or a .txt file listing pictures; a
picture's labels at the same place with `/images/` replaced by `/labels/`; Roboflow's `../train/images`
tried without its `../`). Without a data.yaml: `images/` + `labels/` (split into train/ and val/
subfolders, or not), the classes from `classes.txt` (one name a line), else `class_0`, `class_1`, ...
A picture without a label file has no instances (as Ultralytics treats it).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ...errors import MaskinitError
from .common import (
    IMAGE_SUFFIXES,
    TEST_NAMES,
    TRAIN,
    VAL,
    DatasetBuilder,
    bad_file,
    detect_with_splits,
    sorted_images,
    split_folders,
)

NAME = "yolo"
LAYOUT = "data.yaml + images/{train,val}/*.jpg + labels/{train,val}/*.txt (CLASS x1 y1 x2 y2 ..., normalized)"
YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
# Coordinates this far outside [0, 1] are rounding, not a mistake.
TOLERANCE = 1e-6


def _load_yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and "names" in data and "train" in data else None


def _yaml_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") and _load_yaml(path) is not None else None
    for name in YAML_NAMES:
        if (path / name).is_file() and _load_yaml(path / name) is not None:
            return path / name
    return None


def _flat_layout(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """{split: (pictures, labels)} of an images/ + labels/ folder, or None."""
    images, labels = folder / "images", folder / "labels"
    if not (images.is_dir() and labels.is_dir()):
        return None
    splits = split_folders(images)
    if splits and sorted_images(splits[TRAIN]):
        return {split: (pictures, labels / pictures.name) for split, pictures in splits.items()}
    if any(labels.glob("*.txt")):
        return {TRAIN: (images, labels)}
    return None


def _detect_one(path: Path) -> str | None:
    yaml_file = _yaml_file(path)
    if yaml_file is not None:
        return f"YOLO {yaml_file.name}"
    layout = _flat_layout(path) if path.is_dir() else None
    if layout and any(any(labels.glob("*.txt")) for _, labels in layout.values() if labels.is_dir()):
        return "images/ + labels/*.txt"
    return None


def detect(path: Path) -> str | None:
    return detect_with_splits(path, _detect_one)


def _names(data: dict, where: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError) as error:
            raise bad_file(where, "names: keys must be class numbers 0, 1, ...") from error
        if keys != list(range(len(keys))):
            raise bad_file(where, f"names: class numbers must run 0..{len(keys) - 1}, got {keys}")
        return [str(names.get(k, names.get(str(k)))) for k in keys]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise bad_file(where, "names: a list of class names (or {0: name, ...}) is needed")


def _root(data: dict, yaml_file: Path) -> Path:
    given = data.get("path")
    if not given:
        return yaml_file.parent
    given = Path(str(given)).expanduser()
    if given.is_absolute():
        return given
    for base in (yaml_file.parent, Path.cwd()):
        if (base / given).is_dir():
            return (base / given).resolve()
    return yaml_file.parent


def _pictures(entry, root: Path, yaml_file: Path, key: str) -> list[Path]:
    """The pictures a data.yaml split names: folders, .txt lists of pictures, or a list of either."""
    entries = entry if isinstance(entry, list) else [entry]
    pictures: list[Path] = []
    for item in entries:
        item = str(item)
        place = (root / item).resolve()
        if not place.exists() and item.startswith("../"):
            place = (root / item[3:]).resolve()  # Roboflow's exports
        if place.is_dir():
            pictures += sorted(p for p in place.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif place.is_file() and place.suffix == ".txt":
            for line in place.read_text().splitlines():
                line = line.strip()
                if line:
                    listed = Path(line)
                    pictures.append(listed if listed.is_absolute() else (place.parent / line).resolve()
                                    if line.startswith("./") else (root / line).resolve())
        else:
            raise bad_file(yaml_file, f"{key}: {item} is not there (looked for {place})")
    return pictures


def label_path(picture: Path) -> Path:
    """Ultralytics' label file of a picture: the last /images/ of its path replaced by /labels/, .txt."""
    text = str(picture)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if images in text:
        head, tail = text.rsplit(images, 1)
        text = head + labels + tail
    return Path(text).with_suffix(".txt")


def parse_line(line: str, number: int, label_file: Path, num_classes: int) -> tuple[int, list[float]]:
    """(class, normalized polygon) of one label line; `MaskinitError` naming the file and line."""
    where = f"{label_file}:{number}"
    try:
        values = [float(v) for v in line.split()]
    except ValueError as error:
        raise bad_file(where, f"not numbers: {line[:60]!r}") from error
    cls, coordinates = values[0], values[1:]
    if cls != int(cls) or not 0 <= cls < num_classes:
        raise bad_file(where, f"class {values[0]:g} is not one of the {num_classes} classes (0..{num_classes - 1})")
    if len(coordinates) == 4:
        raise bad_file(where, "a box (x y w h), not a polygon: maskinit needs YOLO segmentation labels")
    if len(coordinates) % 2:
        raise bad_file(where, f"an odd number of coordinates ({len(coordinates)})")
    if len(coordinates) < 6:
        count = len(coordinates) // 2
        raise bad_file(where, f"a polygon with {count} point{'' if count == 1 else 's'}; a polygon needs at least 3")
    bad = [v for v in coordinates if not math.isfinite(v) or v < -TOLERANCE or v > 1 + TOLERANCE]
    if bad:
        raise bad_file(where, f"normalized coordinate {bad[0]:g} outside [0, 1]")
    return int(cls), coordinates


def _read_split(builder: DatasetBuilder, split: str, pictures: list[Path], root: Path, names: list[str]) -> None:
    builder.add_split(split, root)
    for picture in pictures:
        label_file = label_path(picture)
        image_id = builder.add_image(split, picture)
        if not label_file.is_file():
            continue
        height, width = builder.size(image_id)
        for number, line in enumerate(label_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            cls, coordinates = parse_line(line, number, label_file, len(names))
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coordinates)]
            builder.add_polygons(image_id, names[cls], [polygon], f"{label_file}:{number}")


def _orphan_labels(labels_dir: Path, pictures: list[Path]) -> None:
    """A label file whose picture is missing: named, the conversion refused."""
    if not labels_dir.is_dir():
        return
    expected = {label_path(p).resolve() for p in pictures}
    for label_file in sorted(labels_dir.glob("*.txt")):
        if label_file.resolve() not in expected and label_file.name != "classes.txt":
            raise bad_file(
                label_file,
                f"a label file without a picture (no {label_file.stem}.* in {labels_dir.parent.parent / 'images'})",
            )


def read(path: Path):
    path = Path(path)
    yaml_file = _yaml_file(path)
    if yaml_file is None and path.is_dir() and _flat_layout(path) is None:
        folders = split_folders(path)  # Roboflow's train/images + train/labels, no data.yaml
        if folders and all(_flat_layout(folder) for folder in folders.values()):
            names = _class_names_file(path) or _numbered(path)
            builder = DatasetBuilder(NAME, path, names)
            for split, folder in folders.items():
                pictures = sorted_images(folder / "images")
                _orphan_labels(folder / "labels", pictures)
                _read_split(builder, split, pictures, folder, names)
            return builder.finish()
    if yaml_file is not None:
        data = _load_yaml(yaml_file)
        names = _names(data, yaml_file)
        root = _root(data, yaml_file)
        builder = DatasetBuilder(NAME, path, names)
        for split, key in ((TRAIN, "train"), (VAL, "val")):
            if data.get(key):
                pictures = _pictures(data[key], root, yaml_file, key)
                if not pictures:
                    raise bad_file(yaml_file, f"{key}: no pictures in {data[key]}")
                _read_split(builder, split, pictures, root, names)
        if data.get("test"):
            builder.notes.append(f"{yaml_file}: the test split is left out (a run trains on train, validates on val)")
        return builder.finish()
    layout = _flat_layout(path)
    if layout is None:
        raise bad_file(path, f"not a YOLO layout ({LAYOUT})")
    names = _class_names_file(path) or _numbered(path / "labels")
    builder = DatasetBuilder(NAME, path, names)
    for split, (pictures_dir, labels_dir) in layout.items():
        pictures = sorted_images(pictures_dir)
        _orphan_labels(labels_dir, pictures)
        _read_split(builder, split, pictures, path, names)
    for name in TEST_NAMES:
        if (path / "images" / name).is_dir():
            builder.notes.append(f"{path / 'images' / name} left out: a run trains on train/, validates on val/")
    return builder.finish()


def _class_names_file(folder: Path) -> list[str]:
    for place in (folder / "classes.txt", folder / "labels" / "classes.txt"):
        if place.is_file():
            return [line.strip() for line in place.read_text().splitlines() if line.strip()]
    return []


def _numbered(labels: Path) -> list[str]:
    """class_0 .. class_N for labels without names: N the largest class in any label file."""
    largest = -1
    for label_file in labels.rglob("*.txt"):
        for line in label_file.read_text().splitlines():
            if line.strip():
                try:
                    largest = max(largest, int(float(line.split()[0])))
                except ValueError as error:
                    raise MaskinitError(f"{label_file}: not numbers: {line[:60]!r}") from error
    return [f"class_{i}" for i in range(largest + 1)]


def polygon_line(mask: np.ndarray, class_index: int) -> str | None:
    """A YOLO segmentation line of a mask: its largest outer contour (as Ultralytics writes predictions),
    through pixel centres, normalized by the picture's size; None for a mask without a 3-point contour."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c.reshape(-1, 2) for c in contours if len(c) >= 3]
    if not contours:
        return None
    height, width = mask.shape
    points = max(contours, key=cv2.contourArea).astype(np.float64) + 0.5
    points[:, 0] = (points[:, 0] / width).clip(0, 1)
    points[:, 1] = (points[:, 1] / height).clip(0, 1)
    return " ".join([str(class_index)] + [f"{v:.6f}" for v in points.reshape(-1)])
