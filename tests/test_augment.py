"""MASKINIT.AUGMENT: the Large-Scale-Jitter mapper (exact output size, boxes in the crop, masks that
follow the image) and its wiring into the trainer's train loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.data.detection_utils import polygons_to_bitmask, read_image

from maskinit import MaskinitError, load_config
from maskinit.augment import (
    FixedSizeCrop,
    build_train_augmentations,
    build_train_mapper,
    clip_polygon,
    polygon_area,
)
from maskinit.data.synthetic import generate_coco_dataset


def lsj_config(size=64, min_scale=0.1, max_scale=2.0, *extra):
    return load_config(
        preset="tiny",
        overrides=[  # the mappers alone, Copy-Paste (tiny's default) off
            "MASKINIT.AUGMENT.COPY_PASTE.PROB", "0.0", "MASKINIT.AUGMENT.NAME", "lsj",
            "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", str(size), "MASKINIT.AUGMENT.LSJ_MIN_SCALE", str(min_scale),
            "MASKINIT.AUGMENT.LSJ_MAX_SCALE", str(max_scale), *extra,
        ],
    )


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    files = generate_coco_dataset(tmp_path_factory.mktemp("coco"), 2, seed=0)
    return files, load_coco_json(str(files.json_file), str(files.image_root))


def test_default_mapper_has_detectron2s_augmentations():
    from maskinit.data.mapper import ImageMapper

    cfg = load_config(preset="tiny", overrides=["MASKINIT.AUGMENT.COPY_PASTE.PROB", "0.0"])  # the mapper alone
    assert cfg.MASKINIT.AUGMENT.NAME == "default"
    kinds = [type(aug) for aug in build_train_augmentations(cfg)]
    assert kinds == [T.ResizeShortestEdge, T.RandomFlip]
    mapper = build_train_mapper(cfg)  # maskinit's reader, Detectron2's augmentations from INPUT.*
    assert isinstance(mapper, ImageMapper) and not mapper.recompute_boxes and mapper.channels == 3
    assert [type(aug) for aug in mapper.augmentations.augs] == kinds


def test_lsj_augmentations_are_detectron2s():
    resize, crop, flip = build_train_augmentations(lsj_config(64, 0.25, 1.5))
    assert isinstance(resize, T.ResizeScale)
    assert (resize.min_scale, resize.max_scale, resize.target_height, resize.target_width) == (0.25, 1.5, 64, 64)
    assert isinstance(crop, T.FixedSizeCrop) and isinstance(crop, FixedSizeCrop)
    assert (crop.crop_size, crop.pad, crop.pad_value, crop.seg_pad_value) == ((64, 64), True, 128.0, 255)
    assert isinstance(flip, T.RandomFlip) and flip.horizontal


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["MASKINIT.AUGMENT.NAME", "mosaic"], "unknown MASKINIT.AUGMENT.NAME"),
        (["MASKINIT.AUGMENT.NAME", "lsj", "MASKINIT.AUGMENT.LSJ_MIN_SCALE", "3.0"], "LSJ_MIN_SCALE"),
        (["MASKINIT.AUGMENT.NAME", "lsj", "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "0"], "LSJ_IMAGE_SIZE"),
    ],
)
def test_bad_augment_values_are_refused(overrides, message):
    with pytest.raises(MaskinitError, match=message):
        load_config(preset="tiny", overrides=overrides)


def mapped_with_transforms(cfg, record, seed):
    """The mapper's output, and the transforms the same random draws give (the mapper draws only in its
    augmentations)."""
    mapper = build_train_mapper(cfg)
    np.random.seed(seed)
    out = mapper(dict(record))
    np.random.seed(seed)
    image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    transforms = T.AugmentationList(build_train_augmentations(cfg))(T.AugInput(image))
    return out, transforms


@pytest.mark.parametrize("scale", [0.4, 1.0, 1.7])
def test_lsj_mapper_output_is_exactly_the_crop_size(coco, scale):
    files, records = coco
    size = 64
    cfg = lsj_config(size, scale, scale)
    for seed, record in enumerate(records):
        out, transforms = mapped_with_transforms(cfg, record, seed)
        assert tuple(out["image"].shape) == (3, size, size)
        instances = out["instances"]
        assert instances.image_size == (size, size)
        assert len(instances) > 0
        boxes = instances.gt_boxes.tensor
        assert (boxes >= 0).all() and (boxes <= size).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        # recompute_boxes: each box is its mask's tight box
        torch.testing.assert_close(boxes, instances.gt_masks.get_bounding_boxes().tensor)
        # below a scale of 1 the resized image is padded with Detectron2's 128 at the bottom and right
        # (the horizontal flip may move the right padding to the left: check the bottom)
        fitted = int(round(size * scale))
        if fitted < size:
            assert (out["image"][:, fitted + 1:, :] == 128).all()
            assert (out["image"][:, : fitted - 1, :] != 128).any()


def test_lsj_masks_follow_the_image(coco):
    """Each mapped polygon mask matches the original mask pushed through the same resize, crop, flip."""
    files, records = coco
    size = 64
    cfg = lsj_config(size, 1.6, 1.6)  # 128 -> 102 pixels, then a random 64 crop
    checked = 0
    for seed, record in enumerate(records):
        out, transforms = mapped_with_transforms(cfg, record, seed)
        assert tuple(out["image"].shape) == (3, size, size)
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        expected_image = transforms.apply_image(image)
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected_image)
        height, width = record["height"], record["width"]
        expected = []
        for ann in record["annotations"]:
            mask = polygons_to_bitmask([np.asarray(p) for p in ann["segmentation"]], height, width)
            moved = transforms.apply_segmentation(mask.astype(np.uint8)).astype(bool)
            if moved.sum() >= 25:  # instances the crop leaves mostly visible
                expected.append(moved)
        mapped = [polygons_to_bitmask(polys, size, size) for polys in out["instances"].gt_masks.polygons]
        for want in expected:
            ious = [(want & got).sum() / (want | got).sum() for got in mapped]
            assert max(ious) > 0.8, ious
            checked += 1
    assert checked >= 2


def test_clip_polygon_is_exact_for_the_window():
    square = np.array([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
    clipped = clip_polygon(square, 0, 0, 10, 10)
    assert polygon_area(clipped) == pytest.approx(25.0)
    assert clipped.min() == 0 and clipped.max() == 5
    assert len(clip_polygon(square, 20, 20, 30, 30)) == 0
    inside = clip_polygon(square, -10, -10, 10, 10)
    assert polygon_area(inside) == pytest.approx(100.0)
    triangle = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    assert polygon_area(clip_polygon(triangle, 0, 0, 10, 10)) == pytest.approx(100.0)


def test_trainer_train_loader_uses_the_lsj_mapper(coco, tmp_path):
    from maskinit.trainer import Trainer

    files, _ = coco
    name = "maskinit_test_lsj_loader"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(files.json_file), str(files.image_root))
    try:
        cfg = lsj_config(64, 0.5, 1.5, "DATASETS.TRAIN", f"('{name}',)", "SOLVER.IMS_PER_BATCH", "2")
        batch = next(iter(Trainer.build_train_loader(cfg)))
        assert len(batch) == 2
        assert all(tuple(item["image"].shape) == (3, 64, 64) for item in batch)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
