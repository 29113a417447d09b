"""Check a COCO instances dataset before training, and decide what to do about what is wrong.

Detectron2 trusts its data: a duplicate id, a truncated PNG or an RLE of the wrong size surfaces as an
exception in a data-loader worker hours into a run, or silently as a wrong mask. `check_coco` looks
at everything once, up front, and sorts what it finds by severity:

- fatal: the file cannot be trained on at all (not COCO, a byte-order mark, no images, duplicate or
  string ids, missing keys, only crowd annotations, a NaN or infinity outside images and annotations);
- fixable: one annotation or image is bad and can be dropped (unknown ids, bad boxes or masks, NaN
  or infinite numbers, missing, corrupt or mis-sized image files);
- warning: suspicious but harmless to Detectron2 (a box partly outside its image is clipped);
- info: worth knowing, not wrong (crowd annotations, images or categories without annotations).

`enforce_data_policy` turns a report into a one-line `MaskinitError` or, with `skip_bad`, into log
lines; `clean_coco_data` / `write_clean_json` drop the bad items so that a cleaned copy can be
registered in place of the original (see `maskinit.data.sources.validate_data`).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import reprlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_atomically
from ..errors import MaskinitError
from .image_files import probe_image
from .images import describe_kind

FATAL, FIXABLE, WARNING, INFO = "fatal", "fixable", "warning", "info"
SEVERITIES = (FATAL, FIXABLE, WARNING, INFO)
MAX_EXAMPLES = 3
REQUIRED_SECTIONS = ("images", "annotations", "categories")
ANNOTATION_KEYS = ("image_id", "category_id", "bbox", "segmentation")  # besides "id"
IMAGE_SIZE_KEYS = ("height", "width")
# Boxes computed from polygons can overshoot the border by rounding; Detectron2 clips them anyway.
BOX_BORDER_TOLERANCE = 1.0
# Measured: faster-coco-eval fails on string image ids; on string annotation ids pycocotools' COCOeval
# fails and faster-coco-eval scores AP 0 without complaint.
INTEGER_IDS = "COCO evaluation needs integer ids"
BOM_PROBLEM = "starts with a UTF-8 byte-order mark, which pycocotools cannot read: save it as UTF-8 without BOM"
# pycocotools rasterizes a polygon along its perimeter: coordinates far outside the image (or NaN,
# which it casts to int) make it allocate gigabytes or segfault. Allowed: one image size beyond a border.
POLYGON_MARGIN = 1.0


@dataclass(frozen=True)
class Kind:
    """One kind of problem: how bad it is and how to name it."""

    severity: str
    singular: str
    plural: str
    countable: bool = True  # False for whole-file problems ("no images"), printed without a count


def _kinds() -> dict[str, Kind]:
    kinds = {
        "not_coco": Kind(FATAL, "not COCO instances JSON", "not COCO instances JSON", countable=False),
        "byte_order_mark": Kind(FATAL, BOM_PROBLEM, BOM_PROBLEM, countable=False),
        "no_images": Kind(FATAL, "no images", "no images", countable=False),
        "no_categories": Kind(FATAL, "no categories", "no categories", countable=False),
        "no_annotations": Kind(FATAL, "no annotations", "no annotations", countable=False),
        "duplicate_image_id": Kind(FATAL, "duplicate image id", "duplicate image ids"),
        "duplicate_annotation_id": Kind(FATAL, "duplicate annotation id", "duplicate annotation ids"),
        "duplicate_category_id": Kind(FATAL, "duplicate category id", "duplicate category ids"),
        "duplicate_category_name": Kind(FATAL, "category name used twice", "category names used twice"),
        "string_image_id": Kind(
            FATAL, f"image with a string id ({INTEGER_IDS})", f"images with string ids ({INTEGER_IDS})"
        ),
        "string_annotation_id": Kind(
            FATAL, f"annotation with a string id ({INTEGER_IDS})", f"annotations with string ids ({INTEGER_IDS})"
        ),
        "only_crowd": Kind(FATAL, "nothing to train on", "nothing to train on", countable=False),
        "non_finite": Kind(
            FATAL,
            "NaN or infinite number outside images and annotations",
            "NaN or infinite numbers outside images and annotations",
        ),
        "mixed_image_kinds": Kind(FATAL, "images of mixed kinds", "images of mixed kinds", countable=False),
    }
    for section in ("image", "annotation", "category"):
        kinds[f"{section}_not_object"] = Kind(
            FATAL, f"{section} entry that is not an object", f"{section} entries that are not objects"
        )
    kinds["annotation_missing_id"] = Kind(
        FATAL, "annotation without an integer id", "annotations without an integer id"
    )
    for key in ANNOTATION_KEYS:
        kinds[f"annotation_missing_{key}"] = Kind(FATAL, f"annotation missing {key}", f"annotations missing {key}")
    kinds["image_missing_id"] = Kind(FATAL, "image without an integer id", "images without an integer id")
    kinds["image_missing_file_name"] = Kind(FATAL, "image without a file_name", "images without a file_name")
    for key in IMAGE_SIZE_KEYS:
        kinds[f"image_missing_{key}"] = Kind(
            FATAL, f"image without a positive integer {key}", f"images without a positive integer {key}"
        )
    kinds["category_missing_id"] = Kind(FATAL, "category without an integer id", "categories without an integer id")
    kinds["category_missing_name"] = Kind(FATAL, "category without a name", "categories without a name")
    kinds.update(
        unknown_image=Kind(FIXABLE, "annotation for an unknown image id", "annotations for unknown image ids"),
        unknown_category=Kind(
            FIXABLE, "annotation with an unknown category id", "annotations with unknown category ids"
        ),
        ignore_flag=Kind(
            FIXABLE,
            "annotation with ignore=1 (Detectron2 refuses it)",
            "annotations with ignore=1 (Detectron2 refuses them)",
        ),
        invalid_box=Kind(FIXABLE, "empty or invalid box", "empty or invalid boxes"),
        box_outside=Kind(FIXABLE, "box entirely outside its image", "boxes entirely outside their image"),
        invalid_polygon=Kind(FIXABLE, "invalid polygon", "invalid polygons"),
        invalid_iscrowd=Kind(
            FIXABLE, "annotation whose iscrowd is not 0 or 1", "annotations whose iscrowd is not 0 or 1"
        ),
        annotation_non_finite=Kind(
            FIXABLE, "annotation with a NaN or infinite number", "annotations with NaN or infinite numbers"
        ),
        image_non_finite=Kind(
            FIXABLE, "image entry with a NaN or infinite number", "image entries with NaN or infinite numbers"
        ),
        invalid_rle=Kind(FIXABLE, "malformed RLE mask", "malformed RLE masks"),
        invalid_segmentation=Kind(
            FIXABLE, "segmentation neither polygons nor RLE", "segmentations neither polygons nor RLE"
        ),
        missing_image_file=Kind(FIXABLE, "missing image file", "missing image files"),
        unreadable_image=Kind(FIXABLE, "unreadable or corrupt image file", "unreadable or corrupt image files"),
        image_size_mismatch=Kind(
            FIXABLE, "image whose size differs from the JSON", "images whose size differs from the JSON"
        ),
        box_partly_outside=Kind(
            WARNING, "box partly outside its image (clipped)", "boxes partly outside their image (clipped)"
        ),
        crowd_annotation=Kind(INFO, "crowd annotation (iscrowd=1)", "crowd annotations (iscrowd=1)"),
        image_without_annotations=Kind(INFO, "image without annotations", "images without annotations"),
        category_without_annotations=Kind(INFO, "category without annotations", "categories without annotations"),
    )
    return kinds


KINDS: dict[str, Kind] = _kinds()
_KIND_ORDER = {kind: (SEVERITIES.index(spec.severity), index) for index, (kind, spec) in enumerate(KINDS.items())}


@dataclass(frozen=True)
class Problem:
    """All findings of one kind: how many, and the first few as examples."""

    kind: str
    count: int
    examples: tuple[str, ...]

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity

    @property
    def label(self) -> str:
        spec = KINDS[self.kind]
        return spec.singular if self.count == 1 else spec.plural

    def summary(self) -> str:
        """'2 duplicate image ids (e.g. 4, 9)', or 'not COCO instances JSON: <why>' for whole-file kinds."""
        if not KINDS[self.kind].countable:
            return f"{self.label}: {self.examples[0]}" if self.examples else self.label
        more = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"{self.count} {self.label}{more}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "description": KINDS[self.kind].plural,
                "count": self.count, "examples": list(self.examples)}


def _sorted_ids(ids) -> list:
    return sorted(ids, key=lambda value: (isinstance(value, str), value))


@dataclass
class DataReport:
    """What `check_coco` found in one dataset, and which annotations and images `--skip-bad` drops."""

    source: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    images_checked: bool = False
    problems: dict[str, Problem] = field(default_factory=dict)  # by kind, fatal first
    bad_annotation_ids: set = field(default_factory=set)
    bad_image_ids: set = field(default_factory=set)  # their annotations are dropped with them
    annotations_dropped: int = 0  # bad annotations plus the annotations of bad images
    trainable_annotations: int = 0  # the non-crowd annotations --skip-bad keeps

    def by_severity(self, severity: str) -> list[Problem]:
        return [problem for problem in self.problems.values() if problem.severity == severity]

    @property
    def fatal(self) -> list[Problem]:
        return self.by_severity(FATAL)

    @property
    def fixable(self) -> list[Problem]:
        return self.by_severity(FIXABLE)

    @property
    def ok(self) -> bool:
        """True when training can use the data as it is (warnings and info only)."""
        return not self.fatal and not self.fixable

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "ok": self.ok,
            "images": self.num_images,
            "annotations": self.num_annotations,
            "categories": self.num_categories,
            "images_checked": self.images_checked,
            "problems": [problem.to_dict() for problem in self.problems.values()],
            "counts": {severity: sum(p.count for p in self.by_severity(severity)) for severity in SEVERITIES},
            "skip_bad_drops": {"annotations": self.annotations_dropped, "images": len(self.bad_image_ids)},
            "bad_annotation_ids": _sorted_ids(self.bad_annotation_ids),
            "bad_image_ids": _sorted_ids(self.bad_image_ids),
        }


class _Findings:
    """Counts per kind with the first few examples, gathered while scanning."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, example: str | None = None) -> None:
        count = self.counts.get(kind, 0)
        if count == 0:
            self.examples[kind] = []
        if count < MAX_EXAMPLES and example is not None:
            self.examples[kind].append(example)
        self.counts[kind] = count + 1

    def problems(self) -> dict[str, Problem]:
        kinds = sorted(self.counts, key=_KIND_ORDER.__getitem__)
        return {kind: Problem(kind, self.counts[kind], tuple(self.examples[kind])) for kind in kinds}


