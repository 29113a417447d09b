"""COCO datasets for Detectron2: check a file, register it, and point a config at it.

Detectron2 reads a COCO JSON lazily, when training starts; a broken file would then fail deep in a
data loader. `inspect_coco` reads it up front and names the problem in one line, and its summary
(classes, mask format) is what the config needs: `MODEL.ROI_HEADS.NUM_CLASSES` and
`INPUT.MASK_FORMAT` ("bitmask" when any mask is RLE, which Detectron2's polygon path cannot read).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..atomic import write_atomically
from ..errors import MaskinitError

logger = logging.getLogger(__name__)

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
    # Dataset category ids in contiguous (model output) order; empty: not known.
    category_ids: tuple[int, ...] = ()


def _read_json(json_file: Path) -> dict:
    """The parsed file, read as `check-data` reads it (UTF-8 without BOM, any nesting depth refused
    in one line), so that both accept the same files."""
    from .report import DataReport
    from .validate import read_coco_file

    data = read_coco_file(json_file)  # raises MaskinitError for a missing file or a directory
    if isinstance(data, DataReport):
        raise MaskinitError(f"COCO annotations {json_file}: {data.fatal[0].summary()}")
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
    except (KeyError, TypeError, ValueError) as error:
        raise MaskinitError(f"COCO annotations {json_file}: every category needs an integer id and a name") from error
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
    # Exactly as detectron2's load_coco_json: classes ordered by id, ids mapped in sorted order (internals.py).
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


def _refuse_repeated_names(names, category_ids, where: str) -> None:
    """Categories are matched by name (eval, predict, train/val): one name, one category."""
    ids_by_name: dict[str, list[int]] = {}
    for name, category_id in zip(names, category_ids):
        ids_by_name.setdefault(name, []).append(category_id)
    repeated = [f"{name!r} (ids {', '.join(map(str, ids))})" for name, ids in ids_by_name.items() if len(ids) > 1]
    if repeated:
        raise MaskinitError(
            f"{where} has several categories with one name: {'; '.join(repeated)}: "
            "category names must be unique (categories are matched by name)"
        )


def dataset_classes(info: DatasetInfo) -> dict[str, int]:
    """A dataset's classes as `{name: dataset category id}` in contiguous (model output) order.

    Without known ids, a class's id is its contiguous id (what Detectron2 writes when a dataset has
    no `thing_dataset_id_to_contiguous_id`).
    """
    category_ids = info.category_ids or tuple(range(len(info.class_names)))
    _refuse_repeated_names(info.class_names, category_ids, f"dataset {info.name!r}")
    return dict(zip(info.class_names, category_ids))


def model_classes(cfg: CfgNode) -> dict[str, int]:
    """The classes a model was trained on, as stored in its config (`MASKINIT.CLASS_NAMES` and
    `MASKINIT.CLASS_IDS`): `{name: training category id}` in model output order; `{}` when the
    config does not say (written before they were stored)."""
    names, category_ids = list(cfg.MASKINIT.CLASS_NAMES), [int(i) for i in cfg.MASKINIT.CLASS_IDS]
    if not names and not category_ids:
        return {}
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if not len(names) == len(category_ids) == num_classes:
        raise MaskinitError(
            f"config: MASKINIT.CLASS_NAMES ({len(names)}) and MASKINIT.CLASS_IDS ({len(category_ids)}) "
            f"must list one entry per class of MODEL.ROI_HEADS.NUM_CLASSES ({num_classes})"
        )
    _refuse_repeated_names(names, category_ids, "config MASKINIT.CLASS_NAMES")
    return dict(zip(names, category_ids))


def _translation_path(json_file: Path, text: str) -> Path:
    from .synthetic import default_cache_root

    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return default_cache_root() / "classes" / f"{json_file.stem}-{digest}.json"


def _write_as_trained(json_file: Path, classes: Mapping[str, int]) -> Path:
    """A copy of a COCO file whose categories are the model's, in its order: each category takes the
    training id of its name, and a training class the file lacks is listed with no annotations.

    Detectron2 maps a COCO file's category ids in sorted order to the model's outputs, and
    `COCOEvaluator` names per-class AP in that order too; only a file whose ids sort like the
    model's classes is read right by both. The ids are the training ids (so the evaluator's results
    carry them), or 1..N when those do not ascend. Written under `<maskinit cache>/classes/`, named by
    content, atomically: every process of a run may write the same copy.
    """
    data = _read_json(json_file)
    training_ids = list(classes.values())
    ascending = all(a < b for a, b in zip(training_ids, training_ids[1:]))
    new_ids = dict(zip(classes, training_ids if ascending else range(1, len(classes) + 1)))
    own = {str(category["name"]): category for category in data["categories"]}
    old_to_new = {int(category["id"]): new_ids[str(category["name"])] for category in data["categories"]}
    translated = {
        **data,
        "categories": [{**own.get(name, {}), "id": new_id, "name": name} for name, new_id in new_ids.items()],
        "annotations": [{**a, "category_id": old_to_new[int(a["category_id"])]} for a in data["annotations"]],
    }
    text = json.dumps(translated)
    path = _translation_path(json_file, text)
    if not path.is_file():
        try:
            write_atomically(path, text)
        except OSError as error:
            raise MaskinitError(
                f"cannot write {path} (the model's categories for {json_file}): {error.strerror}"
            ) from error
    return path


def register_coco_dataset(
    name: str, json_file: str | Path, image_root: str | Path, classes: Mapping[str, int] | None = None
) -> DatasetInfo:
    """Register a COCO instances file under `name` (replacing an earlier registration of it).

    The class names and id mapping go into the metadata now, not when Detectron2 first loads the
    file, so that evaluators and visualizers can use them before any data is read. Two categories
    with one name are refused.

    `classes` (`{name: id}` in model output order, see `model_classes`) matches the file's
    categories to a trained model's by name: a category name the model does not know is refused; when
    the names are not already the model's, in its order, a copy of the file with the model's
    categories is registered instead (see `_write_as_trained`), so that ground truth, predictions and
    per-class AP line up. Model classes absent from the file are fine (they have no annotations, so
    COCO AP leaves them out) and are logged.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    summary = inspect_coco(json_file)
    category_ids = tuple(sorted(summary.dataset_id_to_contiguous_id, key=summary.dataset_id_to_contiguous_id.get))
    _refuse_repeated_names(summary.class_names, category_ids, f"COCO annotations {json_file}")
    if not image_root.is_dir():
        raise MaskinitError(f"image folder {image_root} for {json_file} not found")
    class_names = summary.class_names
    if classes is not None and class_names != tuple(classes):
        unknown = [n for n in class_names if n not in classes]
        if unknown:
            raise MaskinitError(
                f"COCO annotations {json_file} has categories the model was not trained on: "
                f"{', '.join(map(repr, unknown))} (the model's classes: {', '.join(map(repr, classes))})"
            )
        missing = [n for n in classes if n not in class_names]
        if missing:
            logger.warning("%s has no category %s: evaluated on the others", json_file, ", ".join(map(repr, missing)))
        json_file = _write_as_trained(json_file, classes)
        logger.info("%s: categories matched to the model's by name in %s", name, json_file)
        summary = inspect_coco(json_file)
        category_ids = tuple(sorted(summary.dataset_id_to_contiguous_id, key=summary.dataset_id_to_contiguous_id.get))
        class_names = summary.class_names
    _unregister(name)
    register_coco_instances(
        name,
        {
            "thing_classes": list(class_names),
            "thing_dataset_id_to_contiguous_id": dict(summary.dataset_id_to_contiguous_id),
        },
        str(json_file),
        str(image_root),
    )
    return DatasetInfo(name, json_file, image_root, summary.num_classes, class_names, summary.mask_format, category_ids)


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
        mapping = summary.dataset_id_to_contiguous_id
        category_ids = tuple(sorted(mapping, key=mapping.get))
        return DatasetInfo(
            name, json_file, image_root, summary.num_classes, summary.class_names, summary.mask_format, category_ids
        )
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
    mapping = MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id") or {}
    category_ids = tuple(sorted(mapping, key=mapping.get)) if len(mapping) == len(class_names) else ()
    return DatasetInfo(
        name, None, None, len(class_names), class_names, "bitmask" if any_rle else "polygon", category_ids
    )


