"""Batches of Detectron2 model input (dicts with "image", "height", "width", "image_id", "instances") for a
pass before training: `inspect-init` measures one (`synthetic_batch`, or `coco_batch` from a COCO file), LSUV
fits the init to one (`dataset_batch` from the registered training set, or `generated_batch`).

Generated batches carry three ground-truth instances per image, so the RPN, the box and the mask heads all
see input; a batch from data is read as training reads it (`maskinit.data.mapper.ImageMapper`: every image
kind, for a model of `len(MODEL.PIXEL_MEAN)` channels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode

from .errors import MaskinitError, one_line
from .ranks import world_size
from .seeding import seeded_rng

logger = logging.getLogger(__name__)
# What a mapper raises on a record it cannot read (a missing or corrupt image, a malformed annotation).
MAPPER_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, AssertionError)


def images_per_process(cfg: CfgNode) -> int:
    """`SOLVER.IMS_PER_BATCH` is the batch of all processes together: this process's share (at least 1)."""
    return max(1, int(cfg.SOLVER.IMS_PER_BATCH) // max(1, world_size()))


# ----------------------------------------------------------------------------------------- generated


def _model_input(image: torch.Tensor, index: int, masks: list[np.ndarray], classes, with_masks: bool = True) -> dict:
    """One generated image (C, H, W) and its instances (boolean masks, their classes) as Detectron2's model input."""
    from detectron2.structures import BitMasks, Instances

    height, width = image.shape[-2:]
    bitmasks = BitMasks(torch.from_numpy(np.stack(masks)))
    instances = Instances((height, width))
    instances.gt_boxes = bitmasks.get_bounding_boxes()
    instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
    if with_masks:
        instances.gt_masks = bitmasks
    return {"image": image, "height": height, "width": width, "image_id": index, "instances": instances}


def synthetic_batch(cfg: CfgNode, num_images: int = 2, image_size: int = 128, seed: int = 0) -> list[dict]:
    """Textured 8-bit colour images with filled rectangles and ellipses as instances (`inspect-init`'s batch)."""
    rng = np.random.default_rng(seed)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    batch = []
    for index in range(num_images):
        phase = rng.uniform(0, 2 * np.pi, 3)
        texture = 60 * np.sin(xx[..., None] / 7.0 + phase) * np.cos(yy[..., None] / 11.0 + phase)
        image = 127 + texture + rng.normal(0, 20, (image_size, image_size, 3))
        masks, classes = [], []
        for shape in range(3):
            x0, y0 = rng.integers(2, image_size // 2, 2)
            width, height = rng.integers(image_size // 6, image_size // 2, 2)
            x1, y1 = min(x0 + width, image_size - 2), min(y0 + height, image_size - 2)
            if shape % 2:
                mask = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
            else:
                cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
                mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            image[mask] = rng.integers(0, 256, 3)
            masks.append(mask)
            classes.append(int(rng.integers(0, num_classes)))
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        if cfg.INPUT.FORMAT == "RGB":
            pixels = pixels[..., ::-1]
        batch.append(
            _model_input(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), index, masks, classes)
        )
    return batch


def generated_batch(cfg: CfgNode, num_images: int, seed: int = 0) -> list[dict]:
    """Square images at the training input size (the largest `INPUT.MIN_SIZE_TRAIN`, capped by
    `MAX_SIZE_TRAIN`) whose pixels are independent normal draws with mean `MODEL.PIXEL_MEAN` and std
    `MODEL.PIXEL_STD` per channel (so the model's normalized input has mean 0, std 1, like data would),
    each with three flat rectangles of random colour as ground-truth instances (boxes, classes, masks)."""
    rng = np.random.default_rng(seed)
    size = int(min(max(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN or 10**9))
    mean = np.asarray(cfg.MODEL.PIXEL_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.MODEL.PIXEL_STD, dtype=np.float32)[:, None, None]
    batch = []
    for index in range(num_images):
        image = mean + std * rng.standard_normal((len(mean), size, size), dtype=np.float32)
        masks = []
        for _ in range(3):
            x0, y0 = rng.integers(0, size * 2 // 3, 2)
            x1, y1 = x0 + rng.integers(size // 8, size // 3 + 1, 2)
            mask = np.zeros((size, size), dtype=bool)
            mask[y0:min(int(y1), size), x0:min(int(x1), size)] = True
            image[:, mask] = (mean + std * rng.standard_normal(mean.shape, dtype=np.float32))[:, :, 0]
            masks.append(mask)
        classes = rng.integers(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, len(masks))
        batch.append(_model_input(torch.from_numpy(image), index, masks, classes, with_masks=cfg.MODEL.MASK_ON))
    return batch


# ---------------------------------------------------------------------------------------- from data


def with_annotations(records: list[dict]) -> list[dict]:
    """The dataset records with at least one annotation that is not a crowd region."""
    return [r for r in records if any(not a.get("iscrowd", 0) for a in r.get("annotations", []))]


def mapped_batch(mapper, records: list[dict], num_images: int, context: str = "") -> list[dict]:
    """The first `num_images` records the mapper keeps (it may drop one by returning None), mapped; a record
    it cannot read is a `MaskinitError` naming its image (`context` before the message)."""
    batch = []
    for record in records:
        if len(batch) == num_images:
            break
        try:
            item = mapper(record)
        except MAPPER_ERRORS as error:
            raise MaskinitError(
                f"{context}cannot read image {record.get('file_name')}: {type(error).__name__}: {one_line(error)}"
            ) from error
        if item is not None:
            batch.append(item)
    return batch


def coco_batch(
    cfg: CfgNode, train_json: str | Path, train_images: str | Path, num_images: int = 2
) -> tuple[CfgNode, list[dict]]:
    """The config as training sets it for a COCO instances file (classes, mask format), and the file's
    first annotated images, loaded as training loads them with Detectron2's deterministic test-time resize.

    The file is checked first as `check-data` checks it (the JSON, not every image file: only the
    first ones are read), and refused in one line when training would refuse it: pycocotools
    segfaults on some bad polygons.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils

    from .data.coco import apply_dataset_to_cfg, register_coco_dataset
    from .data.mapper import ImageMapper
    from .data.report import enforce_data_policy
    from .data.validate import load_and_check_coco

    _, report = load_and_check_coco(train_json, check_images=False)
    enforce_data_policy(report, skip_bad=False, can_skip=False)
    name = "maskinit_inspect_init"
    cfg = cfg.clone()
    try:
        apply_dataset_to_cfg(cfg, register_coco_dataset(name, train_json, train_images))
        try:
            records = DatasetCatalog.get(name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError) as error:
            raise MaskinitError(f"cannot load {train_json}: {type(error).__name__}: {one_line(error)}") from error
    finally:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)
    records = with_annotations(records)
    if not records:
        raise MaskinitError(f"{train_json} has no image with a (non-crowd) annotation")
    mapper = ImageMapper(
        is_train=True,
        augmentations=detection_utils.build_augmentation(cfg, is_train=False),
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
        channels=len(cfg.MODEL.PIXEL_MEAN),
    )
    return cfg, mapped_batch(mapper, records, num_images)


def dataset_batch(cfg: CfgNode, num_images: int, seed: int = 0, context: str = "") -> list[dict] | None:
    """The first `num_images` records of `DATASETS.TRAIN[0]` (those with an annotation when training
    filters empty images), through the training mapper with its augmentations seeded; None when no
    training set is registered in this process, or it cannot be read."""
    from detectron2.data import DatasetCatalog

    from .augment import build_train_mapper

    names = list(cfg.DATASETS.TRAIN)
    if not names or names[0] not in DatasetCatalog.list():
        return None
    try:
        records = DatasetCatalog.get(names[0])
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
        # Detectron2 registers its builtin sets (coco_2017_train, the default) whether or not the files exist:
        # a config built without data still gets a model; a training run stops on the set itself later.
        logger.warning("%straining set %s unreadable (%s): on generated images", context, names[0], one_line(error))
        return None
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        records = with_annotations(records)
    with seeded_rng(seed):
        batch = mapped_batch(build_train_mapper(cfg), records, num_images, context)
    classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    for item in batch:
        instances = item.get("instances")
        labels = instances.gt_classes if instances is not None and instances.has("gt_classes") else None
        if labels is not None and len(labels) and int(labels.max()) >= classes:
            raise MaskinitError(
                f"{context}training set {names[0]} has class index {int(labels.max())}, but the config has "
                f"MODEL.ROI_HEADS.NUM_CLASSES {classes}: build the model from the config the data was registered for"
            )
    return batch or None
