"""Run a model written by `maskinit export` without Detectron2: numpy with onnxruntime (ONNX) or torch
(TorchScript). `runner.py` is the whole of it and imports nothing else of maskinit: it can be copied
next to an exported model and used where maskinit is not installed."""

from .runner import (
    DeployError,
    Detections,
    ExportedModel,
    is_exported_model,
    load,
    model_format,
    paste_masks,
    postprocess,
    read_metadata,
    resize_linear,
    resize_pillow,
    resize_pillow_numpy,
    resize_shape,
)

__all__ = ["DeployError", "Detections", "ExportedModel", "is_exported_model", "load", "model_format", "paste_masks",
           "postprocess", "read_metadata", "resize_linear", "resize_pillow", "resize_pillow_numpy",
           "resize_shape"]