# ---------------------------------------------------------------------------------------------
# Values


def _is_id(value) -> bool:
    """An integer or a string: what can name an entry (string ids are refused, but still cross-referenced)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    short.maxstring = short.maxother = short.maxlong = 40
    return short


_SHORT = _short_repr()


def _show(value) -> str:
    """A value as an example: short, one line, and safe on deeply nested JSON."""
    return _SHORT.repr(value)


def _finite(value) -> bool:
    """False for NaN and infinities, and for integers beyond float range (they become infinite)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _non_finite_numbers(value, where: str):
    """Yield (path, number) for each NaN or infinite number inside `value` (iterative: any depth)."""
    stack = [(value, where)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, f"{where}.{key}") for key, child in item.items())
        elif isinstance(item, list):
            for index, child in enumerate(item):
                if isinstance(child, (dict, list)):
                    stack.append((child, f"{where}[{index}]"))
                elif isinstance(child, (int, float)) and not _finite(child):
                    yield f"{where}[{index}]", child
        elif isinstance(item, (int, float)) and not _finite(item):
            yield where, item


def _non_finite_entry(entry: dict, checked: tuple) -> str | None:
    """'area nan' when a key of `entry` other than the `checked` ones holds a NaN or infinity."""
    for key, value in entry.items():
        if key in checked or (isinstance(value, float) and math.isfinite(value)):
            continue
        for path, number in _non_finite_numbers(value, str(key)):
            return _non_finite_example(path, number)
    return None


