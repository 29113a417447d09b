"""Pictures of what a model predicts: ground truth | prediction comparisons, and predictions on
unlabeled images with a COCO-format results JSON. Drawing is Detectron2's `Visualizer`.

`predict` runs a trained run's model or an exported one (`maskinit.predict`) on what
`maskinit.input_sources` finds. Unreadable images are skipped with a warning and listed under
"skipped" in the JSON, so one corrupt file does not cost a whole run; when nothing at all can be
read (e.g. a single corrupt file) it is a `MaskinitError` naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_context
from detectron2.evaluation.coco_evaluation import instances_to_coco_json  # contiguous class ids: see internals.py
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer
from pycocotools import mask as mask_util
from torch import nn

from .atomic import write_atomically
from .data.images import read_image
from .data.mapper import ImageMapper, display_rgb
from .errors import MaskinitError, one_line

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.json"
VIS_LONG_SIDE = 384  # small images are drawn upscaled so that labels stay legible
HEADER_HEIGHT = 22
# Lower than `predict`'s 0.5: after a short from-scratch run the best scores are often 0.3-0.6, and
# a comparison should show what the model finds, not an empty panel.
COMPARISON_SCORE_THRESHOLD = 0.3


# ---------------------------------------------------------------------------------------------
# Drawing


def _class_metadata(class_names: tuple[str, ...] | list[str]) -> Metadata:
    """Metadata with a fixed colour per class, so a class has one colour in every panel."""
    palette = colormap(rgb=True, maximum=255)
    colors = [tuple(int(c) for c in palette[i % len(palette)]) for i in range(len(class_names))]
    return Metadata(name="maskinit-vis").set(thing_classes=list(class_names), thing_colors=colors)


def _visualizer(image_rgb: np.ndarray, metadata: Metadata) -> Visualizer:
    scale = float(np.clip(VIS_LONG_SIDE / max(image_rgb.shape[:2]), 1.0, 4.0))
    return Visualizer(image_rgb, metadata, scale=scale, instance_mode=ColorMode.SEGMENTATION)


def _with_header(image_rgb: np.ndarray, title: str) -> np.ndarray:
    header = np.full((HEADER_HEIGHT, image_rgb.shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (6, HEADER_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, image_rgb], axis=0)


def draw_predictions(image_rgb: np.ndarray, instances: Instances, metadata: Metadata) -> np.ndarray:
    """An RGB drawing of predicted instances (already on the CPU and filtered by score)."""
    return _visualizer(image_rgb, metadata).draw_instance_predictions(instances, jittering=False).get_image()


def _write_png(path: Path, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise MaskinitError(f"cannot write {path}")


def _make_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MaskinitError(f"cannot create {path}: {error.strerror}") from error
    return path


def save_comparisons(
    cfg: CfgNode,
    model: nn.Module,
    dataset_name: str,
    out_dir: str | Path,
    count: int = 8,
    score_threshold: float = COMPARISON_SCORE_THRESHOLD,
) -> list[Path]:
    """Write `count` side-by-side PNGs (ground truth | predictions with score >= threshold) for the
    first images of a registered dataset; returns their paths. Images of every kind are read as the
    evaluation reads them and drawn from their 8-bit RGB view (`maskinit.data.mapper.display_rgb`:
    gray as gray, 16-bit stretched over its percentiles, N channels from the first three)."""
    out_dir = _make_dir(out_dir)
    records = DatasetCatalog.get(dataset_name)[:count]
    metadata = _class_metadata(MetadataCatalog.get(dataset_name).get("thing_classes") or [])
    loader = build_detection_test_loader(records, mapper=ImageMapper(cfg, is_train=False))
    written = []
    with inference_context(model), torch.no_grad():
        for record, inputs in zip(records, loader):
            instances = model(inputs)[0]["instances"].to("cpu")
            instances = instances[instances.scores >= score_threshold]
            image = display_rgb(read_image(record["file_name"]))
            truth = _visualizer(image, metadata).draw_dataset_dict(record).get_image()
            predicted = draw_predictions(image, instances, metadata)
            gap = np.full((truth.shape[0] + HEADER_HEIGHT, 4, 3), 255, np.uint8)
            title = f"predictions (score >= {score_threshold:g})"
            panel = np.concatenate([_with_header(truth, "ground truth"), gap, _with_header(predicted, title)], axis=1)
            path = out_dir / f"{Path(record['file_name']).stem}_compare.png"
            _write_png(path, panel)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# Prediction on unlabeled images


def _categories(cfg: CfgNode) -> tuple[list[str], list[int]]:
    """Class names and dataset category ids of the model's outputs: the training set's, as stored in
    the run's config (`MASKINIT.CLASS_NAMES/CLASS_IDS`); for a config without them, those of the
    training dataset when it is registered in this process, else `class_<n>` with ids 1..N."""
    from .data.coco import model_classes

    classes = model_classes(cfg)
    if classes:
        return list(classes), list(classes.values())
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if cfg.DATASETS.TRAIN and cfg.DATASETS.TRAIN[0] in MetadataCatalog.list():
        metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        names = metadata.get("thing_classes")
        if names and len(names) == num_classes:
            mapping = metadata.get("thing_dataset_id_to_contiguous_id") or {i + 1: i for i in range(num_classes)}
            dataset_ids = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
            return list(names), [dataset_ids[i] for i in range(num_classes)]
    return [f"class_{i + 1}" for i in range(num_classes)], list(range(1, num_classes + 1))


OUTPUT_FORMATS = ("coco", "label-image", "yolo")
LABELS_DIR = "labels"


def _write_labels(output_dir: Path, stem: str, instances: Instances, output_format: str) -> dict:
    """One image's predictions as a label image or YOLO lines under `labels/`; for a label image, its
    labels' {label: [class index, score]}."""
    from .data.formats.label_image import paint_labels
    from .data.formats.yolo import polygon_line

    folder = _make_dir(output_dir / LABELS_DIR)
    masks = (
        instances.pred_masks.numpy().astype(bool)
        if instances.has("pred_masks")
        else np.zeros((0, *instances.image_size), bool)
    )
    classes, scores = instances.pred_classes.tolist(), instances.scores.tolist()
    if output_format == "yolo":
        lines = [polygon_line(mask, cls) for mask, cls in zip(masks, classes)]
        write_atomically(folder / f"{stem}.txt", "".join(line + "\n" for line in lines if line))
        return {}
    label, kept = paint_labels(masks, scores)
    path = folder / f"{stem}.png"
    if not cv2.imwrite(str(path), label):
        raise MaskinitError(f"cannot write {path}")
    return {str(value): [classes[index] + 1, round(scores[index], 4)] for value, index in kept.items()}


