"""Check a COCO instances dataset before training: the JSON and the image files it names.

Detectron2 trusts its data: a duplicate id, a truncated PNG or an RLE of the wrong size surfaces as an
exception in a data-loader worker hours into a run, or silently as a wrong mask. `check_coco` looks
at everything once, up front, and returns a `DataReport` (`maskinit.data.report`: the kinds of problem
by severity, `enforce_data_policy`, `clean_coco_data`); the image files are probed by their headers
(`maskinit.data.image_files`). `write_clean_json` / `write_clean_copy` write the cleaned copy that is
registered in place of the original (see `maskinit.data.sources.validate_data`).

About 600 lines in one module on purpose: the three sections of the JSON are checked in one pass each,
against the same value tests (ids, finite numbers, boxes, polygons, RLE) and into one `Findings`; the
pieces are short functions, read in the order a file is checked.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import reprlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..atomic import write_atomically
from ..errors import MaskinitError
from .image_files import probe_image
from .images import describe_kind
from .report import (
    ANNOTATION_KEYS,
    FIXABLE,
    IMAGE_SIZE_KEYS,
    KINDS,
    DataReport,
    Findings,
    Problem,
    clean_coco_data,
    enforce_data_policy,  # noqa: F401 - the policy `check-data` applies, imported from here
)

REQUIRED_SECTIONS = ("images", "annotations", "categories")
# Boxes computed from polygons can overshoot the border by rounding; Detectron2 clips them anyway.
BOX_BORDER_TOLERANCE = 1.0
# pycocotools rasterizes a polygon along its perimeter: coordinates far outside the image (or NaN,
# which it casts to int) make it allocate gigabytes or segfault. Allowed: one image size beyond a border.
POLYGON_MARGIN = 1.0


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


def _check_images_section(images: list, found: Findings, report: DataReport) -> dict:
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


def _check_categories_section(categories: list, found: Findings) -> set:
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
    annotations: list, images: dict, category_ids: set, found: Findings, report: DataReport
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


def _check_image_files(coco: dict, images: dict, image_root: Path, found: Findings, report: DataReport) -> None:
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
    found = Findings()
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
# Cleaned copies


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
