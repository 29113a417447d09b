"""What every format reader produces, and the pieces they share.

A reader turns a folder (or a file) of annotations in its format into a `Dataset`: COCO images,
annotations and categories in memory, one `Split` per part the source has ("train", and "val" when
it has one). Masks stay exact: a polygon stays a polygon (pixel coordinates, COCO's), a mask becomes
pycocotools' compressed RLE of exactly its pixels. Categories are matched by name and numbered 1..N
(the format's own order when it declares one, else by name); image and annotation ids are integers
counting from 1. Pictures are referenced where they are: `file_name` is relative to the split's
`image_root`.

Bad input is one `MaskinitError` naming the file and the problem (`bad_file`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import MaskinitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TRAIN, VAL = "train", "val"
# Folder and file names that name a validation or a test split, in the order they are looked for.
VAL_NAMES = ("val", "valid", "validation", "Validation")
TEST_NAMES = ("test", "testing", "Test")
TRAIN_NAMES = ("train", "training", "Train")
# How far (in image sizes) a polygon may reach beyond the picture's border (as `check-data` allows).
POLYGON_MARGIN = 1.0


def bad_file(path, problem: str) -> MaskinitError:
    """The one-line error of a bad input file: `PATH: problem`."""
    return MaskinitError(f"{path}: {problem}")


@dataclass
class Split:
    """One part of a dataset as COCO: `file_name`s relative to `image_root`. `json_file`: a COCO file that
    holds exactly this split (a COCO source, used in place rather than written again)."""

    image_root: Path
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    json_file: Path | None = None


@dataclass
class Dataset:
    """A source read into COCO: its format's name, where it was read from, the categories (shared by
    every split), the splits and what the reader noticed (shapes it left out, a split it ignored)."""

    format: str
    source: Path
    categories: list[dict]
    splits: dict[str, Split]
    notes: list[str] = field(default_factory=list)

    def coco(self, split: str = TRAIN) -> dict:
        """The split as a COCO instances dict (file names relative to its `image_root`)."""
        part = self.splits[split]
        return {"images": part.images, "annotations": part.annotations, "categories": self.categories}

    def summary(self) -> str:
        """One line: images and instances per split, and the classes."""
        parts = [f"{name} {len(s.images)} images, {len(s.annotations)} instances" for name, s in self.splits.items()]
        names = [c["name"] for c in self.categories]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"{'; '.join(parts)}; {len(names)} {'class' if len(names) == 1 else 'classes'} ({shown})"


def polygon_area_and_box(polygons: list[list[float]], height: int, width: int) -> tuple[float, list[float]]:
    """COCO's area (pixels pycocotools rasterizes) and box (the outline's extent, clipped to the picture)."""
    from pycocotools import mask as mask_util

    rles = mask_util.frPyObjects(polygons, height, width)
    area = float(mask_util.area(mask_util.merge(rles)))
    xs = np.concatenate([np.asarray(p[0::2], dtype=np.float64) for p in polygons]).clip(0, width)
    ys = np.concatenate([np.asarray(p[1::2], dtype=np.float64) for p in polygons]).clip(0, height)
    return area, [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]


def mask_to_rle(mask: np.ndarray) -> dict:
    """pycocotools' compressed RLE of a binary mask, `counts` as str (as COCO JSON stores it)."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def pixels_to_rle(flat_indices: np.ndarray, height: int, width: int) -> dict:
    """pycocotools' compressed RLE of the pixels at these row-major flat indices, built from their runs
    (column by column, as COCO counts them) without drawing the whole mask: a label image's instance
    costs its own pixels, not the picture's."""
    from pycocotools import mask as mask_util

    rows, cols = np.divmod(np.asarray(flat_indices, dtype=np.int64), width)
    order = np.sort(cols * height + rows)
    breaks = np.flatnonzero(np.diff(order) != 1)
    starts = np.r_[order[:1], order[breaks + 1]]
    ends = np.r_[order[breaks], order[-1:]] + 1
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0:-1:2] = starts - np.r_[0, ends[:-1]]  # background before each run
    counts[1::2] = ends - starts
    counts[-1] = height * width - ends[-1]
    if not counts[-1]:  # ending on the object: no background run after it (as pycocotools encodes)
        counts = counts[:-1]
    rle = mask_util.frPyObjects({"counts": counts.tolist(), "size": [height, width]}, height, width)
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def rle_area_and_box(rle: dict) -> tuple[float, list[float]]:
    from pycocotools import mask as mask_util

    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return float(mask_util.area(coded)), [float(v) for v in mask_util.toBbox(coded)]


