"""Which data a run uses: COCO files, a dataset Detectron2 registers by name, or the embedded default.

`validate_data` and `resolve_data` run once in the launching process (the first may clean the data,
the second may generate the default set and fills the config from the data); each returns the
data options to use from then on, a new object. `register_from_options` repeats the registration
in each training process, since Detectron2's catalogs live per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from detectron2.config import CfgNode

from ..errors import MaskinitError
from .coco import (
    apply_dataset_to_cfg,
    dataset_as_trained,
    dataset_classes,
    model_classes,
    register_coco_dataset,
    registered_dataset,
)

TRAIN_NAME = "maskinit_train"
VAL_NAME = "maskinit_val"


def with_paths(data, **paths):
    """A copy of the data options `data` (a `DataOptions` or any object with its attributes) with
    `paths` set."""
    from .split import with_paths as copied

    return copied(data, **paths)


def use_embedded_default(data):
    """`data` pointed at the embedded synthetic set (a copy), generating the set on first use."""
    from .synthetic import ensure_synthetic_dataset

    dataset = ensure_synthetic_dataset()
    return with_paths(data, train_json=str(dataset.train.json_file), train_images=str(dataset.train.image_root),
                      val_json=str(dataset.val.json_file), val_images=str(dataset.val.image_root))


def register_from_options(data, cfg: CfgNode | None = None) -> tuple:
    """Register the run's datasets in this process; returns (train info, val info), None where absent.

    The validation set's categories are matched by name to the training set's (or, with no
    training data, to the classes stored in `cfg`, see `model_classes`), so that a validation file
    with other ids for the same names is evaluated right.
    """
    if data.dataset:
        train = registered_dataset(data.dataset)
        val = registered_dataset(data.val_dataset) if data.val_dataset else None
        return train, (dataset_as_trained(val, dataset_classes(train)) if val is not None else None)
    if data.train_json and not data.train_images:
        raise MaskinitError("--train-json needs --train-images")
    if data.val_json and not data.val_images:
        raise MaskinitError("--val-json needs --val-images")
    train = register_coco_dataset(TRAIN_NAME, data.train_json, data.train_images) if data.train_json else None
    if train is not None:
        classes = dataset_classes(train)
    else:
        classes = model_classes(cfg) if cfg is not None else {}
    val = None
    if data.val_json:
        val = register_coco_dataset(VAL_NAME, data.val_json, data.val_images, classes=classes or None)
    return train, val


def resolve_data(cfg: CfgNode, data) -> tuple[CfgNode, Any]:
    """Register the data and set DATASETS, NUM_CLASSES, MASK_FORMAT and the training classes
    (MASKINIT.CLASS_NAMES/CLASS_IDS) from it; returns a new config and the data options the training
    processes register (the embedded default set's paths when `data` names no data)."""
    if data.dataset and (data.train_json or data.val_json):
        raise MaskinitError("--dataset and --train-json/--val-json are exclusive: choose one source")
    if not data.dataset and not data.train_json:
        if data.val_json:
            raise MaskinitError("--val-json without --train-json: give both, or neither for the embedded default")
        data = use_embedded_default(data)
    train, val = register_from_options(data, cfg)
    return apply_dataset_to_cfg(cfg.clone(), train, val), data


class ValidatedData(NamedTuple):
    """What `validate_data` found: the data options to register from now on, and the log lines."""

    data: Any
    notes: list[str]


def validate_data(data, skip_bad: bool, *, check_images: bool = True, clean_dir=None) -> ValidatedData:
    """Check the run's COCO files (train and val) before they are registered.

    Fatal problems raise `MaskinitError`; fixable ones too, unless `skip_bad`: then the bad
    annotations and images are left out of a cleaned copy of the JSON (under `clean_dir`, default
    `<maskinit cache>/clean/`), and the returned data options point at it (`data` itself is not
    changed). Passed to every training process, they make each one register the cleaned copy, and
    the COCO evaluator read its ground truth from it too. Registered names (`--dataset`) and the
    embedded default set are not checked.
    """
    from .convert import resolve_source
    from .report import enforce_data_policy
    from .synthetic import default_cache_root
    from .validate import load_and_check_coco, write_clean_copy

    data, lines = resolve_source(data)  # a --data source: its COCO files (converted once, cached)
    if getattr(data, "dataset", None):
        return ValidatedData(data, lines)  # a registered name: `resolve_data` refuses it together with COCO files
    for split in ("train", "val"):
        json_file, image_root = getattr(data, f"{split}_json", None), getattr(data, f"{split}_images", None)
        if not json_file:
            continue
        if not image_root:
            raise MaskinitError(f"--{split}-json needs --{split}-images")
        coco, report = load_and_check_coco(json_file, image_root, check_images=check_images)
        lines += enforce_data_policy(report, skip_bad)
        if report.fixable:  # only reached with skip_bad: the policy raised otherwise
            folder = clean_dir if clean_dir is not None else default_cache_root() / "clean"
            cleaned = write_clean_copy(coco, report, folder, Path(json_file).stem)
            data = with_paths(data, **{f"{split}_json": str(cleaned)})
            lines.append(f"{json_file}: registering the cleaned copy {cleaned}")
    return ValidatedData(data, lines)


# The data options recorded in a run's config (cfg.MASKINIT.DATA), key by key.
RECORDED = {"SOURCE": "source", "FORMAT": "format", "VAL_FRACTION": "val_fraction", "SPLIT_SEED": "split_seed",
            "TRAIN_JSON": "train_json", "TRAIN_IMAGES": "train_images", "VAL_JSON": "val_json",
            "VAL_IMAGES": "val_images", "DATASET": "dataset", "VAL_DATASET": "val_dataset"}


def record_data(cfg: CfgNode, data) -> CfgNode:
    """A copy of `cfg` saying in MASKINIT.DATA which data the run used (`data`: the data options, a
    --data source already resolved to its COCO files); file paths are made absolute."""
    cfg = cfg.clone()
    cfg.defrost()
    for key, name in RECORDED.items():
        value = getattr(data, name, None)
        if name.endswith(("_json", "_images")) or name == "source":
            value = str(Path(value).resolve()) if value else ""
        elif name == "val_fraction":
            value = float(value or 0.0)
        elif name == "split_seed":
            value = int(value or 0)
        else:
            value = value or ""
        cfg.MASKINIT.DATA[key] = value
    return cfg


def recorded_data(cfg: CfgNode):
    """The data options a run's config records (`record_data`), to run on the same data again: a --data
    source with its format and split (read again: the same split), else the COCO files or registered
    names; None when it records none (the embedded default set, or a config written before the record)."""
    from ..run_options import DataOptions

    recorded = cfg.MASKINIT.get("DATA")
    if recorded is None:
        return None
    if recorded.SOURCE:
        return DataOptions(source=recorded.SOURCE, format=recorded.FORMAT or None,
                           val_fraction=float(recorded.VAL_FRACTION), split_seed=int(recorded.SPLIT_SEED))
    paths = {name: recorded[key] or None for key, name in RECORDED.items()
             if name in ("train_json", "train_images", "val_json", "val_images", "dataset", "val_dataset")}
    return DataOptions(**paths) if any(paths.values()) else None


def evaluation_data(data, where: str, whole_if_one_split: bool = False):
    """The data options `maskinit eval` evaluates on, from a run's recorded data options (or a --data
    source given to eval, `whole_if_one_split`: a source not split is evaluated whole): the validation
    set, as a val_json or a registered name."""
    from ..run_options import DataOptions

    if data.val_json:
        return DataOptions(val_json=data.val_json, val_images=data.val_images)
    if data.val_dataset:
        return DataOptions(dataset=data.val_dataset)
    if data.source and whole_if_one_split:
        return DataOptions(val_json=data.train_json, val_images=data.train_images)
    if data.dataset and not data.train_json and not data.source and not whole_if_one_split:
        raise MaskinitError(
            f"{where}: the run validated on no dataset: give the data to evaluate on (--data, --val-json, --dataset)"
        )
    if data.dataset:
        return DataOptions(dataset=data.dataset)
    raise MaskinitError(
        f"{where}: the run held no validation data: give the data to evaluate on (--data, --val-json, --dataset)"
    )
