"""Which data a run uses: COCO files, a dataset Detectron2 registers by name, or the embedded default.

`resolve_data` runs once in the launching process (it may generate the default set and fills the
config from the data); `register_from_options` repeats the registration in each training process,
since Detectron2's catalogs live per process.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from ..errors import MaskinitError
from .coco import apply_dataset_to_cfg, register_coco_dataset, registered_dataset

TRAIN_NAME = "maskinit_train"
VAL_NAME = "maskinit_val"


def use_embedded_default(data) -> None:
    """Point the options at the embedded synthetic set, generating it on first use."""
    from .synthetic import ensure_synthetic_dataset

    dataset = ensure_synthetic_dataset()
    data.train_json, data.train_images = str(dataset.train.json_file), str(dataset.train.image_root)
    data.val_json, data.val_images = str(dataset.val.json_file), str(dataset.val.image_root)


def register_from_options(data, cfg: CfgNode | None = None) -> tuple:
    """Register the run's datasets in this process; returns (train info or name, val info or name)."""
    if data.dataset:
        train = registered_dataset(data.dataset)
        val = registered_dataset(data.val_dataset) if data.val_dataset else None
        return train, val
    for flag, value in (("--train-images", data.train_images),):
        if data.train_json and not value:
            raise MaskinitError(f"--train-json needs {flag}")
    if data.val_json and not data.val_images:
        raise MaskinitError("--val-json needs --val-images")
    train = register_coco_dataset(TRAIN_NAME, data.train_json, data.train_images) if data.train_json else None
    val = register_coco_dataset(VAL_NAME, data.val_json, data.val_images) if data.val_json else None
    return train, val


def resolve_data(cfg: CfgNode, data) -> CfgNode:
    """Register the data and set DATASETS, NUM_CLASSES and MASK_FORMAT from it."""
    if data.dataset and (data.train_json or data.val_json):
        raise MaskinitError("--dataset and --train-json/--val-json are exclusive: choose one source")
    if not data.dataset and not data.train_json:
        if data.val_json:
            raise MaskinitError("--val-json without --train-json: give both, or neither for the embedded default")
        use_embedded_default(data)
        data.is_default = True
    train, val = register_from_options(data, cfg)
    cfg = cfg.clone()
    cfg.defrost()
    if data.dataset:
        cfg.DATASETS.TRAIN = (data.dataset,)
        cfg.DATASETS.TEST = (data.val_dataset,) if data.val_dataset else ()
        classes = MetadataCatalog.get(data.dataset).get("thing_classes")
        if classes:
            cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)
        return cfg
    apply_dataset_to_cfg(cfg, train, val)
    return cfg
