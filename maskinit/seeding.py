"""Seeded random streams for a pass that must not disturb the caller's: python, numpy, torch's CPU generator
and one CUDA device seeded inside, every state restored after."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str = "cpu"):
    """Python, numpy, torch CPU (and `device`'s CUDA) RNGs seeded with `seed` inside, restored after."""
    device = torch.device(device)
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            reseed(seed, device)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def reseed(seed: int, device: torch.device) -> None:
    """Seed python, numpy, torch's CPU generator and `device`'s (not `torch.manual_seed`, which seeds every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