def _write_class_map(output_dir: Path, output_format: str, names: list[str], labels: dict, input_path: Path) -> Path:
    """classes.txt (YOLO) or classes.json (label images: class names, each label's class and score, and
    the pictures' folder, so that the output reads back as a dataset)."""
    if output_format == "yolo":
        return write_atomically(output_dir / "classes.txt", "".join(name + "\n" for name in names))
    pictures = input_path if input_path.is_dir() else input_path.parent
    class_map = {
        "classes": {str(i + 1): name for i, name in enumerate(names)},
        "instances": {stem: {value: entry[0] for value, entry in own.items()} for stem, own in labels.items()},
        "scores": {stem: {value: entry[1] for value, entry in own.items()} for stem, own in labels.items()},
        "images": str(pictures.resolve()),
    }
    return write_atomically(output_dir / "classes.json", json.dumps(class_map, indent=1))


def predict(
    cfg: CfgNode | None,
    weights: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    score_threshold: float = 0.5,
    *,
    recursive: bool = False,
    every: int = 1,
    progress: Callable[[dict, int, int | None], None] | None = None,
    threads: int | None = None,
    output_format: str = "coco",
) -> Path:
    """Predict on what `input_path` points at (`maskinit.input_sources`: an image, a folder
    (`recursive`: with its subfolders), a glob, a list file, or a video sampled every `every` frames);
    write `<name>.png` drawings and the predictions in `output_format` into `output_dir`: "coco",
    `predictions.json` (COCO: images, categories, and results with RLE masks); "label-image",
    `labels/<name>.png` (16-bit instance labels, the highest score on top where instances overlap) and
    `classes.json` (each label's class and score, the pictures' folder: the folder reads back as a
    label-image dataset); "yolo", `labels/<name>.txt` (YOLO segmentation lines, the largest outline of
    each mask) and `classes.txt`.

    `weights` is a checkpoint of the run whose config is `cfg`, or a file from `maskinit export`
    (`cfg` None; run by `maskinit.deploy` through onnxruntime or torch, `threads` intra-op threads).
    Every image kind `maskinit.data.images.read_image` reads (gray, 16-bit, N-channel TIFF or .npy)
    goes to the model as the evaluation gives it; the drawings show its 8-bit RGB view
    (`maskinit.data.mapper.display_rgb`: gray as gray, 16-bit and float stretched over their 0.5-99.5th
    percentiles, N > 3 channels as a false-colour picture of the first three, read as B, G, R).
    Image ids are 1..N in input order; a video frame's image records its `frame` index and its
    drawing is `<video stem>_f<index>.png`. After each image, `progress(row, done, total)` is called
    with its summary row (file, size, instances per class, best score, seconds; `error` for a skipped
    file) and `total` the expected count (None when a video does not say). Returns the JSON's path.
    """
    import time
    from collections import Counter

    from .deploy import is_exported_model
    from .input_sources import input_sources
    from .predict import load_predictor

    if output_format not in OUTPUT_FORMATS:
        raise MaskinitError(f"unknown prediction format {output_format!r} (known: {', '.join(OUTPUT_FORMATS)})")
    sources = input_sources(input_path, recursive=recursive, every=every)
    categories = None if cfg is None or is_exported_model(weights) else _categories(cfg)
    predictor = load_predictor(weights, score_threshold, cfg=cfg, categories=categories, threads=threads)
    names, dataset_ids = predictor.names, predictor.dataset_ids
    metadata = _class_metadata(names)
    output_dir = _make_dir(output_dir)

    images, annotations, skipped, labels = [], [], [], {}
    total = sources.total
    for done, (item, image) in enumerate(sources, start=1):
        if isinstance(image, Exception):
            logger.warning("skipping %s: not a readable image (%s)", item.path, one_line(image))
            skipped.append({"file_name": str(item.path), "error": one_line(image)})
            if progress is not None:
                progress({"file": item.label, "error": one_line(image)}, done, total)
            continue
        image_id = len(images) + 1
        started = time.perf_counter()
        instances = predictor(image, item.path)
        seconds = time.perf_counter() - started
        for result in instances_to_coco_json(instances, image_id):
            result["category_id"] = dataset_ids[result["category_id"]]
            if "segmentation" in result:
                result["area"] = float(mask_util.area(result["segmentation"]))
            result["id"] = len(annotations) + 1
            annotations.append(result)
        entry = {"id": image_id, "file_name": item.label, "height": image.shape[0], "width": image.shape[1]}
        if item.frame is not None:
            entry["frame"] = item.frame
        images.append(entry)
        _write_png(output_dir / f"{item.name}.png", draw_predictions(display_rgb(image), instances, metadata))
        if output_format != "coco":
            labels[item.name] = _write_labels(output_dir, item.name, instances, output_format)
        if progress is not None:
            counts = Counter(names[int(c)] for c in instances.pred_classes)
            progress({"file": item.label if item.frame is None else f"{item.label} frame {item.frame}",
                      "width": image.shape[1], "height": image.shape[0], "instances": len(instances),
                      "classes": dict(sorted(counts.items())),
                      "best_score": float(instances.scores.max()) if len(instances) else None,
                      "seconds": seconds}, done, total)
    if not images:
        raise MaskinitError(f"no readable image in {input_path}: {skipped[0]['file_name']}: {skipped[0]['error']}")

    coco = {
        "images": images,
        "categories": [{"id": i, "name": name} for i, name in zip(dataset_ids, names)],
        "annotations": annotations,
        "skipped": skipped,
    }
    if output_format != "coco":  # the folder then reads back as a dataset of that format alone
        return _write_class_map(output_dir, output_format, list(names), labels, Path(input_path))
    json_path = output_dir / PREDICTIONS_FILE
    write_atomically(json_path, json.dumps(coco))
    return json_path
