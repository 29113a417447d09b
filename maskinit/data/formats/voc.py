"""Pascal VOC instance segmentation: `SegmentationObject/NAME.png` (palette PNG, each index an instance,
255 the void border) with `SegmentationClass/NAME.png` (each index a class) for `JPEGImages/NAME.jpg`,
the split from `ImageSets/Segmentation/{train,val}.txt` (every annotated picture trains without it).

An instance's class is the class most of its pixels have in SegmentationClass. The classes are those
of a `labelmap.txt` (CVAT's and Datumaro's VOC export: `name:r,g,b::`, the background first), else
VOC's 20. The folder may be VOCdevkit/ or VOC2012/ itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import TRAIN, VAL, DatasetBuilder, bad_file, find_picture, read_label_image

NAME = "voc"
LAYOUT = "JPEGImages/ + SegmentationObject/ + SegmentationClass/ (palette PNGs), ImageSets/Segmentation/*.txt"
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOID = 255


def _root(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    if (path / "SegmentationObject").is_dir() and (path / "JPEGImages").is_dir():
        return path
    for child in sorted(path.iterdir()):
        if child.is_dir() and (child / "SegmentationObject").is_dir() and (child / "JPEGImages").is_dir():
            return child
    return None


def detect(path: Path) -> str | None:
    root = _root(path)
    if root is None:
        return None
    return f"Pascal VOC {root.name}/SegmentationObject"


def _class_names(root: Path) -> list[str]:
    for place in (root / "labelmap.txt", root.parent / "labelmap.txt"):
        if place.is_file():
            names = [line.split(":")[0].strip() for line in place.read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
            return names[1:] if names and names[0].lower() == "background" else names
    return list(VOC_CLASSES)


def _splits(root: Path, stems: list[str]) -> dict[str, list[str]]:
    sets = root / "ImageSets" / "Segmentation"
    listed = {}
    for split, name in ((TRAIN, "train.txt"), (VAL, "val.txt")):
        if (sets / name).is_file():
            listed[split] = [line.split()[0] for line in (sets / name).read_text().splitlines() if line.strip()]
    if TRAIN not in listed:
        return {TRAIN: stems}
    return listed


def read(path: Path):
    root = _root(Path(path))
    if root is None:
        raise bad_file(path, f"not a Pascal VOC folder ({LAYOUT})")
    names = _class_names(root)
    builder = DatasetBuilder(NAME, Path(path), names)
    objects, classes, pictures = root / "SegmentationObject", root / "SegmentationClass", root / "JPEGImages"
    stems = sorted(p.stem for p in objects.glob("*.png"))
    known = set(stems)
    for split, listed in _splits(root, stems).items():
        builder.add_split(split, pictures)
        for stem in listed:
            object_file = objects / f"{stem}.png"
            if stem not in known:
                raise bad_file(
                    root / "ImageSets" / "Segmentation" / f"{split}.txt", f"names {stem}, which has no {object_file}"
                )
            class_file = classes / f"{stem}.png"
            if not class_file.is_file():
                raise bad_file(object_file, f"has no SegmentationClass/{stem}.png beside it")
            picture = find_picture(pictures, stem)
            if picture is None:
                raise bad_file(object_file, f"a mask file without a picture (no {stem}.* in {pictures})")
            image_id = builder.add_image(split, picture, named_in=object_file)
            height, width = builder.size(image_id)
            instance_map, class_map = read_label_image(object_file), read_label_image(class_file)
            for file, array in ((object_file, instance_map), (class_file, class_map)):
                if array.shape != (height, width):
                    raise bad_file(
                        file, f"is {array.shape[1]}x{array.shape[0]} but its picture {picture} is {width}x{height}"
                    )
            for value in np.unique(instance_map):
                if value in (0, VOID):
                    continue
                mask = instance_map == value
                found = class_map[mask]
                found = found[(found != 0) & (found != VOID)]
                if not len(found):
                    raise bad_file(class_file, f"instance {value} of {object_file.name} has no class here")
                values, counts = np.unique(found, return_counts=True)
                index = int(values[np.argmax(counts)])
                if index > len(names):
                    raise bad_file(class_file, f"class index {index} but only {len(names)} classes are named"
                                               f"{' (labelmap.txt)' if names != list(VOC_CLASSES) else ''}")
                builder.add_mask(image_id, names[index - 1], mask, object_file)
    return builder.finish()
