"""Datasets: the embedded synthetic default set and COCO files registered for Detectron2.

The names below load their module on first use: `maskinit.data.validate` (what `check-data` needs)
must not pull in `.coco`, whose Detectron2 imports bring torch.
"""

_LAZY = {
    "CLASS_NAMES": "synthetic",
    "CocoFiles": "synthetic",
    "CocoSummary": "coco",
    "DatasetInfo": "coco",
    "SyntheticDataset": "synthetic",
    "apply_dataset_to_cfg": "coco",
    "ensure_synthetic_dataset": "synthetic",
    "generate_coco_dataset": "synthetic",
    "inspect_coco": "coco",
    "register_coco_dataset": "coco",
    "register_synthetic_dataset": "coco",
    "registered_dataset": "coco",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'maskinit.data' has no attribute {name!r}")