def circle_points(count_radius: float) -> int:
    """Vertices of the polygon standing for a circle or ellipse of this (largest) radius: enough that
    the gap between the arc and a side is under one pixel, at least 12 (LabelMe's own labelme2coco)."""
    if count_radius <= 1:
        return 12
    return max(int(math.pi / math.acos(1 - 1 / count_radius)), 12)


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> list[float]:
    """A polygon tracing the ellipse of centre (cx, cy), radii rx, ry, turned by `angle` radians."""
    count = circle_points(max(abs(rx), abs(ry)))
    t = 2 * np.pi * np.arange(count) / count
    x = cx + rx * np.cos(t) * math.cos(angle) - ry * np.sin(t) * math.sin(angle)
    y = cy + rx * np.cos(t) * math.sin(angle) + ry * np.sin(t) * math.cos(angle)
    return np.stack([x, y], axis=1).reshape(-1).tolist()


def rectangle_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def sorted_images(folder: Path) -> list[Path]:
    """The pictures directly in `folder`, by name."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def find_picture(folder: Path, stem: str) -> Path | None:
    """The picture named `stem` + an image suffix in `folder`, if there is one."""
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        candidate = folder / (stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def split_folders(root: Path) -> dict[str, Path]:
    """`{"train": ..., "val": ...}` for a folder holding its splits as subfolders (train/ and val/, valid/ or
    validation/); empty when it has no train/ subfolder."""
    found = {}
    for split, names in ((TRAIN, TRAIN_NAMES), (VAL, VAL_NAMES)):
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found if TRAIN in found else {}


def read_label_image(path: Path) -> np.ndarray:
    """A label image (8/16/32-bit PNG or TIFF, a palette PNG's indices) as a 2-D integer array."""
    from PIL import Image

    from ..images import read_image

    if path.suffix.lower() == ".png":
        try:
            with Image.open(path) as image:
                if image.mode == "P":  # a palette PNG: the indices are the labels (OpenCV would give colours)
                    return np.asarray(image)
        except (OSError, ValueError) as error:
            raise bad_file(path, f"not a readable image ({error})") from error
    array = read_image(path)
    if array.shape[2] != 1:
        if array.shape[2] in (3, 4) and all(np.array_equal(array[..., 0], array[..., c]) for c in (1, 2)):
            array = array[..., :1]  # gray stored as colour
        else:
            raise bad_file(
                path, f"a label image needs one channel (each integer an instance), this one has {array.shape[2]}"
            )
    array = array[..., 0]
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise bad_file(path, "a label image holds integers; this one holds fractions")
        array = array.astype(np.int64)
    return array


class DatasetBuilder:
    """Collects images, categories and annotations into a `Dataset`, checking each shape as it comes."""

    def __init__(self, format_name: str, source: Path, class_names=()):
        self.format = format_name
        self.source = Path(source)
        self.categories: dict[str, int] = {}
        self.declared = bool(class_names)
        for name in class_names:
            self.category_id(name)
        self.splits: dict[str, Split] = {}
        self.notes: list[str] = []
        self._image_id = 0
        self._annotation_id = 0
        self._sizes: dict[int, tuple[int, int]] = {}
        self._split_of: dict[int, str] = {}

    def category_id(self, name) -> int:
        name = str(name)
        if name not in self.categories:
            self.categories[name] = len(self.categories) + 1
        return self.categories[name]

    def add_split(self, split: str, image_root: Path) -> None:
        self.splits.setdefault(split, Split(Path(image_root)))

    def add_image(self, split: str, picture: Path, size: tuple[int, int] | None = None, *, named_in=None) -> int:
        """A picture of `split` (whose image root must hold it); its size read from its header (checked
        against `size`, the size the annotations state, when given). `named_in`: the annotation file
        naming the picture, for the error when it is missing."""
        from ..image_files import image_size

        part = self.splits[split]
        if not picture.is_file():
            raise bad_file(named_in or picture, f"its picture {picture} is not there")
        actual = image_size(picture)
        if size is not None and tuple(int(v) for v in size) != actual and all(size):
            raise bad_file(
                named_in or picture, f"says the picture is {size[1]}x{size[0]} but {picture} is {actual[1]}x{actual[0]}"
            )
        try:
            file_name = picture.relative_to(part.image_root).as_posix()
        except ValueError:
            file_name = str(picture.resolve())
        self._image_id += 1
        part.images.append({"id": self._image_id, "file_name": file_name, "height": actual[0], "width": actual[1]})
        self._sizes[self._image_id] = actual
        self._split_of[self._image_id] = split
        return self._image_id

    def size(self, image_id: int) -> tuple[int, int]:
        return self._sizes[image_id]

    def _append(self, image_id: int, category: str, segmentation, area: float, bbox: list[float]) -> None:
        self._annotation_id += 1
        self.splits[self._split_of[image_id]].annotations.append({
            "id": self._annotation_id, "image_id": image_id, "category_id": self.category_id(category),
            "segmentation": segmentation, "area": area, "bbox": bbox, "iscrowd": 0,
        })

    def add_polygons(self, image_id: int, category: str, polygons, where) -> None:
        """One instance made of one or more polygons ([x0, y0, x1, y1, ...] in pixels)."""
        checked = self.checked_polygons(image_id, category, polygons, where)
        if checked:
            height, width = self._sizes[image_id]
            area, bbox = polygon_area_and_box(checked, height, width)
            self._append(image_id, category, checked, area, bbox)

    def checked_polygons(self, image_id: int, category: str, polygons, where) -> list[list[float]]:
        """The polygons as lists of floats; `MaskinitError` naming `where` for one that is no polygon."""
        height, width = self._sizes[image_id]
        checked = []
        for polygon in polygons:
            values = [float(v) for v in polygon]
            if len(values) % 2:
                raise bad_file(where, f"a polygon of {category!r} has an odd number of coordinates ({len(values)})")
            if len(values) < 6:
                count = len(values) // 2
                raise bad_file(where, f"a polygon of {category!r} has {count} point{'' if count == 1 else 's'}; "
                                      "a polygon needs at least 3")
            if not all(math.isfinite(v) for v in values):
                raise bad_file(where, f"a polygon of {category!r} has a coordinate that is not a finite number")
            xs, ys = values[0::2], values[1::2]
            if (min(xs) < -POLYGON_MARGIN * width or max(xs) > (1 + POLYGON_MARGIN) * width
                    or min(ys) < -POLYGON_MARGIN * height or max(ys) > (1 + POLYGON_MARGIN) * height):
                raise bad_file(where, f"a polygon of {category!r} reaches far outside its {width}x{height} picture "
                                      f"(x {min(xs):g} to {max(xs):g}, y {min(ys):g} to {max(ys):g})")
            checked.append(values)
        return checked

    def add_mask(self, image_id: int, category: str, mask: np.ndarray, where) -> bool:
        """One instance given by its pixels (a boolean array of the picture's size); False when empty."""
        if tuple(mask.shape) != self._sizes[image_id]:
            height, width = self._sizes[image_id]
            raise bad_file(where, f"mask is {mask.shape[1]}x{mask.shape[0]}, its picture {width}x{height}")
        if not mask.any():
            return False
        rle = mask_to_rle(mask)
        area, bbox = rle_area_and_box(rle)
        self._append(image_id, category, rle, area, bbox)
        return True

    def add_pixels(self, image_id: int, category: str, flat_indices: np.ndarray) -> None:
        """One instance given by the row-major flat indices of its pixels (not empty)."""
        height, width = self._sizes[image_id]
        rle = pixels_to_rle(flat_indices, height, width)
        area, bbox = rle_area_and_box(rle)
        self._append(image_id, category, rle, area, bbox)

    def finish(self) -> Dataset:
        """The dataset; an empty one (no picture, or no instance at all) is refused."""
        total_images = sum(len(s.images) for s in self.splits.values())
        total_annotations = sum(len(s.annotations) for s in self.splits.values())
        if not total_images:
            raise bad_file(self.source, f"no pictures found ({self.format} layout): an empty set")
        if not total_annotations:
            raise bad_file(
                self.source,
                f"{total_images} pictures but not one instance annotated ({self.format} layout): an empty set",
            )
        for name, part in self.splits.items():
            if not part.images:
                raise bad_file(self.source, f"its {name} split has no pictures: an empty set")
        names = list(self.categories)
        if not self.declared:  # no order of its own: by name
            names = sorted(names)
        renumber = {self.categories[name]: index + 1 for index, name in enumerate(names)}
        for part in self.splits.values():
            for annotation in part.annotations:
                annotation["category_id"] = renumber[annotation["category_id"]]
        used = {a["category_id"] for part in self.splits.values() for a in part.annotations}
        categories = [{"id": renumber[self.categories[name]], "name": name} for name in names]
        unused = [c["name"] for c in categories if c["id"] not in used]
        if unused and self.declared:
            self.notes.append(f"classes declared but never annotated: {', '.join(unused)}")
        return Dataset(self.format, self.source, categories, self.splits, self.notes)


def detect_with_splits(path: Path, detect_one) -> str | None:
    """`detect_one(path)`, or, for a folder holding train/ and val/ subfolders, `detect_one` of train/."""
    evidence = detect_one(path)
    if evidence or not path.is_dir():
        return evidence
    splits = split_folders(path)
    if splits:
        evidence = detect_one(splits[TRAIN])
        if evidence:
            return f"{evidence}, in {' and '.join(folder.name + '/' for folder in splits.values())}"
    return None


def read_with_splits(path: Path, builder: DatasetBuilder, detect_one, read_one) -> None:
    """`read_one(builder, split, folder)` for `path` as the one training split, or for each of its train/
    and val/ subfolders (a test/ subfolder is left out, with a note)."""
    if detect_one(path) or not path.is_dir():
        read_one(builder, TRAIN, path)
        return
    for split, folder in split_folders(path).items():
        read_one(builder, split, folder)
    for name in TEST_NAMES:
        if (path / name).is_dir():
            builder.notes.append(f"{path / name} left out: a run trains on train/ and validates on val/")
            break


def json_kind(path: Path) -> str | None:
    """What a JSON file holds, judged from its keys: "coco", "via", "labelme", or None. Large files are
    judged from their first megabytes (a COCO file lists its images before its annotations)."""
    import json
    import re

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4 << 20)
    except OSError:
        return None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if size <= len(head):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if isinstance(data, dict):
            if isinstance(data.get("images"), list) and "annotations" in data:
                return "coco"
            if "shapes" in data and ("imagePath" in data or "imageHeight" in data):
                return "labelme"
            if "_via_img_metadata" in data:
                return "via"
            values = list(data.values())[:5]
            if values and all(isinstance(v, dict) and "filename" in v and "regions" in v for v in values):
                return "via"
        return None
    if re.search(r'"images"\s*:\s*\[', text) and '"file_name"' in text:
        return "coco"
    if '"_via_img_metadata"' in text or ('"regions"' in text and '"filename"' in text):
        return "via"
    return None
