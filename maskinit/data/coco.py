"""COCO datasets for Detectron2: check a file, register it, and point a config at it.

Detectron2 reads a COCO JSON lazily, when training starts; a broken file would then fail deep in a
data loader. `inspect_coco` reads it up front and names the problem in one line, and its summary
(classes, mask format) is what the config needs: `MODEL.ROI_HEADS.NUM_CLASSES` and
`INPUT.MASK_FORMAT` ("bitmask" when any mask is RLE, which Detectron2's polygon path cannot read).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..errors import MaskinitError

REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class CocoSummary:
    """What a COCO instances file holds, as Detectron2 will see it."""

    num_classes: int
    class_names: tuple[str, ...]
    # Detectron2's `thing_dataset_id_to_contiguous_id`: sorted category ids -> 0..num_classes-1.
    dataset_id_to_contiguous_id: dict[int, int]
    mask_format: str  # "polygon" or "bitmask"
    num_images: int
    num_annotations: int


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset registered in Detectron2's catalogs, with what the config needs to know."""

    name: str
    json_file: Path | None
    image_root: Path | None
    num_classes: int
    class_names: tuple[str, ...]
    mask_format: str


def _read_json(json_file: Path) -> dict:
    if not json_file.is_file():
        what = "is a directory, not a file" if json_file.is_dir() else "not found"
        raise MaskinitError(f"COCO annotations {json_file} {what}")
    try:
        with json_file.open("rb") as handle:
            data = json.load(handle)
    except OSError as error:
        raise MaskinitError(f"cannot read COCO annotations {json_file}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MaskinitError(f"COCO annotations {json_file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise MaskinitError(f"COCO annotations {json_file} must be a JSON object, not a {type(data).__name__}")
    missing = [key for key in REQUIRED_KEYS if not isinstance(data.get(key), list)]
    if missing:
        raise MaskinitError(f"COCO annotations {json_file} has no {', '.join(missing)} list")
    return data


def _is_rle(segmentation) -> bool:
    return isinstance(segmentation, dict)


def inspect_coco(json_file: str | Path) -> CocoSummary:
    """Validate a COCO instances file and summarize it; `MaskinitError` names what is wrong.

    The mask format ignores crowd annotations: Detectron2's mapper drops them before reading masks,
    and COCO itself stores its crowd regions as RLE next to polygon objects.
    """
    json_file = Path(json_file)
    data = _read_json(json_file)
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError):
        raise MaskinitError(f"COCO annotations {json_file}: every category needs an integer id and a name") from None
    if not categories:
        raise MaskinitError(f"COCO annotations {json_file} has an empty categories list")
    if len(categories) != len(data["categories"]):
        raise MaskinitError(f"COCO annotations {json_file} has duplicate category ids")
    image_ids = {image.get("id") for image in data["images"] if isinstance(image, dict)}
    any_rle = False
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or "segmentation" not in annotation:
            raise MaskinitError(
                f"COCO annotations {json_file}: annotation #{index} has no segmentation (Mask R-CNN needs masks)"
            )
        for key, known in (("category_id", categories), ("image_id", image_ids)):
            if annotation.get(key) not in known:
                raise MaskinitError(
                    f"COCO annotations {json_file}: annotation #{index} has unknown {key} {annotation.get(key)!r}"
                )
        if not annotation.get("iscrowd", 0) and _is_rle(annotation["segmentation"]):
            any_rle = True
    # Exactly as detectron2's load_coco_json: classes ordered by id, ids mapped in sorted order.
    category_ids = sorted(categories)
    return CocoSummary(
        num_classes=len(category_ids),
        class_names=tuple(categories[i] for i in category_ids),
        dataset_id_to_contiguous_id={dataset_id: index for index, dataset_id in enumerate(category_ids)},
        mask_format="bitmask" if any_rle else "polygon",
        num_images=len(data["images"]),
        num_annotations=len(data["annotations"]),
    )


def _unregister(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def register_coco_dataset(name: str, json_file: str | Path, image_root: str | Path) -> DatasetInfo:
    """Register a COCO instances file under `name` (replacing an earlier registration of it).

    The class names and id mapping go into the metadata now, not when Detectron2 first loads the
    file, so that evaluators and visualizers can use them before any data is read.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    summary = inspect_coco(json_file)
    if not image_root.is_dir():
        raise MaskinitError(f"image folder {image_root} for {json_file} not found")
    _unregister(name)
    register_coco_instances(
        name,
        {
            "thing_classes": list(summary.class_names),
            "thing_dataset_id_to_contiguous_id": dict(summary.dataset_id_to_contiguous_id),
        },
        str(json_file),
        str(image_root),
    )
    return DatasetInfo(name, json_file, image_root, summary.num_classes, summary.class_names, summary.mask_format)


def register_synthetic_dataset(dataset, prefix: str = "maskinit_synthetic") -> tuple[DatasetInfo, DatasetInfo]:
    """Register a `SyntheticDataset` as `<prefix>_train` and `<prefix>_val`."""
    return (
        register_coco_dataset(f"{prefix}_train", dataset.train.json_file, dataset.train.image_root),
        register_coco_dataset(f"{prefix}_val", dataset.val.json_file, dataset.val.image_root),
    )


def registered_dataset(name: str) -> DatasetInfo:
    """A dataset already in Detectron2's `DatasetCatalog` (e.g. the builtin `coco_2017_val`).

    Builtin COCO names point under `$DETECTRON2_DATASETS` (default `./datasets`); a missing file
    is reported here rather than when the first batch is loaded.
    """
    known = DatasetCatalog.list()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else f"; e.g. {', '.join(sorted(known)[:3])}, ..."
        raise MaskinitError(f"unknown dataset {name!r}: not registered in Detectron2's DatasetCatalog{hint}")
    metadata = MetadataCatalog.get(name)
    json_file = metadata.get("json_file")
    if json_file:
        json_file = Path(json_file)
        if not json_file.is_file():
            raise MaskinitError(
                f"dataset {name!r} needs {json_file}, which is not there "
                "(set DETECTRON2_DATASETS to the folder holding coco/)"
            )
        summary = inspect_coco(json_file)
        image_root = Path(metadata.image_root) if metadata.get("image_root") else None
        return DatasetInfo(name, json_file, image_root, summary.num_classes, summary.class_names, summary.mask_format)
    # Not a COCO file: ask the dataset itself (Detectron2's standard dataset dicts).
    dicts = DatasetCatalog.get(name)
    class_names = tuple(MetadataCatalog.get(name).get("thing_classes") or ())
    if not class_names:
        raise MaskinitError(f"dataset {name!r} has no thing_classes metadata: cannot tell its number of classes")
    any_rle = any(
        _is_rle(annotation.get("segmentation"))
        for record in dicts
        for annotation in record.get("annotations", ())
        if not annotation.get("iscrowd", 0)
    )
    return DatasetInfo(name, None, None, len(class_names), class_names, "bitmask" if any_rle else "polygon")


def apply_dataset_to_cfg(cfg: CfgNode, train_info: DatasetInfo, val_info: DatasetInfo | None = None) -> CfgNode:
    """Set DATASETS.TRAIN/TEST, MODEL.ROI_HEADS.NUM_CLASSES and INPUT.MASK_FORMAT from the datasets."""
    if val_info is not None and val_info.class_names != train_info.class_names:
        raise MaskinitError(
            f"datasets {train_info.name!r} and {val_info.name!r} have different categories: "
            f"{list(train_info.class_names)} vs {list(val_info.class_names)}"
        )
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.DATASETS.TRAIN = (train_info.name,)
    cfg.DATASETS.TEST = (val_info.name,) if val_info is not None else ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = train_info.num_classes
    formats = {train_info.mask_format} | ({val_info.mask_format} if val_info is not None else set())
    cfg.INPUT.MASK_FORMAT = "bitmask" if "bitmask" in formats else "polygon"
    if was_frozen:
        cfg.freeze()
    return cfg
