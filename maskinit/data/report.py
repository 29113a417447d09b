"""What `check-data` found in a COCO instances dataset, and what to do about it.

Every finding is of a kind (`KINDS`), and each kind has a severity:

- fatal: the file cannot be trained on at all (not COCO, a byte-order mark, no images, duplicate or
  string ids, missing keys, only crowd annotations, a NaN or infinity outside images and annotations);
- fixable: one annotation or image is bad and can be dropped (unknown ids, bad boxes or masks, NaN
  or infinite numbers, missing, corrupt or mis-sized image files);
- warning: suspicious but harmless to Detectron2 (a box partly outside its image is clipped);
- info: worth knowing, not wrong (crowd annotations, images or categories without annotations).

A `DataReport` holds them (`Findings` collects them while a file is checked, `maskinit.data.validate`);
`enforce_data_policy` turns a report into a one-line `MaskinitError` or, with `skip_bad`, into log lines;
`clean_coco_data` drops the bad items so that a cleaned copy can be registered in place of the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import MaskinitError

FATAL, FIXABLE, WARNING, INFO = "fatal", "fixable", "warning", "info"
SEVERITIES = (FATAL, FIXABLE, WARNING, INFO)
MAX_EXAMPLES = 3
ANNOTATION_KEYS = ("image_id", "category_id", "bbox", "segmentation")  # besides "id"
IMAGE_SIZE_KEYS = ("height", "width")
# Measured: faster-coco-eval fails on string image ids; on string annotation ids pycocotools' COCOeval
# fails and faster-coco-eval scores AP 0 without complaint.
INTEGER_IDS = "COCO evaluation needs integer ids"
BOM_PROBLEM = "starts with a UTF-8 byte-order mark, which pycocotools cannot read: save it as UTF-8 without BOM"


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


class Findings:
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