def _non_finite_example(path: str, number) -> str:
    """'area nan', 'info.year inf'; a path into deeply nested JSON is cut short."""
    return f"{path if len(path) <= 60 else path[:57] + '...'} {_show(number)}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_size(value) -> bool:
    """480 or 480.0: Detectron2 compares sizes with ==, so an integral float works as well."""
    return _is_number(value) and value > 0 and _finite(value) and value == int(value)


def _box_problem(bbox, size: tuple | None) -> str | None:
    """The box's problem kind, or None; `size` is the image's (height, width) when known."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        return "invalid_box"
    if not all(map(_finite, bbox)):
        return "invalid_box"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "invalid_box"
    if size is None:
        return None
    height, width = size
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "box_outside"
    tolerance = BOX_BORDER_TOLERANCE
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        return "box_partly_outside"
    return None


def _coordinates_problem(polygon: list, size: tuple | None) -> str | None:
    """Why pycocotools cannot rasterize these numbers: NaN, infinite, or far outside the image."""
    try:
        all_finite = math.isfinite(sum(polygon))  # one pass in C; NaN and infinities survive the sum
    except OverflowError:
        all_finite = False
    if not all_finite:
        bad = next((c for c in polygon if isinstance(c, float) and not math.isfinite(c)), None)
        if bad is not None:
            return f"a non-finite coordinate ({bad})"
    if size is None:
        return None
    height, width = size
    margin_x, margin_y = POLYGON_MARGIN * width, POLYGON_MARGIN * height
    xs, ys = polygon[0::2], polygon[1::2]
    if min(xs) < -margin_x or max(xs) > width + margin_x or min(ys) < -margin_y or max(ys) > height + margin_y:
        return f"a coordinate more than an image size outside its {width:g}x{height:g} image"
    return None


def _polygons_problem(polygons: list, size: tuple | None = None) -> str | None:
    """Why Detectron2 would discard these polygons (it keeps those of >= 6 coordinates, even count), or
    pycocotools could not rasterize them; `size` is the image's (height, width) when known."""
    if not polygons:
        return "no polygon"
    for polygon in polygons:
        if not isinstance(polygon, list):
            return (
                "a flat list of numbers, not a list of polygons"
                if _is_number(polygon)
                else "a polygon that is not a list"
            )
        if len(polygon) < 6 or len(polygon) % 2:
            return f"a polygon of {len(polygon)} coordinates"
        if not all(map(_is_number, polygon)):
            return "a non-numeric coordinate"
        problem = _coordinates_problem(polygon, size)
        if problem is not None:
            return problem
    return None


