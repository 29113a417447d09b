"""`maskinit export`: a trained run as one file that runs without Detectron2 (TorchScript or ONNX).

The model is traced with Detectron2's `TracingAdapter` (detectron2.export), as Detectron2's
`tools/deploy/export_model.py` traces it: `model.inference(..., do_postprocess=False)`, so the graph
ends with the boxes, scores, classes and the M x M mask probabilities of each box in the input's
pixels, and the masks survive the export. Before tracing, the model is put in its deployed form:
BatchNorm of every kind (BN, SyncBN, naiveSyncBN) becomes Detectron2's `FrozenBatchNorm2d` with
the trained statistics, and GNWS's weight-standardized convolutions become plain convolutions with
the standardized weights (both exact in eval mode, and cheaper).

The graph's input is one image, float32 (C, H, W) in the training images' units and channel order,
already resized by the model's size rule; it normalizes with the pixel mean/std itself. What the
graph leaves out (the resize, scaling the boxes back, pasting the masks) is `maskinit.deploy`'s
runner, a numpy-only file. The settings a user needs travel inside the file and in a JSON beside it
(`<file>.json`): input channels and order, pixel mean/std, the size rule, class names and ids, the
score threshold.

Nothing is written unless the export reproduces the model: the written file is loaded by the
runner (onnxruntime or torch) and run on two generated images of the model's input sizes (one
landscape, one portrait: the traced graph must not have kept the traced image's shape) at score
threshold 0, and on one at a threshold nothing passes (zero boxes through the mask head); its
detections are compared with Detectron2's before the file is renamed into place.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from torch import nn

from . import __version__
from .atomic import write_atomically
from .deploy.runner import (
    EXPORT_VERSION,
    INPUT_NAMES,
    METADATA_FILE,
    METADATA_KEY,
    OUTPUT_NAMES,
    DeployError,
    ExportedModel,
    resize_shape,
)
from .errors import MaskinitError, one_line

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
# ONNX opset of the export: RoiAlign's half_pixel mode (Detectron2's ROIAlignV2, aligned=True) needs 16.
ONNX_OPSET = 17
DEFAULT_SCORE_THRESHOLD = 0.5  # as `maskinit predict`
# The tolerance of the check before writing: boxes within this fraction of the image's longer side,
# scores and mask probabilities within these absolute differences.
CHECK_BOX_TOLERANCE = 1e-3
CHECK_SCORE_TOLERANCE = 1e-3
CHECK_MASK_TOLERANCE = 2e-2


@dataclass
class ExportResult:
    path: Path  # the exported model
    metadata_path: Path  # the JSON beside it
    format: str
    metadata: dict
    checks: list[dict] = field(default_factory=list)  # one per check image: size, detections, largest differences


# ---------------------------------------------------------------------------------------------
# The model in its deployed form


class ShapedGroupNorm(nn.Module):
    """GroupNorm of (N, C, H, W) written out with explicit shapes, for the ONNX graph's RoI heads: torch
    exports `nn.GroupNorm` as a Reshape to (0, groups, -1), which onnxruntime refuses for an empty
    batch (an image without detections: the mask head runs on zero boxes). The arithmetic of
    `nn.GroupNorm` (biased variance over each group's channels and pixels)."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # every size explicit: a -1 (or flatten) in a Reshape fails on zero boxes
        grouped = x.reshape(shape[0], self.num_groups, shape[1] // self.num_groups, shape[2], shape[3])
        centred = grouped - grouped.mean(dim=(2, 3, 4), keepdim=True)
        normed = (centred / torch.sqrt(centred.pow(2).mean(dim=(2, 3, 4), keepdim=True) + self.eps)).reshape(shape)
        if self.weight is None:
            return normed
        return normed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def deployable_model(model: nn.Module, fmt: str = "torchscript") -> nn.Module:
    """A copy of a trained model as it is exported, in eval mode: every BatchNorm (BN, SyncBN,
    naiveSyncBN) as Detectron2's `FrozenBatchNorm2d` holding the trained statistics, every
    weight-standardized conv (GNWS) as a plain conv holding the standardized weights and, for ONNX,
    the RoI heads' GroupNorms as `ShapedGroupNorm`."""
    from detectron2.layers import Conv2d, FrozenBatchNorm2d

    from .norms import WSConv2d, replace_modules

    model = copy.deepcopy(model).eval()
    if fmt == "onnx" and hasattr(model, "roi_heads"):
        replace_modules(model.roi_heads, lambda m: isinstance(m, nn.GroupNorm), ShapedGroupNorm)
    for module in list(model.modules()):
        if isinstance(module, WSConv2d):
            with torch.no_grad():
                standardized = module.standardized_weight()
            module.__class__ = Conv2d
            module.weight = nn.Parameter(standardized, requires_grad=False)
    model = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _inference(model: nn.Module, image: torch.Tensor, score_threshold: torch.Tensor):
    """What the graph computes: one image's detections scoring above `score_threshold` (a 0-dim
    tensor, so that the traced graph takes it as its second input), before `detector_postprocess`:
    boxes in the input's pixels, scores, classes, the mask head's probabilities (N x M x M)."""
    from detectron2.modeling.roi_heads import FastRCNNOutputLayers

    for module in model.modules():  # Detectron2 compares `scores > test_score_thresh`: see internals.py
        if isinstance(module, FastRCNNOutputLayers):
            module.test_score_thresh = score_threshold
    instances = model.inference([{"image": image}], do_postprocess=False)[0]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes, instances.pred_masks[:, 0]


def _raw_outputs(model: nn.Module, image: np.ndarray, score_threshold: float) -> tuple[np.ndarray, ...]:
    """The Detectron2 model's outputs as the graph gives them (its score threshold set for the call)."""
    from detectron2.modeling.roi_heads import FastRCNNOutputLayers

    predictors = [m for m in model.modules() if isinstance(m, FastRCNNOutputLayers)]
    kept = [m.test_score_thresh for m in predictors]
    try:
        with torch.no_grad():
            return tuple(o.numpy() for o in _inference(model, torch.from_numpy(image), torch.tensor(score_threshold)))
    finally:
        for module, value in zip(predictors, kept):
            module.test_score_thresh = value


# ---------------------------------------------------------------------------------------------
# What each format can express


def _refusals(cfg: CfgNode, fmt: str) -> list[str]:
    """Settings of this config that the format (or the export) cannot express, each in words."""
    problems = []
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN" or not cfg.MODEL.MASK_ON:
        problems.append(f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} with MASK_ON {cfg.MODEL.MASK_ON}: "
                        "maskinit exports Mask R-CNN (GeneralizedRCNN with MASK_ON True)")
    if cfg.MODEL.KEYPOINT_ON:
        problems.append(
            "MODEL.KEYPOINT_ON: the export's outputs are boxes, scores, classes and masks; keypoints are not exported"
        )
    if cfg.TEST.AUG.ENABLED:
        problems.append("TEST.AUG.ENABLED: test-time augmentation runs the model several times from Python; "
                        "one traced graph cannot express it (export without it)")
    return problems


# ---------------------------------------------------------------------------------------------
# Metadata


def _channel_order(cfg: CfgNode, channels: int) -> str:
    if channels == 3 and cfg.INPUT.FORMAT in ("BGR", "RGB"):
        return cfg.INPUT.FORMAT
    if channels == 1:
        return "gray"
    return f"bands 0-{channels - 1} as stored in the training images"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_metadata(cfg: CfgNode, weights: Path, fmt: str, weight_average: bool) -> dict:
    """The settings written into the exported file and beside it."""
    from .visualize import _categories

    names, dataset_ids = _categories(cfg)
    channels = len(cfg.MODEL.PIXEL_MEAN)
    return {
        "export_version": EXPORT_VERSION,
        "format": fmt,
        "model": "Mask R-CNN (Detectron2 GeneralizedRCNN)",
        "input": {
            "names": list(INPUT_NAMES),
            "layout": "CHW",
            "dtype": "float32",
            "channels": channels,
            "format": cfg.INPUT.FORMAT,
            "channel_order": _channel_order(cfg, channels),
            "units": "the image file's own (no division by 255 or 65535); "
            "the graph normalizes with pixel_mean/pixel_std",
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
            "min_size": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size": int(cfg.INPUT.MAX_SIZE_TEST),
            "size_rule": "shorter side to min_size, longer side at most max_size (Detectron2 ResizeShortestEdge; "
            "no resize when min_size is 0), sizes rounded to the nearest pixel",
            "resize": "bilinear: Pillow's for 8-bit images of 1 or 3 channels, "
            "torch.nn.functional.interpolate(align_corners=False) for all others",
        },
        "outputs": {
            "boxes": "(N, 4) float32 x0, y0, x1, y1 in the input's pixels (scale to the image, then clip)",
            "scores": "(N,) float32, best first",
            "classes": "(N,) int64 index into classes",
            "mask_probs": "(N, M, M) float32 mask probabilities within each box (paste, threshold at mask_threshold)",
        },
        "classes": [
            {"index": i, "id": int(dataset_id), "name": name}
            for i, (name, dataset_id) in enumerate(zip(names, dataset_ids))
        ],
        "score_threshold": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
        "score_threshold_rule": "the graph's second input (0-dim float32): detections scoring above it are kept, "
        "before NMS and the top detections_per_image, as in Detectron2; this is its default",
        "nms_threshold": float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
        "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        "mask_threshold": 0.5,
        "mask_size": int(cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION) * 2,
        "norm": cfg.MASKINIT.NORM,
        "preset": cfg.MASKINIT.PRESET,
        "weights": {"file": weights.name, "sha256": _sha256(weights), "weight_average": weight_average},
        "maskinit_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {}),
    }


# ---------------------------------------------------------------------------------------------
# Check images


def check_images(cfg: CfgNode, seed: int = 0) -> list[np.ndarray]:
    """Two generated (C, H, W) float32 images at the sizes the model takes, a landscape one (the traced
    one) and a portrait one: smooth blobs at the pixel mean +- a few pixel stds per channel."""
    rng = np.random.default_rng(seed)
    mean = np.asarray(cfg.MODEL.PIXEL_MEAN, np.float32)[:, None, None]
    std = np.asarray(cfg.MODEL.PIXEL_STD, np.float32)[:, None, None]
    images = []
    for height, width in ((300, 400), (400, 300)):
        height, width = resize_shape(height, width, int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))
        coarse = rng.standard_normal((len(mean), max(height // 16, 2), max(width // 16, 2))).astype(np.float32)
        smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], (height, width), mode="bilinear")[
            0
        ].numpy()
        images.append(np.ascontiguousarray(mean + 2 * std * smooth, dtype=np.float32))
    return images


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)

    def area(x):
        return np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)

    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def compare_outputs(expected, actual, image_shape, threshold: float, top_k: int) -> dict:
    """Differences between two sets of graph outputs (boxes, scores, classes, mask probabilities): each
    detection of one scoring clearly (by the score tolerance) above the threshold, and above the last
    one kept when `top_k` were kept, must have a partner of the same class in the other; returns the
    counts and the largest differences, with `problem` set when they do not match."""
    boxes_a, scores_a, classes_a, masks_a = expected
    boxes_b, scores_b, classes_b, masks_b = actual
    iou = _box_iou(boxes_a, boxes_b)
    same_class = classes_a[:, None] == classes_b[None, :]
    result = {"size": list(image_shape), "detections": len(scores_a), "exported_detections": len(scores_b),
              "box": 0.0, "score": 0.0, "mask": 0.0, "problem": ""}
    scale = max(image_shape)
    floor = threshold
    for scores in (scores_a, scores_b):
        if len(scores) >= top_k > 0:  # the top-k cut: a near tie there may fall either way
            floor = max(floor, float(scores.min()))
    for name, scores, other_axis in (("Detectron2's", scores_a, 1), ("the export's", scores_b, 0)):
        for i in np.flatnonzero(scores >= floor + CHECK_SCORE_TOLERANCE):
            row = iou[i] if other_axis == 1 else iou[:, i]
            partners = np.flatnonzero((row > 0.9) & (same_class[i] if other_axis == 1 else same_class[:, i]))
            if not len(partners):
                result["problem"] = f"{name} detection {i} (score {scores[i]:.3f}) has no partner"
                return result
    for i in range(len(scores_a)):
        candidates = np.flatnonzero(same_class[i] & (iou[i] > 0.9))
        if not len(candidates):
            continue
        j = candidates[np.argmax(iou[i, candidates])]
        result["box"] = max(result["box"], float(np.abs(boxes_a[i] - boxes_b[j]).max()) / scale)
        result["score"] = max(result["score"], float(abs(scores_a[i] - scores_b[j])))
        result["mask"] = max(result["mask"], float(np.abs(masks_a[i] - masks_b[j]).max()))
    for key, tolerance in (
        ("box", CHECK_BOX_TOLERANCE),
        ("score", CHECK_SCORE_TOLERANCE),
        ("mask", CHECK_MASK_TOLERANCE),
    ):
        if result[key] > tolerance:
            result["problem"] = f"{key}es differ by up to {result[key]:.2g} (tolerance {tolerance:g})"
    return result


