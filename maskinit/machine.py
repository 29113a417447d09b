"""What this machine can run: the default scale for its device, and whether a run fits in memory.

A run that does not fit is otherwise found out by the kernel's out-of-memory killer minutes in,
with no message at all. The estimate of one training process's peak memory is fitted to measured
peaks (`benchmarks/memory.py`: CPU, peak resident memory of 3 training iterations of a fresh
process; `benchmarks/results/memory.json`):

    peak ~ BASE(backbone)
           + images per process x (PER_ROI x ROIs x box-head width x heads + PER_PIXEL(backbone) x pixels)

where `heads` is 1 at Detectron2's pools (7x7 box, 14x14 mask) and follows the mask pool's area for
the mask head's share of the per-RoI activations, counted, not fitted: a third for the box head (four convs on
7x7), two thirds for the mask head (a quarter of the RoIs, four convs on 14x14 and a 28x28 deconvolution),
so 0.5 at a 7x7 mask pool (the `tiny` preset's; the measured peak fell with it, 96 RoIs against 64 before);
pixels are those of the largest input the resize rule can give (shorter side at the largest
`INPUT.MIN_SIZE_TRAIN`, longer side at `INPUT.MAX_SIZE_TRAIN`; the square under LSJ), padded to 32.
Two terms are counted, not measured: the weight EMA's copy (`MASKINIT.EMA`, 4 bytes per parameter) and
Copy-Paste's bitmasks (`MASKINIT.AUGMENT.COPY_PASTE`, one byte per pixel for each pasted and each
target instance, bounded by twice MAX_INSTANCES per image).
Measured: ResNet-18/FPN-64 (the `tiny` preset) and ResNet-50/FPN-256 (`r50-fpn`), within 4 % of
every measured point. Other depths and widths are scaled (stated, not measured). On CUDA the same
activation terms are compared with the GPU's free memory, plus 0.5 GiB for the CUDA context (not
measured on a GPU here).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import MaskinitError

GiB = 2**30
# Process baseline by ResNet depth: torch, Detectron2, the model, its gradients and AdamW state
# (measured 0.99 GiB for R18-FPN64 and 1.83 GiB for R50-FPN256; 34, 101, 152 scaled by parameters).
BASE_BYTES = {18: 0.99 * GiB, 34: 1.15 * GiB, 50: 1.83 * GiB, 101: 2.4 * GiB, 152: 2.85 * GiB}
# Bytes per input pixel of one image in a training step (measured 752 and 1211 for the two presets).
PER_PIXEL = {18: 752.0, 34: 900.0, 50: 1211.0, 101: 1700.0, 152: 2200.0}
# Bytes per sampled ROI per box-head channel (box and mask heads; measured 3311 on R50-FPN: 512 ROIs x 256).
PER_ROI_CHANNEL = 3311.0
# Parameters of the Mask R-CNN FPN model by ResNet depth (counted: 12.6 M for the tiny preset's R18-FPN64,
# 45.4 M for r50-fpn; 34, 101 and 152 by the backbones' difference): the weight EMA keeps one fp32 copy.
PARAMS = {18: 12.6e6, 34: 22.7e6, 50: 45.4e6, 101: 64.4e6, 152: 80.0e6}
# The CUDA context and cuDNN workspaces on a GPU, in place of the CPU process baseline's libraries.
CUDA_CONTEXT = 0.5 * GiB
# A run is refused above the memory available; warned about above this share of it.
WARN_SHARE = 0.8
# Seconds of one training step (4 images, one thread, the tiny preset's ResNet-18 FPN, forward, backward and
# AdamW step) as FIXED + PER_PIXEL x padded pixels per image + PER_ROI x sampled RoIs per image
# + PER_MASK_ROI x foreground RoIs per image x (mask pool / 7)^2 at the preset's 64-channel mask head, fitted to
# 12 measured steps from 96x128 to 384x384 pixels, 96 to 336 RoIs and 7x7 or 14x14 mask pools
# (benchmarks/step_cost.py, CPU time of the process, results/step-cost.json; every point within 18 %, 11 of 12
# within 10 %). A mask head w times as wide as the FPN (whose width the presets' heads have) costs PER_MASK_ROI x
# (MASK_WIDTH_SQUARE x w^2 + (1 - MASK_WIDTH_SQUARE) x w) per RoI and bin: its convs grow with w^2, its norms,
# activations and RoIAlign with w (a quarter and three quarters, fitted to 18 steps with 32- and 64-channel
# heads on the 64-channel FPN, results/step-cost-mask-width.json).
# Used as a ratio between two configs on the same data, for any model (the tiny preset's shares: fixed 34 %,
# pixels 30 %, RoIs 25 %, mask head 11 %).
STEP_COST = {"fixed": 0.194, "per_pixel": 1.068e-5, "per_roi": 1.480e-3, "per_mask_roi": 2.682e-3}
MASK_WIDTH_SQUARE = 0.25


def default_preset(device: str | None = None) -> tuple[str, str]:
    """The preset a run given no `--preset`, `--config` or `--recipe` uses here, and why.

    On a CUDA GPU the full scale (`r50-fpn`); on a CPU, or with `--device cpu`, the CPU scale
    (`tiny`), since a ResNet-50 at 800-1333 pixels and batch 16 needs about 30 GiB and days there.
    """
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            return "r50-fpn", "a CUDA GPU is here: preset r50-fpn (ResNet-50 FPN); --preset tiny is the CPU scale"
    why = "--device cpu" if device == "cpu" else "no CUDA GPU here"
    return (
        "tiny",
        f"{why}: preset tiny, the CPU scale (ResNet-18 FPN, small inputs); "
        "on a GPU the default is r50-fpn (--preset chooses)",
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training process, the bytes available to it, and what the estimate assumed."""

    peak_bytes: float
    available_bytes: float | None
    device: str
    images_per_process: int
    input_shape: tuple[int, int]
    per_image_bytes: float

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.peak_bytes <= self.available_bytes

    @property
    def tight(self) -> bool:
        return self.available_bytes is not None and self.peak_bytes > WARN_SHARE * self.available_bytes

    def describe(self) -> str:
        height, width = self.input_shape
        available = "unknown" if self.available_bytes is None else f"{self.available_bytes / GiB:.1f} GiB available"
        where = "GPU memory" if self.device.startswith("cuda") else "RAM"
        return (
            f"estimated peak {self.peak_bytes / GiB:.1f} GiB of {where} per process "
            f"({self.images_per_process} images of up to {height}x{width} pixels), {available}"
        )


