"""A run's length from what the user has: iterations (`--max-iter`), passes over the training images
(`--epochs`), or wall-clock time on this machine (`--time 2h`: the iterations that fit at the seconds per
iteration measured here, on the fitted config, before the run starts, and re-planned as the run goes
from its own steps: `time_budget`).

`run_length` returns the config with `SOLVER.MAX_ITER` set and the schedule (LR steps, warmup, the weight
average's window) rescaled to it as `--max-iter` rescales it, and the lines saying how it was chosen.
"""

from __future__ import annotations

import gc
import logging
import math
import re
import time

from .errors import MaskinitError

logger = logging.getLogger("maskinit")

# The time probe: iterations run before timing (the first ones build caches and allocate), then timed.
PROBE_WARMUP = 3
PROBE_ITERATIONS = 10
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|s|)")


def parse_duration(text: str) -> float:
    """Seconds in `text`: `90` (seconds), `45s`, `30m` or `30min`, `2h`, `1h30m`, `1.5h`, `2d`."""
    cleaned = text.strip().lower().replace(" ", "")
    pos, total, parts = 0, 0.0, 0
    while pos < len(cleaned):
        match = _DURATION.match(cleaned, pos)
        if not match or match.end() == pos:
            raise MaskinitError(f"--time {text!r} is not a duration (e.g. 90, 45s, 30m, 2h, 1h30m)")
        if not match.group(2) and (parts or match.end() < len(cleaned)):  # a bare number is seconds, alone
            raise MaskinitError(f"--time {text!r} is not a duration (e.g. 90, 45s, 30m, 2h, 1h30m)")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos, parts = match.end(), parts + 1
    if not parts or total <= 0 or not math.isfinite(total):
        raise MaskinitError(f"--time must be a positive duration (e.g. 90, 45s, 30m, 2h, 1h30m), got {text!r}")
    return total


def describe_duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def training_images(cfg) -> int:
    """Images one epoch visits: the registered training sets' records as Detectron2's loader keeps them
    (images with no usable annotation dropped when DATALOADER.FILTER_EMPTY_ANNOTATIONS)."""
    from detectron2.data import get_detection_dataset_dicts

    return len(get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS))


def measure_seconds_per_iter(cfg, iterations: int = PROBE_ITERATIONS, warmup: int = PROBE_WARMUP) -> float:
    """Wall seconds per training iteration of `cfg` in this process: the model (its base init: no
    data-dependent pass, which does not change a step's time), optimizer and training loader the run will
    use, `warmup` iterations, then `iterations` timed. Nothing is written; the model is freed afterwards."""
    import torch
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import EventStorage

    from .trainer import Trainer, untouched_random_streams

    with untouched_random_streams():
        model = Trainer.build_model(cfg, data_dependent=False)
        optimizer = Trainer.build_optimizer(cfg, model)
        loader = Trainer.build_train_loader(cfg)
        stepper = SimpleTrainer(model, loader, optimizer)
        try:
            with EventStorage(0):
                for step in range(warmup + iterations):
                    if step == warmup:
                        if cfg.MODEL.DEVICE.startswith("cuda"):
                            torch.cuda.synchronize()
                        started = time.perf_counter()
                    stepper.iter = step
                    stepper.run_step()
            if cfg.MODEL.DEVICE.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / iterations
        except (RuntimeError, FloatingPointError) as error:
            raise MaskinitError(f"--time: the timing run failed: {error}") from error
        finally:
            del stepper, loader, optimizer, model
            gc.collect()
    return seconds


def run_length(
    cfg,
    epochs: float | None = None,
    seconds: float | None = None,
    explicit_keys=frozenset(),
    world_size: int = 1,
    seconds_per_iter: float | None = None,
):
    """(`cfg` with SOLVER.MAX_ITER from `epochs` or `seconds`, the lines saying how): an epoch is the
    training images over SOLVER.IMS_PER_BATCH; a time budget is divided by the seconds per iteration
    measured here (`seconds_per_iter` when already known). The LR steps, warmup and weight-average window
    rescale with the new length unless set explicitly. `cfg` is not changed."""
    from .run_options import kept_schedule, rescale_to_max_iter
    from .time_budget import REPLAN_SHARE

    if epochs is None and seconds is None:
        return cfg, []
    batch = cfg.SOLVER.IMS_PER_BATCH
    images = training_images(cfg)
    if images < 1:
        raise MaskinitError("--epochs/--time: the training set has no image with a usable annotation")
    if epochs is not None:
        if not (epochs > 0 and math.isfinite(epochs)):
            raise MaskinitError(f"--epochs must be a positive number, got {epochs}")
        iterations = max(1, math.ceil(epochs * images / batch))
        line = f"--epochs {epochs:g}: {iterations} iterations ({images} training images, {batch} per iteration)"
    else:
        if seconds_per_iter is None:
            probe = cfg.clone()
            probe.defrost()
            probe.SOLVER.IMS_PER_BATCH = max(1, batch // max(1, world_size))
            seconds_per_iter = measure_seconds_per_iter(probe)
        iterations = max(1, int(seconds / seconds_per_iter))
        line = (
            f"--time {describe_duration(seconds)}: {iterations} iterations at {seconds_per_iter:.3f} s/iter "
            "measured here "
            f"over {PROBE_ITERATIONS} iterations ({iterations * batch / images:.1f} epochs of {images} images), "
            f"re-planned every {REPLAN_SHARE:.0%} of them from the run's own steps; evaluations come on top"
        )
    result = cfg.clone()
    result.defrost()
    rescale_to_max_iter(result, iterations, **kept_schedule(explicit_keys))
    return result, [line]