# ---------------------------------------------------------------------------------------------
# Tracing and writing


def _trace_torchscript(adapter, inputs: tuple, metadata: dict) -> bytes:
    traced = torch.jit.trace(adapter, inputs, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(metadata)})
    return buffer.getvalue()


def _export_onnx(adapter, inputs: tuple, metadata: dict) -> bytes:
    import onnx

    buffer = io.BytesIO()
    torch.onnx.export(  # the TorchScript-based exporter, which traces as torch.jit.trace: see internals.py
        adapter, inputs, buffer, dynamo=False, opset_version=ONNX_OPSET, input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES), do_constant_folding=True,
        dynamic_axes={"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}},
    )
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    model.producer_name, model.producer_version = "maskinit", __version__
    return model.SerializeToString()


def _format_error(fmt: str, error: Exception) -> MaskinitError:
    text = one_line(error)
    if fmt == "onnx":
        return MaskinitError(f"ONNX (opset {ONNX_OPSET}) cannot express this model: {text}; "
                             "export with --format torchscript instead; nothing written")
    return MaskinitError(f"TorchScript tracing failed: {text}; nothing written")


def _check(path: Path, fmt: str, model: nn.Module, images: list[np.ndarray], top_k: int) -> list[dict]:
    """Run the written (temporary) file through the runner and compare with the Detectron2 model: each
    check image at score threshold 0 (the top `top_k` detections, whatever the default threshold), and
    the first one also at a threshold nothing passes (the graph must run on zero boxes)."""
    try:
        exported = ExportedModel(path, kind=fmt, threads=1)
        results = []
        for image, score_threshold in [(image, 0.0) for image in images] + [(images[0], 1.0)]:
            actual = exported.run_graph(image, score_threshold)
            expected = _raw_outputs(model, image, score_threshold)
            result = {**compare_outputs(expected, actual, image.shape[1:], score_threshold, top_k),
                      "score_threshold": score_threshold}
            results.append(result)
            if result["problem"]:
                raise MaskinitError(
                    f"the exported {fmt} model does not reproduce the Detectron2 model "
                    f"on a {image.shape[2]}x{image.shape[1]} "
                    f"check image at score threshold {score_threshold:g} ({result['problem']}); nothing written"
                )
    except DeployError as error:
        raise MaskinitError(f"{error}; nothing written") from error
    except MaskinitError:
        raise
    except Exception as error:
        runtime = "onnxruntime" if fmt == "onnx" else "torch"
        raise MaskinitError(
            f"{runtime} cannot run the exported {fmt} model: {one_line(error)}; nothing written"
        ) from error
    return results


