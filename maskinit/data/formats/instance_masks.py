"""One binary mask file per instance (the Data Science Bowl 2018 nuclei layout and its kin).

Layouts (each may also be split into train/ and val/ subfolders):
- `ID/images/ID.png` + `ID/masks/*.png`: one folder per picture (the Data Science Bowl's stage1_train);
- `images/NAME.png` + `masks/NAME_*.png` (or `masks/NAME/*.png`): every mask names its picture.

A mask is any nonzero pixel of its file (0/255 or 0/1, 8 or 16 bits). One class: "object", or the one
name a `classes.json` beside them gives (`{"classes": {"1": "nucleus"}}`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (
    IMAGE_SUFFIXES,
    DatasetBuilder,
    bad_file,
    detect_with_splits,
    find_picture,
    read_label_image,
    read_with_splits,
    sorted_images,
)
from .label_image import _class_map_file, _load_class_map, _picture_for

NAME = "instance-masks"
LAYOUT = "ID/images/ID.png + ID/masks/*.png (Data Science Bowl), or images/NAME.png + masks/NAME_*.png"
DEFAULT_CLASS = "object"


def _per_picture_folders(folder: Path) -> list[Path]:
    """Subfolders holding images/ and masks/ (the Data Science Bowl layout)."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir()
                  and (find_picture(d / "images", d.name) is not None or len(sorted_images(d / "images")) == 1))


def _picture_for_mask(mask: Path, pictures: Path) -> Path | None:
    """`images/NAME.*` for `masks/NAME_<anything>.png`, the longest NAME first."""
    parts = mask.stem.split("_")
    for cut in range(len(parts) - 1, 0, -1):
        found = find_picture(pictures, "_".join(parts[:cut]))
        if found is not None:
            return found
    return None


def _mask_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _pairs_flat(folder: Path) -> list[tuple[Path, list[Path]]] | None:
    """[(picture, its mask files)] of the images/ + masks/ layout, or None when it is not that layout."""
    pictures, masks = folder / "images", folder / "masks"
    if not (pictures.is_dir() and masks.is_dir()):
        return None
    files = _mask_files(masks)
    subfolders = sorted(d for d in masks.iterdir() if d.is_dir())
    if files:
        if sum(_picture_for(f, pictures) is not None for f in files) * 2 >= len(files):
            return None  # one file per picture, named like it: label images
        by_picture: dict[Path, list[Path]] = {}
        for file in files:
            by_picture.setdefault(_picture_for_mask(file, pictures), []).append(file)
        if None in by_picture and len(by_picture[None]) * 2 >= len(files):
            return None
        return [(picture, masks) for picture, masks in by_picture.items()]
    if subfolders:
        return [(find_picture(pictures, d.name), _mask_files(d)) if find_picture(pictures, d.name) else (None, [d])
                for d in subfolders]
    return None


def _detect_one(path: Path) -> str | None:
    folders = _per_picture_folders(path)
    if folders:
        return f"{len(folders)} folders of ID/images + ID/masks"
    pairs = _pairs_flat(path)
    if pairs:
        count = sum(len(masks) for picture, masks in pairs if picture is not None)
        return f"{count} mask files in masks/ naming {len(pairs)} pictures in images/"
    return None


def detect(path: Path) -> str | None:
    return detect_with_splits(path, _detect_one)


def _add_masks(builder: DatasetBuilder, split: str, picture: Path, masks: list[Path], category: str) -> None:
    image_id = builder.add_image(split, picture, named_in=masks[0] if masks else picture)
    height, width = builder.size(image_id)
    empty = []
    for mask_file in masks:
        mask = read_label_image(mask_file) != 0
        if mask.shape != (height, width):
            raise bad_file(
                mask_file, f"mask is {mask.shape[1]}x{mask.shape[0]} but its picture {picture} is {width}x{height}"
            )
        if not builder.add_mask(image_id, category, np.ascontiguousarray(mask), mask_file):
            empty.append(mask_file)
    if empty:
        builder.notes.append(f"{len(empty)} empty mask files left out (e.g. {empty[0]})")


def read_masks(builder: DatasetBuilder, split: str, folder: Path) -> None:
    class_map = _load_class_map(_class_map_file(folder))
    names = class_map.get("classes") or {}
    category = str(next(iter(names.values()))) if len(names) == 1 else DEFAULT_CLASS
    folders = _per_picture_folders(folder)
    if folders:
        builder.add_split(split, folder)
        for picture_folder in folders:
            masks = _mask_files(picture_folder / "masks")
            pictures = sorted_images(picture_folder / "images")
            picture = find_picture(picture_folder / "images", picture_folder.name) or (
                pictures[0] if len(pictures) == 1 else None
            )
            if picture is None:
                where = masks[0] if masks else picture_folder / "masks"
                raise bad_file(
                    where, f"a mask file without a picture (no {picture_folder.name}.* in {picture_folder / 'images'})"
                )
            _add_masks(builder, split, picture, masks, category)
        return
    pairs = _pairs_flat(folder)
    if pairs is None:
        raise bad_file(folder, f"no per-instance masks found ({LAYOUT})")
    builder.add_split(split, folder / "images")
    for picture, masks in pairs:
        if picture is None:
            raise bad_file(masks[0], f"a mask file without a picture (no matching NAME.* in {folder / 'images'})")
        _add_masks(builder, split, picture, masks, category)
    unmasked = [p for p in sorted_images(folder / "images") if p not in {picture for picture, _ in pairs}]
    if unmasked:
        builder.notes.append(
            f"{len(unmasked)} pictures in {folder / 'images'} have no mask and are left out (e.g. {unmasked[0].name})"
        )


def read(path: Path):
    builder = DatasetBuilder(NAME, path)
    read_with_splits(path, builder, _detect_one, read_masks)
    return builder.finish()
