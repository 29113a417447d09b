"""Which device and how many processes a run may use, checked before anything starts."""

from __future__ import annotations

import torch
from detectron2.config import CfgNode

from .errors import MaskinitError


def set_device(cfg: CfgNode, device: str | None, num_gpus: int) -> None:
    """Apply `--device` (cpu or cuda) to the config and refuse CUDA or GPU counts this machine lacks."""
    if device:
        if device not in ("cpu", "cuda"):
            raise MaskinitError(f"--device must be cpu or cuda, got {device!r}")
        cfg.MODEL.DEVICE = device
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise MaskinitError("--device cuda but CUDA is not available here (use --device cpu)")
    if num_gpus < 1:
        raise MaskinitError(f"--num-gpus must be at least 1, got {num_gpus}")
    if cuda and num_gpus > torch.cuda.device_count():
        raise MaskinitError(f"--num-gpus {num_gpus} but only {torch.cuda.device_count()} GPUs are present")