def compressed_rle_runs(counts: str) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string, or None when it is not one.

    A transcription of pycocotools' `rleFrString`. It is needed because pycocotools decodes runs that
    stop short of height*width without complaint and leaves the rest of the mask uninitialised.
    """
    runs: list[int] = []
    position, length = 0, len(counts)
    while position < length:
        value, shift, more = 0, 0, True
        while more:
            if position == length:
                return None  # the string ends inside a number
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            more = code & 0x20
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return runs


def _rle_problem(rle: dict, size: tuple | None) -> str | None:
    """Why pycocotools or Detectron2 cannot use this RLE (counts as a list, or compressed as a string)."""
    rle_size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(_is_int(s) and s >= 0 for s in rle_size)):
        return "size is not [height, width]"
    height, width = rle_size
    if size is not None and (height, width) != size:
        return f"size {_show(height)}x{_show(width)}, image {size[0]:g}x{size[1]:g}"
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "counts not all non-negative integers"
        runs = counts
    elif isinstance(counts, str):
        runs = compressed_rle_runs(counts)
        if runs is None:
            return "counts string is not COCO's compressed RLE"
    else:
        return f"counts is a {type(counts).__name__}, neither a list nor a string"
    total = sum(runs)
    if total != height * width:
        return f"runs cover {total} pixels, not {height}x{width}"
    return None


def _segmentation_problem(segmentation, size: tuple | None) -> tuple[str, str] | None:
    """(kind, detail) of a bad segmentation, or None."""
    if isinstance(segmentation, list):
        detail = _polygons_problem(segmentation, size)
        return ("invalid_polygon", detail) if detail else None
    if isinstance(segmentation, dict):
        detail = _rle_problem(segmentation, size)
        return ("invalid_rle", detail) if detail else None
    return "invalid_segmentation", f"a {type(segmentation).__name__}"


# ---------------------------------------------------------------------------------------------
# The JSON


def _check_images_section(images: list, found: _Findings, report: DataReport) -> dict:
    """Image id -> (height, width) as the JSON says, or None when the entry is unusable."""
    by_id: dict = {}
    duplicates: set = set()
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            found.add("image_not_object", f"#{index}")
            continue
        image_id = image.get("id")
        file_name = image.get("file_name")
        if not _is_id(image_id):
            found.add("image_missing_id", f"#{index} ({_show(file_name)})")
            continue
        if image_id in by_id:
            if image_id not in duplicates:
                duplicates.add(image_id)
                found.add("duplicate_image_id", _show(image_id))
            continue
        where = f"id {_show(image_id)} ({_show(file_name)})"
        if isinstance(image_id, str):
            found.add("string_image_id", where)
        usable = True
        if not isinstance(file_name, str) or not file_name:
            found.add("image_missing_file_name", f"id {_show(image_id)}")
            usable = False
        for key in IMAGE_SIZE_KEYS:
            if not _positive_size(image.get(key)):
                found.add(f"image_missing_{key}", where)
                usable = False
        non_finite = _non_finite_entry(image, ("id", *IMAGE_SIZE_KEYS))
        if non_finite is not None:
            found.add("image_non_finite", f"{where}: {non_finite}")
            report.bad_image_ids.add(image_id)
        by_id[image_id] = (image["height"], image["width"]) if usable else None
    return by_id


def _check_categories_section(categories: list, found: _Findings) -> set:
    """The category ids; one name for two categories is refused, as training matches classes by name."""
    ids: set = set()
    duplicates: set = set()
    ids_by_name: dict[str, list] = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict):
            found.add("category_not_object", f"#{index}")
            continue
        category_id = category.get("id")
        if not _is_int(category_id):
            found.add("category_missing_id", f"#{index} ({_show(category.get('name'))})")
            continue
        name = category.get("name")
        if not isinstance(name, str):
            found.add("category_missing_name", f"id {category_id}")
        if category_id in ids:
            if category_id not in duplicates:
                duplicates.add(category_id)
                found.add("duplicate_category_id", _show(category_id))
            continue
        ids.add(category_id)
        if isinstance(name, str):
            ids_by_name.setdefault(name, []).append(category_id)
    for name, named_ids in ids_by_name.items():
        if len(named_ids) > 1:
            found.add("duplicate_category_name", f"{_show(name)} (ids {', '.join(map(str, named_ids))})")
    return ids


def _check_annotations_section(
    annotations: list, images: dict, category_ids: set, found: _Findings, report: DataReport
) -> tuple[set, set]:
    """Scan every annotation once; returns (annotated image ids, used category ids)."""
    # Checked on their own; a NaN or infinity anywhere else (area, keypoints) is caught generically.
    checked_keys = ("id", "image_id", "category_id", "bbox", "segmentation", "iscrowd", "ignore")
    seen_ids: set = set()
    duplicates: set = set()
    annotated_images: set = set()
    used_categories: set = set()
    bad_ids = report.bad_annotation_ids
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            found.add("annotation_not_object", f"#{index}")
            continue
        annotation_id, image_id = annotation.get("id"), annotation.get("image_id")
        if not _is_id(annotation_id):
            where = f"#{index} (image {_show(image_id)})"
            found.add("annotation_missing_id", where)
            usable = False
        else:
            where = f"id {_show(annotation_id)} (image {_show(image_id)})"
            usable = True
            if isinstance(annotation_id, str):
                found.add("string_annotation_id", where)
            if annotation_id in seen_ids:
                if annotation_id not in duplicates:
                    duplicates.add(annotation_id)
                    found.add("duplicate_annotation_id", _show(annotation_id))
            else:
                seen_ids.add(annotation_id)
        for key in ANNOTATION_KEYS:
            if key not in annotation:
                found.add(f"annotation_missing_{key}", where)
                usable = False
        if not usable:
            continue  # fatal already: nothing will be dropped or trained

        bad = False
        size = None
        if _is_id(image_id) and image_id in images:
            annotated_images.add(image_id)
            size = images[image_id]
        else:
            found.add("unknown_image", where)
            bad = True
        category_id = annotation["category_id"]
        if _is_int(category_id) and category_id in category_ids:
            used_categories.add(category_id)
        else:
            found.add("unknown_category", f"{where}: category {_show(category_id)}")
            bad = True
        if annotation.get("ignore", 0):
            found.add("ignore_flag", where)
            bad = True
        iscrowd = annotation.get("iscrowd", 0)
        if iscrowd not in (0, 1):  # Detectron2 takes "0" for a crowd, COCO evaluation for none; [1] crashes it
            found.add("invalid_iscrowd", f"{where}: iscrowd {_show(iscrowd)}")
            bad = True
        elif iscrowd:
            found.add("crowd_annotation", where)
        box_kind = _box_problem(annotation["bbox"], size)
        if box_kind is not None:
            found.add(box_kind, f"{where}: {_show(annotation['bbox'])}")
            bad = bad or KINDS[box_kind].severity == FIXABLE
        segmentation_problem = _segmentation_problem(annotation["segmentation"], size)
        if segmentation_problem is not None:
            kind, detail = segmentation_problem
            found.add(kind, f"{where}: {detail}")
            bad = True
        non_finite = _non_finite_entry(annotation, checked_keys)
        if non_finite is not None:
            found.add("annotation_non_finite", f"{where}: {non_finite}")
            bad = True
        if bad:
            bad_ids.add(annotation_id)
    return annotated_images, used_categories


# ---------------------------------------------------------------------------------------------
# The image files


def _mixed_kinds(kinds: list[tuple[str, tuple[int, str]]]) -> str | None:
    """The problem of (file name, kind) pairs of more than one kind: two files of two kinds and the
    count of each kind; None when all are of one kind."""
    counts: dict[tuple[int, str], int] = {}
    for _, kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    if len(counts) < 2:
        return None
    first_name, first_kind = kinds[0]
    other_name, other_kind = next((name, kind) for name, kind in kinds if kind != first_kind)
    tally = ", ".join(f"{describe_kind(kind)}: {count}" for kind, count in counts.items())
    return (f"{first_name} is {describe_kind(first_kind)}, {other_name} is {describe_kind(other_kind)} "
            f"(images per kind: {tally}); one model takes one kind of image: convert them to one")


def _check_image_files(coco: dict, images: dict, image_root: Path, found: _Findings, report: DataReport) -> None:
    """Probe each usable image entry's file, several at a time (the work is mostly waiting on I/O); the
    readable ones must all be of one kind (channels and pixel type)."""
    entries = [
        (image["id"], image["file_name"], *images[image["id"]])
        for image in coco["images"]
        if isinstance(image, dict) and _is_id(image.get("id")) and images.get(image["id"]) is not None
    ]
    seen: set = set()
    entries = [entry for entry in entries if not (entry[0] in seen or seen.add(entry[0]))]  # first of duplicates
    paths = [os.path.join(image_root, file_name) for _, file_name, _, _ in entries]
    workers = min(16, 4 * (os.cpu_count() or 1))
    kinds = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(probe_image, paths, [e[2] for e in entries], [e[3] for e in entries])
        for (image_id, file_name, _, _), (problem, image_kind) in zip(entries, results):
            if problem is not None:
                kind, detail = problem
                found.add(kind, f"id {image_id} ({file_name}): {detail}")
                report.bad_image_ids.add(image_id)
            if image_kind is not None:
                kinds.append((file_name, image_kind))
    mixed = _mixed_kinds(kinds)
    if mixed is not None:
        found.add("mixed_image_kinds", mixed)


# ---------------------------------------------------------------------------------------------
# Entry points


def _json_type(value) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def check_coco_data(
    coco, image_root: str | Path | None = None, *, check_images: bool = True, source: str = "COCO data"
) -> DataReport:
    """Check an already parsed COCO instances dataset (see `check_coco`); `source` names it in messages."""
    report = DataReport(source)
    found = _Findings()
    if not isinstance(coco, dict):
        found.add("not_coco", f"a JSON {_json_type(coco)}, not an object")
    else:
        wrong = [key for key in REQUIRED_SECTIONS if not isinstance(coco.get(key), list)]
        if wrong:
            found.add(
                "not_coco", "no " + ", ".join(f"{key!r}" for key in wrong) + (" list" if len(wrong) == 1 else " lists")
            )
    if found.counts:
        report.problems = found.problems()
        return report
    if check_images and image_root is None:
        raise MaskinitError(f"{source}: an image folder is needed to check the image files")

    report.num_images, report.num_annotations = len(coco["images"]), len(coco["annotations"])
    report.num_categories = len(coco["categories"])
    for section in REQUIRED_SECTIONS:
        if not coco[section]:
            found.add(f"no_{section}")
    images = _check_images_section(coco["images"], found, report)
    category_ids = _check_categories_section(coco["categories"], found)
    annotated_images, used_categories = _check_annotations_section(
        coco["annotations"], images, category_ids, found, report
    )
    for section, value in coco.items():
        if section not in ("images", "annotations"):  # their entries are checked one by one
            for path, number in _non_finite_numbers(value, str(section)):
                found.add("non_finite", _non_finite_example(path, number))
    entries = [annotation for annotation in coco["annotations"] if isinstance(annotation, dict)]
    if entries and all(annotation.get("iscrowd", 0) for annotation in entries):
        found.add("only_crowd", f"all {len(entries)} annotations are crowd regions (iscrowd=1), "
                                f"e.g. id {_show(entries[0].get('id'))} (image {_show(entries[0].get('image_id'))})")
    if check_images:
        _check_image_files(coco, images, Path(image_root), found, report)
        report.images_checked = True

    for image_id in images:
        if image_id not in annotated_images:
            found.add("image_without_annotations", f"id {image_id}")
    unused_categories = category_ids - used_categories
    for category in coco["categories"]:
        if isinstance(category, dict) and _is_int(category.get("id")) and category["id"] in unused_categories:
            found.add("category_without_annotations", f"id {category['id']} ({_show(category.get('name'))})")
    report.problems = found.problems()
    if not report.fatal:
        kept = [
            annotation for annotation in coco["annotations"]
            if not (annotation["id"] in report.bad_annotation_ids or annotation["image_id"] in report.bad_image_ids)
        ]
        report.annotations_dropped = len(coco["annotations"]) - len(kept)
        report.trainable_annotations = sum(1 for annotation in kept if not annotation.get("iscrowd", 0))
    return report


def read_coco_file(json_file: str | Path) -> object:
    """The parsed JSON, or a `DataReport` holding the fatal reason it cannot be parsed.

    The file is read as pycocotools reads it for Detectron2 (UTF-8 text), so that what passes here
    loads there: a byte-order mark or another encoding is refused, where `json.load` of bytes would
    have accepted them. A path that does not exist is the user's mistake, not the data's: that raises
    `MaskinitError`.
    """
    json_file = Path(json_file)
    if not json_file.is_file():
        what = "is a directory, not a file" if json_file.is_dir() else "not found"
        raise MaskinitError(f"COCO annotations {json_file} {what}")
    try:
        raw = json_file.read_bytes()
    except OSError as error:
        return _unusable_file(json_file, "not_coco", f"cannot be read: {error.strerror}")
    if raw.startswith(codecs.BOM_UTF8):
        return _unusable_file(json_file, "byte_order_mark")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        detail = f"not valid JSON: not UTF-8 text ({error.reason} at byte {error.start})"
    except ValueError as error:  # JSONDecodeError, or an integer of over 4300 digits
        detail = f"not valid JSON: {error}"
    except RecursionError:
        detail = "nested too deeply to parse (arrays or objects over about 1000 levels deep)"
    return _unusable_file(json_file, "not_coco", detail)


def _unusable_file(json_file: Path, kind: str, detail: str | None = None) -> DataReport:
    report = DataReport(str(json_file))
    report.problems = {kind: Problem(kind, 1, (detail,) if detail else ())}
    return report


def check_coco(json_file: str | Path, image_root: str | Path | None = None, *, check_images: bool = True) -> DataReport:
    """Check a COCO instances JSON and (unless `check_images` is False) the image files it names.

    Raises `MaskinitError` only when a path given does not exist; everything wrong with the data is
    in the report.
    """
    _, report = load_and_check_coco(json_file, image_root, check_images=check_images)
    return report


def load_and_check_coco(
    json_file: str | Path, image_root: str | Path | None = None, *, check_images: bool = True
) -> tuple[dict | None, DataReport]:
    """(parsed JSON or None when unparsable, report): `check_coco` for callers that clean afterwards."""
    if check_images:
        if image_root is None:
            raise MaskinitError(f"{json_file}: an image folder is needed to check the image files")
        if not Path(image_root).is_dir():
            raise MaskinitError(f"image folder {image_root} for {json_file} not found")
    coco = read_coco_file(json_file)
    if isinstance(coco, DataReport):
        return None, coco
    return coco, check_coco_data(coco, image_root, check_images=check_images, source=str(json_file))


# ---------------------------------------------------------------------------------------------
# Policy and cleaning


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def enforce_data_policy(report: DataReport, skip_bad: bool, *, can_skip: bool = True) -> list[str]:
    """Raise on what training cannot survive; with `skip_bad`, return log lines of what is dropped.

    Fatal problems always raise (one line, all fatal kinds); fixable ones raise unless `skip_bad`,
    and even then when dropping them would leave no annotation (but crowd regions) or no image.
    `can_skip=False`: the command has no --skip-bad, so the message does not suggest it.
    """
    if report.fatal:
        raise MaskinitError(f"{report.source}: " + "; ".join(problem.summary() for problem in report.fatal))
    fixable = report.fixable
    if not fixable:
        return []
    dropped = f"{_plural(report.annotations_dropped, 'annotation')} and {_plural(len(report.bad_image_ids), 'image')}"
    kinds = "; ".join(problem.summary() for problem in fixable)
    if not skip_bad:
        remedy = (
            f"Pass --skip-bad to leave out the {dropped} concerned, or fix the data" if can_skip else "Fix the data"
        )
        raise MaskinitError(f"{report.source}: {kinds}. {remedy} (maskinit check-data lists every problem)")
    if not report.trainable_annotations or len(report.bad_image_ids) >= report.num_images:
        raise MaskinitError(
            f"{report.source}: --skip-bad would drop every annotation or image (or keep only crowd regions): {kinds}"
        )
    lines = [f"{report.source}: --skip-bad leaves out {dropped}"]
    lines += [f"{report.source}: leaving out {problem.summary()}" for problem in fixable]
    return lines


def clean_coco_data(coco: dict, report: DataReport) -> dict:
    """A copy of `coco` without the report's bad annotations and bad images (with their annotations)."""
    if report.fatal:
        raise MaskinitError(f"{report.source}: fatal problems cannot be cleaned away; fix the file first")
    bad_annotations, bad_images = report.bad_annotation_ids, report.bad_image_ids
    return {
        **coco,
        "images": [image for image in coco["images"] if image["id"] not in bad_images],
        "annotations": [
            annotation for annotation in coco["annotations"]
            if annotation["id"] not in bad_annotations and annotation["image_id"] not in bad_images
        ],
    }


def write_clean_json(json_file: str | Path, report: DataReport, out_path: str | Path) -> Path:
    """Write `json_file` without the report's bad items to `out_path`; returns the path."""
    coco = read_coco_file(json_file)
    if isinstance(coco, DataReport):
        raise MaskinitError(f"{json_file}: " + coco.fatal[0].summary())
    try:
        return write_atomically(out_path, json.dumps(clean_coco_data(coco, report)))
    except OSError as error:
        raise MaskinitError(f"cannot write the cleaned annotations {out_path}: {error.strerror}") from error


def write_clean_copy(coco: dict, report: DataReport, folder: str | Path, stem: str) -> Path:
    """The cleaned data as `folder/<stem>.clean-<content hash>.json`, reused when already there.

    Named by content, so concurrent processes (torchrun ranks) cleaning the same file agree on one
    path without coordinating, and a changed original never reuses a stale copy.
    """
    text = json.dumps(clean_coco_data(coco, report))
    out_path = Path(folder) / f"{stem}.clean-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if out_path.is_file():
        return out_path
    try:
        return write_atomically(out_path, text)
    except OSError as error:
        raise MaskinitError(f"cannot write the cleaned annotations under {folder}: {error.strerror}") from error
