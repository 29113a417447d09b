"""Datasets: the embedded synthetic default set and COCO files registered for Detectron2."""

from .coco import (
    CocoSummary,
    DatasetInfo,
    apply_dataset_to_cfg,
    inspect_coco,
    register_coco_dataset,
    register_synthetic_dataset,
    registered_dataset,
)
from .synthetic import CLASS_NAMES, CocoFiles, SyntheticDataset, ensure_synthetic_dataset, generate_coco_dataset

__all__ = [
    "CLASS_NAMES",
    "CocoFiles",
    "CocoSummary",
    "DatasetInfo",
    "SyntheticDataset",
    "apply_dataset_to_cfg",
    "ensure_synthetic_dataset",
    "generate_coco_dataset",
    "inspect_coco",
    "register_coco_dataset",
    "register_synthetic_dataset",
    "registered_dataset",
]