def dataset_as_trained(info: DatasetInfo, classes: Mapping[str, int]) -> DatasetInfo:
    """The dataset to evaluate a model trained on `classes` with (see `model_classes`): `info`
    itself when its class names are the model's, in its order; else a COCO-file dataset
    re-registered as `<name>_as_trained` with its categories matched by name
    (`register_coco_dataset(..., classes=...)`). Unknown names, or a dataset that is not a COCO
    file and lists the classes in another order, are a `MaskinitError`."""
    if not classes or info.class_names == tuple(classes):
        return info
    if info.json_file is not None and info.image_root is not None:
        return register_coco_dataset(f"{info.name}_as_trained", info.json_file, info.image_root, classes=classes)
    unknown = [n for n in info.class_names if n not in classes]
    problem = (
        f"categories the model was not trained on: {', '.join(map(repr, unknown))}"
        if unknown
        else f"the model's categories in another order: {list(info.class_names)}"
    )
    raise MaskinitError(f"dataset {info.name!r} has {problem} (the model's classes: {', '.join(map(repr, classes))})")


def apply_dataset_to_cfg(cfg: CfgNode, train_info: DatasetInfo, val_info: DatasetInfo | None = None) -> CfgNode:
    """Set DATASETS.TRAIN/TEST, MODEL.ROI_HEADS.NUM_CLASSES, INPUT.MASK_FORMAT and the training
    classes (MASKINIT.CLASS_NAMES/CLASS_IDS, which eval and predict read) from the datasets.

    The validation set must list the training classes in the same order: register it with
    `classes=dataset_classes(train_info)` to match its categories by name.
    """
    classes = dataset_classes(train_info)
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
    cfg.MASKINIT.CLASS_NAMES = list(classes)
    cfg.MASKINIT.CLASS_IDS = list(classes.values())
    formats = {train_info.mask_format} | ({val_info.mask_format} if val_info is not None else set())
    cfg.INPUT.MASK_FORMAT = "bitmask" if "bitmask" in formats else "polygon"
    if was_frozen:
        cfg.freeze()
    return cfg
