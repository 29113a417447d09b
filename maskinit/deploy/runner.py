"""Run a model written by `maskinit export` on images, with numpy and onnxruntime (an `.onnx` file) or
torch and torchvision (a TorchScript file) only: no Detectron2, nothing else of maskinit. This file
stands alone; copy it next to an exported model to use it where maskinit is not installed.

    from runner import load            # or: from maskinit.deploy import load
    model = load("model.onnx")
    found = model(image)               # image: (H, W, C) or (H, W) numpy array, as read from the file
    found.boxes, found.scores, found.classes, found.masks, model.class_names(found.classes)

What it does is what Detectron2's predict path does around the exported graph, step for step:

1. the image is resized as Detectron2's `ResizeShortestEdge` at test time resizes it: the shorter side
   to `min_size`, the longer at most `max_size` (`resize_shape`), bilinear; 8-bit images of 1 or 3
   channels through Pillow (`resize_pillow`; as Detectron2's `ResizeTransform` does; without Pillow, a
   numpy copy of its algorithm), every other kind as `torch.nn.functional.interpolate` does
   (`resize_linear`, numpy);
2. the graph takes it as float32 (C, H, W) in the file's own units: it subtracts the pixel mean and
   divides by the pixel std itself, and returns boxes, scores, classes and mask probabilities (M x M
   within each box) in the resized image's pixels;
3. the boxes are scaled back to the image and clipped, empty ones dropped, and each mask pasted into
   the image as Detectron2's `paste_masks_in_image` pastes it (bilinear `grid_sample`, threshold 0.5).

The model's settings travel inside the file (ONNX `metadata_props`, TorchScript extra file
`maskinit.json`, key/name `maskinit`) and in the JSON written beside it: input channels and their order,
pixel mean/std, the size rule, class names and dataset ids, the score threshold the graph applies.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METADATA_KEY = "maskinit"  # ONNX metadata_props key; TorchScript extra file "maskinit.json"
METADATA_FILE = METADATA_KEY + ".json"
EXPORT_VERSION = 1
INPUT_NAMES = ("image", "score_threshold")
OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs")
_PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling (Resample.c)


class DeployError(ValueError):
    """A model file or an image the runner cannot use; the message names it."""


# ---------------------------------------------------------------------------------------------
# Files


def model_format(path: str | Path) -> str:
    """"onnx" or "torchscript" for a file `maskinit export` wrote; a `DeployError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"exported model {path} not found")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile) as error:
            raise DeployError(f"cannot read {path}: {error}") from error
        if any(name.endswith("/extra/" + METADATA_FILE) for name in names):
            return "torchscript"
        raise DeployError(f"{path} is a zip archive without {METADATA_FILE}: not a model written by maskinit export "
                          "(a training checkpoint?)")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    raise DeployError(f"{path} is not a model written by maskinit export (an .onnx file or a TorchScript archive)")


def is_exported_model(path: str | Path) -> bool:
    """Whether `path` is a file `maskinit export` wrote (by its content; an ONNX file by its suffix)."""
    try:
        model_format(path)
    except DeployError:
        return False
    return True


def read_metadata(path: str | Path) -> dict:
    """The settings stored in an exported model (the same dict as the JSON written beside it)."""
    path = Path(path)
    if model_format(path) == "torchscript":
        return _torchscript_metadata(path)
    session = _onnx_session(path, threads=None, optimize=False)
    return _parse_metadata(path, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))


def _torchscript_metadata(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        name = next(name for name in archive.namelist() if name.endswith("/extra/" + METADATA_FILE))
        return _parse_metadata(path, archive.read(name).decode())


def _parse_metadata(path: Path, text: str | None) -> dict:
    if text is None:
        raise DeployError(f"{path} holds no {METADATA_KEY} metadata: not a model written by maskinit export")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise DeployError(f"{path}: its {METADATA_KEY} metadata is not JSON ({error})") from error
    if metadata.get("export_version") != EXPORT_VERSION:
        raise DeployError(
            f"{path}: export version {metadata.get('export_version')!r}, this runner reads {EXPORT_VERSION}"
        )
    return metadata


def _onnx_session(path: Path, threads: int | None, optimize: bool = True):
    try:
        import onnxruntime
    except ImportError as error:
        raise DeployError(f"{path} is an ONNX model: install onnxruntime to run it") from error
    options = onnxruntime.SessionOptions()
    if not optimize:  # only the metadata is read
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for bad files and missing ops
        text = " ".join(str(error).split())
        raise DeployError(f"onnxruntime {onnxruntime.__version__} cannot load {path}: {text}") from error


# ---------------------------------------------------------------------------------------------
# Resizing, as Detectron2's test-time ResizeShortestEdge


def resize_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(new height, new width): `ResizeShortestEdge.get_output_shape`; no resize when min_size is 0."""
    if min_size == 0:
        return height, width
    size = min_size * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _pillow_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear filter (`precompute_coeffs` and `normalize_coeffs_8bpc`): each output pixel's
    first input pixel and its fixed-point weights (out_size, ksize), zeros past its window."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # C's (int) truncates toward zero
    last = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    count = last - first
    taps = np.arange(ksize)
    positions = (first[:, None] + taps[None, :]).astype(np.float64)
    weights = np.maximum(1.0 - np.abs((positions - centers[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    weights[taps[None, :] >= count[:, None]] = 0.0
    total = np.cumsum(weights, axis=1)[:, -1:]  # summed in order, as Pillow sums
    weights = np.where(total != 0.0, weights / np.where(total != 0.0, total, 1.0), weights)
    fixed = np.floor(0.5 + weights * (1 << _PIL_PRECISION_BITS)).astype(np.int64)
    return first, fixed


def _pillow_pass(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    in_size = image.shape[axis]
    first, fixed = _pillow_coefficients(in_size, out_size)
    moved = np.moveaxis(image, axis, 0).astype(np.int64)
    total = np.full((out_size, *moved.shape[1:]), 1 << (_PIL_PRECISION_BITS - 1), np.int64)
    for tap in range(fixed.shape[1]):
        index = np.minimum(first + tap, in_size - 1)
        weight = fixed[:, tap].reshape(-1, *([1] * (moved.ndim - 1)))
        total += moved[index] * weight
    result = np.clip(total >> _PIL_PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(result, 0, axis)


def resize_pillow(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An 8-bit (H, W, C) image of 1 or 3 channels resized as Detectron2's `ResizeTransform` resizes it:
    with Pillow's `Image.resize(..., BILINEAR)` when Pillow is installed, else with `resize_pillow_numpy`."""
    if image.shape[:2] == (height, width):
        return image.copy()
    try:
        from PIL import Image
    except ImportError:
        return resize_pillow_numpy(image, height, width)
    if image.shape[2] == 1:
        resized = Image.fromarray(np.ascontiguousarray(image[:, :, 0]), mode="L").resize(
            (width, height), Image.BILINEAR
        )
        return np.asarray(resized)[:, :, None]
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))


def resize_pillow_numpy(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's 8-bit bilinear resize (Resample.c: fixed-point weights, antialiased when shrinking, the
    horizontal pass first, each pass rounded to 8 bits) in numpy. The same pixels as Pillow's when one
    side changes or both grow; when both change and one shrinks, recent Pillow versions may run the
    vertical pass first, and a pixel can then differ by one level."""
    if image.shape[:2] == (height, width):
        return image.copy()
    if image.shape[1] != width:
        image = _pillow_pass(image, width, axis=1)
    if image.shape[0] != height:
        image = _pillow_pass(image, height, axis=0)
    return image


def _linear_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's CPU `compute_source_index_and_lambda` in float32 (`scale * (i + 0.5) - 0.5` as one fused
    multiply-add: one rounding)."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    source = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    source = np.maximum(source, np.float32(0))
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, np.clip(source - low.astype(np.float32), 0, 1).astype(np.float32)


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float32 (H, W, C) image resized as `torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)` resizes it (no antialiasing), which Detectron2 uses for all but 8-bit images."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[:2] == (height, width):
        return image.copy()
    y0, y1, wy = _linear_indices(image.shape[0], height)
    x0, x1, wx = _linear_indices(image.shape[1], width)
    wx = wx[None, :, None]
    top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
    bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
    wy = wy[:, None, None]
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Masks, as Detectron2's paste_masks_in_image on the CPU


def _grid_sample(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """`F.grid_sample(mask, grid, align_corners=False)` (bilinear, zeros outside) of one (M, M) mask at
    the normalized coordinates ys (h,) x xs (w,); returns (h, w)."""
    size_y, size_x = mask.shape
    iy = ((ys + np.float32(1)) * np.float32(size_y) - np.float32(1)) / np.float32(2)
    ix = ((xs + np.float32(1)) * np.float32(size_x) - np.float32(1)) / np.float32(2)
    y0 = np.floor(iy).astype(np.int64)
    x0 = np.floor(ix).astype(np.int64)
    wy1 = (iy - y0).astype(np.float32)[:, None]
    wx1 = (ix - x0).astype(np.float32)[None, :]
    padded = np.zeros((size_y + 2, size_x + 2), np.float32)  # one ring of zeros: corners outside read 0
    padded[1:-1, 1:-1] = mask
    ry0 = np.clip(y0 + 1, 0, size_y + 1)
    ry1 = np.clip(y0 + 2, 0, size_y + 1)
    rx0 = np.clip(x0 + 1, 0, size_x + 1)
    rx1 = np.clip(x0 + 2, 0, size_x + 1)
    return (padded[ry0][:, rx0] * (1 - wx1) * (1 - wy1) + padded[ry0][:, rx1] * wx1 * (1 - wy1)
            + padded[ry1][:, rx0] * (1 - wx1) * wy1 + padded[ry1][:, rx1] * wx1 * wy1)


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray, height: int, width: int,
                threshold: float = 0.5) -> np.ndarray:
    """(N, M, M) mask probabilities within (N, 4) boxes (x0, y0, x1, y1 in image pixels) as (N, height,
    width) boolean masks: Detectron2's `paste_masks_in_image` as it runs on the CPU (one mask at a time,
    only over the box's pixels and one more on each side)."""
    masks = np.zeros((len(boxes), height, width), bool)
    for i, (box, probs) in enumerate(zip(boxes.astype(np.float32), mask_probs.astype(np.float32))):
        x0, y0, x1, y1 = box
        left, top = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
        right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
        if right <= left or bottom <= top:
            continue
        xs = (np.arange(left, right, dtype=np.float32) + np.float32(0.5) - x0) / (x1 - x0) * np.float32(2) - np.float32(
            1
        )
        ys = (np.arange(top, bottom, dtype=np.float32) + np.float32(0.5) - y0) / (y1 - y0) * np.float32(2) - np.float32(
            1
        )
        masks[i, top:bottom, left:right] = _grid_sample(probs, ys, xs) >= threshold
    return masks


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class Detections:
    """What an exported model found in one image, in that image's pixels, best score first.

    boxes: (N, 4) float32 x0, y0, x1, y1; scores: (N,) float32; classes: (N,) int64, the model's class
    index (`ExportedModel.class_names`/`class_ids` name it); masks: (N, H, W) bool."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    image_size: tuple[int, int] = (0, 0)
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


class ExportedModel:
    """A file written by `maskinit export`, ready to run: `model(image)` returns `Detections`.

    `threads` sets onnxruntime's intra-op threads (or torch's thread count for TorchScript); None
    leaves the library's default. `kind` ("onnx" or "torchscript") skips telling the format from the file."""

    def __init__(self, path: str | Path, threads: int | None = None, kind: str | None = None):
        self.path = Path(path)
        self.format = kind or model_format(self.path)
        self.threads = threads
        if self.format == "onnx":
            self._session = _onnx_session(self.path, threads)
            self.metadata = _parse_metadata(
                self.path, self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            )
            self._run = self._run_onnx
        else:
            self.metadata = _torchscript_metadata(self.path)
            self._module = _load_torchscript(self.path, threads)
            self._run = self._run_torchscript
        info = self.metadata["input"]
        self.channels = int(info["channels"])
        self.min_size, self.max_size = int(info["min_size"]), int(info["max_size"])
        self.score_threshold = float(self.metadata["score_threshold"])
        self.mask_threshold = float(self.metadata.get("mask_threshold", 0.5))

    # names of the model's classes ---------------------------------------------------------------
    @property
    def classes(self) -> list[dict]:
        """[{"index": 0, "id": dataset id, "name": ...}, ...] in the model's class order."""
        return self.metadata["classes"]

    def class_names(self, classes) -> list[str]:
        return [self.classes[int(c)]["name"] for c in classes]

    def class_ids(self, classes) -> list[int]:
        return [int(self.classes[int(c)]["id"]) for c in classes]

    # input -----------------------------------------------------------------------------------------
    def model_input(self, image: np.ndarray) -> np.ndarray:
        """The (C, H', W') float32 tensor the graph takes: the image checked and resized by the size rule."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or 0 in image.shape:
            raise DeployError(f"an image is an (H, W) or (H, W, C) array, got shape {image.shape}")
        if image.shape[2] != self.channels:
            order = self.metadata["input"].get("channel_order", "")
            raise DeployError(
                f"the image has {image.shape[2]} channel{'s' if image.shape[2] != 1 else ''}, but {self.path.name} "
                f"takes {self.channels}{f' ({order})' if order else ''}"
            )
        height, width = resize_shape(image.shape[0], image.shape[1], self.min_size, self.max_size)
        if image.dtype == np.uint8 and self.channels in (1, 3):
            resized = resize_pillow(image, height, width).astype(np.float32)
        else:
            resized = resize_linear(image.astype(np.float32), height, width)
        return np.ascontiguousarray(resized.transpose(2, 0, 1))

    # running ---------------------------------------------------------------------------------------
    def run_graph(self, tensor: np.ndarray, score_threshold: float | None = None) -> tuple[np.ndarray, ...]:
        """The graph's outputs for a (C, H, W) float32 tensor: boxes (in its pixels), scores, classes,
        mask probabilities (N, M, M) of the detections scoring above `score_threshold` (default: the model's)."""
        threshold = np.asarray(self.score_threshold if score_threshold is None else score_threshold, np.float32)
        boxes, scores, classes, probs = self._run(np.ascontiguousarray(tensor, dtype=np.float32), threshold)
        return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
                np.asarray(classes, np.int64).reshape(-1), np.asarray(probs, np.float32))

    def __call__(self, image: np.ndarray, score_threshold: float | None = None) -> Detections:
        """Detections in `image` ((H, W, C) or (H, W), the model's channels in their order, any numeric type)
        scoring above `score_threshold` (default: the model's, `metadata["score_threshold"]`)."""
        if score_threshold is not None and not 0 <= score_threshold <= 1:
            raise DeployError(f"score threshold must be in [0, 1], got {score_threshold}")
        image = np.asarray(image)
        height, width = image.shape[:2]
        tensor = self.model_input(image)
        boxes, scores, classes, probs = self.run_graph(tensor, score_threshold)
        return postprocess(boxes, scores, classes, probs, tensor.shape[1:], (height, width), self.mask_threshold)

    def _run_onnx(self, tensor, threshold):
        return self._session.run(list(OUTPUT_NAMES), dict(zip(INPUT_NAMES, (tensor, threshold))))

    def _run_torchscript(self, tensor, threshold):
        import torch

        with torch.no_grad():
            outputs = self._module(torch.from_numpy(tensor), torch.from_numpy(threshold))
        return [output.numpy() for output in outputs]


def _load_torchscript(path: Path, threads: int | None):
    try:
        import torch
        import torchvision  # noqa: F401 - registers the torchvision::nms and roi_align ops the graph calls
    except ImportError as error:
        raise DeployError(f"{path} is a TorchScript model: install torch and torchvision to run it") from error
    if threads:
        torch.set_num_threads(threads)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError and others for a damaged archive
        raise DeployError(
            f"torch {torch.__version__} cannot load {path}: {' '.join(str(error).split())[:300]}"
        ) from error
    return module.eval()


def postprocess(boxes, scores, classes, mask_probs, input_size, image_size, mask_threshold=0.5) -> Detections:
    """The graph's outputs (in the resized input's pixels) as `Detections` in the image's pixels:
    Detectron2's `detector_postprocess` (scale, clip, drop empty boxes, paste masks)."""
    height, width = int(image_size[0]), int(image_size[1])
    scale = np.array([width / input_size[1], height / input_size[0]] * 2, np.float32)
    boxes = boxes.astype(np.float32) * scale
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes, mask_probs = boxes[nonempty], scores[nonempty], classes[nonempty], mask_probs[nonempty]
    masks = paste_masks(mask_probs.reshape(len(boxes), *mask_probs.shape[-2:]), boxes, height, width, mask_threshold)
    return Detections(boxes, scores, classes, masks, (height, width))


def load(path: str | Path, threads: int | None = None) -> ExportedModel:
    """The exported model at `path` (ONNX through onnxruntime, TorchScript through torch)."""
    return ExportedModel(path, threads=threads)


def main(argv: list[str] | None = None) -> int:
    """`python runner.py MODEL [--score-threshold T] IMAGE.npy ...`: one JSON line per image (boxes,
    scores, class names and ids, mask areas in pixels)."""
    import argparse

    parser = argparse.ArgumentParser(description="Run a model written by maskinit export on .npy images.")
    parser.add_argument("model")
    parser.add_argument("images", nargs="+", help=".npy arrays, (H, W) or (H, W, C)")
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        model = load(args.model, threads=args.threads)
        for name in args.images:
            found = model(np.load(name, allow_pickle=False), args.score_threshold)
            print(json.dumps({"image": name, "boxes": found.boxes.tolist(), "scores": found.scores.tolist(),
                              "classes": model.class_names(found.classes), "class_ids": model.class_ids(found.classes),
                              "mask_areas": found.masks.sum(axis=(1, 2)).tolist()}))
    except (DeployError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
