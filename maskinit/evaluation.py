"""COCO evaluation (box and mask AP) with Detectron2's `COCOEvaluator`; trained weights load in `checkpoint`.

COCO AP computation backend: Detectron2's own fast `COCOeval_opt` needs its compiled `_C`
extension, which this install does not have, so Detectron2 would fall back to pycocotools' pure
Python `COCOeval`. faster-coco-eval ships the same C++ evaluate/accumulate (it descends from
Detectron2's code) and gives identical numbers, so it is used when installed; see
`coco_eval_backend`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import (
    COCOEvaluator,
    coco_evaluation,  # its COCOeval_opt slot and a private function: see internals.py
    inference_on_dataset,
)
from torch import nn

from .atomic import write_atomically
from .checkpoint import load_trained_model, load_weights  # noqa: F401 - load_weights: the name tests import from here
from .errors import MaskinitError

logger = logging.getLogger(__name__)

FASTER_COCO_EVAL = "faster-coco-eval"
PYCOCOTOOLS = "pycocotools"
DETECTRON2_FAST = "detectron2"  # Detectron2's own compiled COCOeval_opt, when built with _C
BACKENDS = (FASTER_COCO_EVAL, PYCOCOTOOLS, DETECTRON2_FAST)


# ---------------------------------------------------------------------------------------------
# COCOeval backend


def _faster_cocoeval_class():
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        return None
    return COCOeval_faster


def _detectron2_has_fast_eval() -> bool:
    """Whether Detectron2's slot for its fast eval holds its own compiled implementation."""
    return coco_evaluation.COCOeval_opt not in (coco_evaluation.COCOeval, _faster_cocoeval_class())


def coco_eval_backend() -> str:
    """The COCOeval implementation `build_evaluator` uses by default: "detectron2" (its compiled
    fast eval, when present), else "faster-coco-eval" when installed, else "pycocotools"."""
    if _detectron2_has_fast_eval():
        return DETECTRON2_FAST
    return FASTER_COCO_EVAL if _faster_cocoeval_class() is not None else PYCOCOTOOLS


def _install_faster_coco_eval() -> None:
    """Put faster-coco-eval's `COCOeval_faster` into the slot Detectron2 keeps for its fast eval.

    This is the one patch: `COCOEvaluator` reads the module global `COCOeval_opt` when it evaluates
    with `use_fast_impl=True`, and Detectron2 itself fills it with `COCOeval` when its compiled `_C`
    is missing. Filling the empty slot changes nothing else: `use_fast_impl=False` still evaluates
    with pycocotools' `COCOeval`, and a Detectron2 built with `_C` is left untouched.
    """
    if coco_evaluation.COCOeval_opt is coco_evaluation.COCOeval:
        coco_evaluation.COCOeval_opt = _faster_cocoeval_class()


def _cocoeval_class(backend: str):
    if backend == PYCOCOTOOLS:
        return coco_evaluation.COCOeval
    if backend == FASTER_COCO_EVAL:
        faster = _faster_cocoeval_class()
        if faster is None:
            raise MaskinitError("COCO eval backend faster-coco-eval is not installed (pip install faster-coco-eval)")
        return faster
    if backend == DETECTRON2_FAST and _detectron2_has_fast_eval():
        return coco_evaluation.COCOeval_opt
    raise MaskinitError(f"COCO eval backend {backend!r} is not available (known: {', '.join(BACKENDS)})")


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_dir: str | Path | None = None, backend: str | None = None
) -> COCOEvaluator:
    """Detectron2's `COCOEvaluator` (bbox, plus segm when the model has masks) on the chosen
    backend (default `coco_eval_backend()`); the backend is kept as `evaluator.coco_eval_backend`."""
    backend = backend or coco_eval_backend()
    _cocoeval_class(backend)  # validate the choice before anything is built
    if backend == FASTER_COCO_EVAL:
        _install_faster_coco_eval()
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    evaluator = COCOEvaluator(
        dataset_name,
        tasks=tasks,
        distributed=True,
        output_dir=str(output_dir) if output_dir is not None else None,
        use_fast_impl=backend != PYCOCOTOOLS,
    )
    evaluator.coco_eval_backend = backend
    logger.info("COCO evaluation of %s with %s", dataset_name, backend)
    return evaluator