def largest_input(cfg) -> tuple[int, int]:
    """(height, width) of the largest training input the resize rule can give, padded to 32."""
    if cfg.MASKINIT.AUGMENT.NAME == "lsj":
        short = long = cfg.MASKINIT.AUGMENT.LSJ_IMAGE_SIZE
    else:
        sizes = cfg.INPUT.MIN_SIZE_TRAIN
        short = max(sizes) if isinstance(sizes, (list, tuple)) else int(sizes)
        long = max(short, cfg.INPUT.MAX_SIZE_TRAIN)
    return tuple(int(math.ceil(side / 32) * 32) for side in (short, long))


def _nearest(table: dict, depth: int) -> float:
    return table.get(depth) or table[min(table, key=lambda known: abs(known - depth))]


def per_image_bytes(cfg) -> float:
    """Activation bytes of one training image: pixel-proportional (backbone, FPN, RPN) plus ROI heads."""
    height, width = largest_input(cfg)
    resnets = cfg.MODEL.RESNETS
    widen = resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP / 64
    measured_fpn = 64 if resnets.DEPTH < 50 else 256
    # about half of a step's pixel-proportional activations sit in the backbone, half in the FPN and RPN
    scale = 0.5 * widen + 0.5 * cfg.MODEL.FPN.OUT_CHANNELS / measured_fpn
    pixels = _nearest(PER_PIXEL, resnets.DEPTH) * scale * height * width
    rois = (
        PER_ROI_CHANNEL
        * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
        * max(cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, 64)
        * roi_heads_share(cfg)
    )
    return pixels + rois + copy_paste_bytes(cfg)


def step_seconds(pixels: float, rois: float, mask_rois: float, mask_pool: int, mask_width: float = 1.0) -> float:
    """Estimated seconds of one training step (STEP_COST): `pixels` padded input pixels, `rois` sampled RoIs
    and `mask_rois` foreground RoIs per image, the mask head's RoIAlign at `mask_pool` and its convs
    `mask_width` times as wide as the FPN."""
    cost = STEP_COST
    per_bin = cost["per_mask_roi"] * (MASK_WIDTH_SQUARE * mask_width**2 + (1 - MASK_WIDTH_SQUARE) * mask_width)
    mask = per_bin * mask_rois * (mask_pool / 7) ** 2
    return cost["fixed"] + cost["per_pixel"] * pixels + cost["per_roi"] * rois + mask


