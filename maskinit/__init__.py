"""maskinit: train Mask R-CNN from scratch on Detectron2.

The public API is what the CLI calls: `load_config`, `export_config`, `build_model` and, for
training, `train` and `evaluate`. Heavy imports (torch, detectron2) happen on first use.
"""

from .errors import MaskinitError

__version__ = "0.2.0"
__all__ = ["MaskinitError", "__version__", "load_config", "export_config", "build_model", "add_maskinit_config"]

_LAZY = {
    "load_config": "config",
    "export_config": "config",
    "add_maskinit_config": "config",
    "build_model": "model",
    "train": "train",
    "evaluate": "evaluation",
    "register_initializer": "initializers",
    "register_norm": "norms",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'maskinit' has no attribute {name!r}")