def coco_summary_stats(json_file: str | Path, coco_results: list[dict], iou_type: str, backend: str) -> np.ndarray:
    """The 12 COCO summary numbers (AP, AP50, ..., AR) of COCO-format results, computed the way
    `COCOEvaluator` does (Detectron2's `_evaluate_predictions_on_coco`) with the given backend."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(json_file))
        coco_eval = coco_evaluation._evaluate_predictions_on_coco(
            coco_gt, copy.deepcopy(coco_results), iou_type, cocoeval_fn=_cocoeval_class(backend)
        )
    return np.asarray(coco_eval.stats[:12], dtype=np.float64)


def max_backend_difference(
    json_file: str | Path,
    coco_results: list[dict],
    iou_types: tuple[str, ...] = ("bbox", "segm"),
    backends: tuple[str, str] = (FASTER_COCO_EVAL, PYCOCOTOOLS),
) -> float:
    """The largest difference between two backends over the 12 summary numbers of each IoU type:
    the check that swapping the COCOeval implementation does not move the reported AP."""
    first, second = backends
    differences = [
        coco_summary_stats(json_file, coco_results, iou_type, first)
        - coco_summary_stats(json_file, coco_results, iou_type, second)
        for iou_type in iou_types
    ]
    return float(max(np.abs(difference).max() for difference in differences))


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_model(
    model: nn.Module,
    cfg: CfgNode,
    dataset_name: str,
    output_dir: str | Path | None = None,
    backend: str | None = None,
) -> dict:
    """COCO box and mask AP of an in-memory model on a registered dataset (Detectron2's result dict);
    images of every kind are read by `maskinit.data.mapper.ImageMapper`."""
    from .data.mapper import ImageMapper

    evaluator = build_evaluator(cfg, dataset_name, output_dir, backend)
    loader = build_detection_test_loader(cfg, dataset_name, mapper=ImageMapper(cfg, is_train=False))
    results = inference_on_dataset(model, loader, evaluator)
    return {task: dict(metrics) for task, metrics in results.items()}


def json_safe(value):
    """NaN (a metric with nothing to measure) as null: NaN is not JSON."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    try:
        write_atomically(path, json.dumps(json_safe(results), indent=2) + "\n")
    except OSError as error:
        raise MaskinitError(f"cannot write {path}: {error.strerror}") from error
    return path


def evaluate(
    cfg: CfgNode,
    weights: str | Path,
    dataset_name: str,
    output_dir: str | Path | None = None,
    json_out: str | Path | None = None,
    vis_dir: str | Path | None = None,
    vis_count: int = 8,
) -> dict:
    """Evaluate a checkpoint on a registered dataset: `{"bbox": {"AP": ..., "AP-<class>": ...},
    "segm": {...}}` as Detectron2 reports it (percentages; NaN where nothing can be measured).

    `output_dir` receives Detectron2's prediction dumps, `json_out` the result dict (NaN as null),
    `vis_dir` `vis_count` ground truth | prediction comparisons.

    When the config stores the training classes (`MASKINIT.CLASS_NAMES/CLASS_IDS`), the dataset's
    categories are matched to them by name (`dataset_as_trained`): a name the model does not know is
    refused, other ids for the same names are mapped. A config without them (written before they
    were stored) only needs the same number of classes.
    """
    dataset_name = _dataset_for_model(cfg, dataset_name)
    model = load_trained_model(cfg, weights)
    results = evaluate_model(model, cfg, dataset_name, output_dir)
    if json_out is not None:
        write_results_json(results, json_out)
    if vis_dir is not None and vis_count > 0:
        from .visualize import save_comparisons

        save_comparisons(cfg, model, dataset_name, vis_dir, count=vis_count)
    return results


def _dataset_for_model(cfg: CfgNode, dataset_name: str) -> str:
    """The registered dataset to evaluate `cfg`'s model on: `dataset_name`, or its re-registration
    with the categories matched by name to the training classes stored in the config."""
    from .data.coco import dataset_as_trained, model_classes, registered_dataset

    dataset = registered_dataset(dataset_name)
    classes = model_classes(cfg)
    if classes:
        return dataset_as_trained(dataset, classes).name
    if dataset.num_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise MaskinitError(
            f"dataset {dataset_name!r} has {dataset.num_classes} classes but the config's model has "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES} (MODEL.ROI_HEADS.NUM_CLASSES)"
        )
    return dataset_name


# ---------------------------------------------------------------------------------------------
# `maskinit eval`: the evaluation data, on one or several processes


def _eval_dataset_name(data, cfg: CfgNode) -> str:
    """Register the evaluation data in this process: `--dataset`, `--val-json`, or the default val
    set, with its categories matched by name to the training classes stored in `cfg`."""
    from .data.sources import VAL_NAME, register_from_options, use_embedded_default, with_paths

    if data.dataset:
        return _dataset_for_model(cfg, data.dataset)
    if not data.val_json:
        data = use_embedded_default(data)
    register_from_options(with_paths(data, train_json=None, train_images=None), cfg)
    return VAL_NAME


def _evaluate_worker(cfg, weights, data, output_dir, json_out, vis_dir, vis_count, result_file):
    from detectron2.utils import comm

    name = _eval_dataset_name(data, cfg)
    results = evaluate(cfg, weights, name, output_dir, None, vis_dir if comm.is_main_process() else None, vis_count)
    if comm.is_main_process():
        if json_out is not None:
            write_results_json(results, json_out)
        write_results_json(results, result_file)


def evaluate_run(
    cfg: CfgNode,
    weights: str | Path,
    data,
    *,
    device: str | None = None,
    num_gpus: int = 1,
    dist_url: str = "auto",
    output_dir: str | Path | None = None,
    json_out: str | Path | None = None,
    vis_dir: str | Path | None = None,
    vis_count: int = 8,
) -> dict:
    """What `maskinit eval` runs: `evaluate` on the data options, on `num_gpus` processes
    (Detectron2's `launch`; gloo on CPU). Returns the result dict (NaN as None)."""
    import tempfile

    from detectron2.engine import launch

    from .devices import set_device

    cfg = cfg.clone()
    cfg.defrost()
    set_device(cfg, device, num_gpus)
    if not Path(weights).is_file():
        raise MaskinitError(f"weights {weights} not found")
    _eval_dataset_name(copy.copy(data), cfg)  # bad data fails here, before any process starts
    cfg.freeze()
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "results.json"
        args = (cfg, str(weights), data, output_dir, json_out, vis_dir, vis_count, result_file)
        if num_gpus == 1:
            _evaluate_worker(*args)
        else:
            try:
                launch(_evaluate_worker, num_gpus, 1, 0, dist_url, args=args)
            except Exception as error:  # a child's MaskinitError arrives wrapped
                raise MaskinitError(f"evaluation failed: {str(error).strip().splitlines()[-1][:300]}") from error
        return json.loads(result_file.read_text())