def roi_heads_share(cfg) -> float:
    """The per-RoI activations against Detectron2's 14x14 mask pool: a third box head, two thirds mask head,
    the mask head's share scaled with its pool's area (0.5 at 7x7; see the module's docstring) and with its
    width against the box head's (the same in every preset)."""
    width = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM / max(cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, 64)
    return 1 / 3 + 2 / 3 * (cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION / 14) ** 2 * width


def copy_paste_bytes(cfg) -> float:
    """Copy-Paste's bitmasks of one training image (0 when off): a byte per pixel for each pasted
    instance and each target instance, bounded by twice MASKINIT.AUGMENT.COPY_PASTE.MAX_INSTANCES."""
    paste = cfg.MASKINIT.AUGMENT.COPY_PASTE
    if paste.PROB <= 0:
        return 0.0
    height, width = largest_input(cfg)
    return 2.0 * paste.MAX_INSTANCES * height * width


def ema_bytes(cfg) -> float:
    """The weight EMA's fp32 copy of the model (0 when off)."""
    if not cfg.MASKINIT.EMA.ENABLED:
        return 0.0
    resnets = cfg.MODEL.RESNETS
    widen = resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP / 64
    return 4.0 * _nearest(PARAMS, resnets.DEPTH) * widen


def available_memory(device: str) -> float | None:
    """Bytes a new process may use: free memory of its GPU on CUDA, MemAvailable (else free pages) on CPU.

    A process's GPU is the device's index when it names one, else its local rank (`LOCAL_RANK` under
    torchrun, the process's place on its machine): GPU `LOCAL_RANK` among those CUDA_VISIBLE_DEVICES shows."""
    if device.startswith("cuda"):
        import torch

        from .ranks import local_rank

        index = int(device.split(":")[1]) if ":" in device else local_rank() % max(1, torch.cuda.device_count())
        return float(torch.cuda.mem_get_info(index)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_memory(cfg, processes_here: int = 1, world: int | None = None) -> MemoryEstimate:
    """The estimate for one training process of `cfg`, `processes_here` of them sharing this machine and
    `world` in all (default `processes_here`): each process holds SOLVER.IMS_PER_BATCH / `world` images."""
    here = max(1, processes_here)
    world = max(1, world or here)
    images = max(1, cfg.SOLVER.IMS_PER_BATCH // world)
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    image = per_image_bytes(cfg)
    base = (CUDA_CONTEXT if cuda else _nearest(BASE_BYTES, cfg.MODEL.RESNETS.DEPTH)) + ema_bytes(cfg)
    available = available_memory(cfg.MODEL.DEVICE)
    if available is not None and not cuda:
        available /= here  # processes on one machine share its RAM; each GPU has its own memory
    return MemoryEstimate(base + images * image, available, cfg.MODEL.DEVICE, images, largest_input(cfg), image)


def check_memory(cfg, processes_here: int = 1, world: int | None = None) -> MemoryEstimate:
    """The estimate; a `MaskinitError` naming what to change when it exceeds the memory available."""
    world = max(1, world or processes_here)
    estimate = estimate_memory(cfg, processes_here, world)
    if estimate.fits:
        return estimate
    base = estimate.peak_bytes - estimate.images_per_process * estimate.per_image_bytes
    fitting = int((estimate.available_bytes - base) // estimate.per_image_bytes)
    changes = []
    if fitting >= 1:
        changes.append(f"--ims-per-batch {fitting * world}")
    if cfg.MODEL.RESNETS.DEPTH >= 50 and not cfg.MODEL.DEVICE.startswith("cuda"):
        changes.append("--preset tiny (the CPU scale)")
    changes.append(
        f"smaller inputs (INPUT.MIN_SIZE_TRAIN / INPUT.MAX_SIZE_TRAIN, now up to {max(estimate.input_shape)} pixels)"
    )
    raise MaskinitError(
        f"this run would not fit in memory: {estimate.describe()}; use {', or '.join(changes)} "
        "(MASKINIT.MEMORY_CHECK False skips this check)"
    )