def weights_hold_average(weights: Path) -> bool:
    """Whether a checkpoint's `model` is a weight average (`model_final.pth` of a run with MASKINIT.EMA
    keeps the training weights beside it as `raw_model`)."""
    try:
        return "raw_model" in torch.load(weights, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - load_weights has read it already; a file torch cannot mmap is not an average
        return False


def export_model(cfg: CfgNode, weights: str | Path, fmt: str, output: str | Path, *,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, check: bool = True) -> ExportResult:
    """Export the model of `cfg` with `weights` (a run's `model_final.pth`: with MASKINIT.EMA, the
    weight average) as `fmt` ("torchscript" or "onnx") to `output`, and its settings to
    `output` + ".json"; both written atomically, after the check described in the module docstring.
    The score threshold is an input of the graph (Detectron2 filters by it before NMS);
    `score_threshold` is the default the metadata gives for it."""
    from detectron2.export import TracingAdapter
    from torch.jit import TracerWarning

    from .checkpoint import load_trained_model

    if fmt not in FORMATS:
        raise MaskinitError(f"unknown export format {fmt!r} (torchscript or onnx)")
    if not 0 <= score_threshold <= 1:
        raise MaskinitError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    output, weights = Path(output), Path(weights)
    if output.suffix.lower() == ".json":
        raise MaskinitError(f"{output}: the model file cannot be a .json (its settings go to <file>.json beside it)")
    if output.is_dir():
        raise MaskinitError(f"{output} is a folder: give the file to write (e.g. {output / ('model' + SUFFIXES[fmt])})")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_threshold)  # the default the runner passes to the graph
    problems = _refusals(cfg, fmt)
    if problems:
        raise MaskinitError(f"cannot export as {fmt}: {'; '.join(problems)}")
    model = load_trained_model(cfg, weights)  # refuses missing, foreign and non-finite weights in one line
    metadata = export_metadata(cfg, weights, fmt, weights_hold_average(weights))
    deployed = deployable_model(model, fmt)
    images = check_images(cfg)
    inputs = (torch.from_numpy(images[0]), torch.tensor(float(score_threshold)))
    adapter = TracingAdapter(deployed, inputs, _inference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            content = (
                _export_onnx(adapter, inputs, metadata)
                if fmt == "onnx"
                else _trace_torchscript(adapter, inputs, metadata)
            )
        except MaskinitError:
            raise
        except Exception as error:
            raise _format_error(fmt, error) from error
    checks: list[dict] = []

    def check_file(path: Path) -> None:
        if check:
            checks.extend(_check(path, fmt, model, images, int(cfg.TEST.DETECTIONS_PER_IMAGE)))

    metadata_path = Path(str(output) + ".json")
    try:
        write_atomically(output, content, check=check_file, mode=0o644)
        write_atomically(metadata_path, json.dumps(metadata, indent=2) + "\n", mode=0o644)
    except OSError as error:
        raise MaskinitError(f"cannot write {output}: {error.strerror or error}") from error
    return ExportResult(output, metadata_path, fmt, metadata, checks)
