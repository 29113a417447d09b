"""Batches for a pass before training (maskinit.batches): generated ones (inspect-init's textured images,
LSUV's normal draws), one read from a COCO file through the mapper, the registered training set's, and the
mapping shared by both."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import BitMasks, PolygonMasks

from maskinit import MaskinitError, load_config
from maskinit.batches import (
    coco_batch,
    dataset_batch,
    generated_batch,
    images_per_process,
    mapped_batch,
    synthetic_batch,
    with_annotations,
)
from maskinit.diagnostics import inspect_init


def tiny(norm=None, init=None):
    return load_config(preset="tiny", norm=norm, init=init)


# ----------------------------------------------------------------------------------------- generated


def test_synthetic_batch_is_deterministic_and_valid():
    cfg = tiny()
    first, again = synthetic_batch(cfg, seed=3), synthetic_batch(cfg, seed=3)
    other = synthetic_batch(cfg, seed=4)
    assert len(first) == 2
    for a, b in zip(first, again):
        assert a["image"].equal(b["image"])
    assert not first[0]["image"].equal(other[0]["image"])
    for item in first:
        assert tuple(item["image"].shape) == (3, 128, 128)
        instances = item["instances"]
        assert isinstance(instances.gt_masks, BitMasks)
        assert instances.gt_masks.tensor.flatten(1).any(dim=1).all()
        boxes = instances.gt_boxes.tensor
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 128
        assert (instances.gt_classes < cfg.MODEL.ROI_HEADS.NUM_CLASSES).all()


def test_generated_batch_has_the_model_input_statistics():
    cfg = load_config(preset="tiny", init="lsuv")
    images = generated_batch(cfg, 2, seed=1)
    pixels = torch.stack([item["image"] for item in images])
    assert pixels.shape == (2, len(cfg.MODEL.PIXEL_MEAN), 128, 128)
    mean, std = (torch.tensor(values)[:, None, None] for values in (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD))
    normalized = (pixels - mean) / std
    # noise N(mean, std) per channel, objects one N(mean, std) colour each: unit scale, correlated areas
    assert abs(float(normalized.mean())) < 0.3 and float(normalized.std()) == pytest.approx(1, abs=0.15)
    for item in images:
        boxes = item["instances"].gt_boxes.tensor
        assert len(boxes) == 3 and bool((boxes >= 0).all() and (boxes <= 128).all())
        masks = item["instances"].gt_masks.tensor
        assert masks.shape == (3, 128, 128)
        for box, mask in zip(boxes.int().tolist(), masks):  # each box is its rectangle's, pixel for pixel
            x0, y0, x1, y1 = box
            assert bool(mask[y0:y1, x0:x1].all()) and int(mask.sum()) == (x1 - x0) * (y1 - y0)
    # the same seed, the same images
    assert torch.equal(pixels, torch.stack([item["image"] for item in generated_batch(cfg, 2, seed=1)]))


def test_generated_batch_without_masks_when_the_model_has_no_mask_head():
    cfg = tiny()
    cfg.defrost()
    cfg.MODEL.MASK_ON = False
    (item,) = generated_batch(cfg, 1)
    assert not item["instances"].has("gt_masks") and len(item["instances"].gt_boxes) == 3


def test_images_per_process_is_this_process_share(monkeypatch):
    cfg = tiny()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = 8
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert images_per_process(cfg) == 8
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert images_per_process(cfg) == 2
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert images_per_process(cfg) == 1  # at least one


# ----------------------------------------------------------------------------------------- from data


def write_coco(root, images=2, categories=(3, 7), annotate=True, size=(96, 160)):
    """A COCO instances file with non-contiguous category ids and polygon masks."""
    height, width = size
    (root / "images").mkdir(exist_ok=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    rng = np.random.default_rng(0)
    for index in range(images):
        name = f"img{index}.png"
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        doc["images"].append({"id": index + 1, "file_name": name, "height": height, "width": width})
        if annotate:
            x, y, w, h = 10.0 + index, 12.0, 40.0, 30.0
            doc["annotations"].append({
                "id": index + 1, "image_id": index + 1, "category_id": categories[index % len(categories)],
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
    path = root / "instances.json"
    path.write_text(json.dumps(doc))
    return path, root / "images"


@pytest.mark.slow
def test_coco_batch_reads_and_maps_with_detectron2(tmp_path):
    train_json, train_images = write_coco(tmp_path)
    cfg, batch = coco_batch(tiny(), train_json, train_images)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2  # as training sets it from the file
    assert cfg.INPUT.MASK_FORMAT == "polygon"
    assert len(batch) == 2
    resized = ResizeShortestEdge.get_output_shape(96, 160, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    for item in batch:
        assert tuple(item["image"].shape[1:]) == resized  # Detectron2's deterministic test-time resize
        assert isinstance(item["instances"].gt_masks, PolygonMasks)
    assert sorted(int(item["instances"].gt_classes[0]) for item in batch) == [0, 1]  # ids 3, 7 -> 0, 1
    result = inspect_init(cfg, batch=batch)
    assert result.verdict == "ok", result.advice
    assert tiny().MODEL.ROI_HEADS.NUM_CLASSES == 80  # the caller's config is left alone


def test_coco_batch_refusals(tmp_path):
    cfg = tiny()
    train_json, train_images = write_coco(tmp_path)
    malformed = tmp_path / "malformed.json"
    malformed.write_text("{ not json")
    cases = {
        "not found": (tmp_path / "missing.json", train_images),
        "image folder .* not found": (train_json, tmp_path / "no-images"),
        "not valid JSON": (malformed, train_images),
    }
    for message, (path, images) in cases.items():
        with pytest.raises(MaskinitError, match=message):
            coco_batch(cfg, path, images)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MaskinitError, match="no annotations"):
        coco_batch(cfg, *write_coco(empty, annotate=False))

    lost = tmp_path / "lost"
    lost.mkdir()
    path, images = write_coco(lost)
    (images / "img0.png").unlink()
    with pytest.raises(MaskinitError, match="cannot read image .*img0.png"):
        coco_batch(cfg, path, images)


def test_with_annotations_keeps_records_with_a_non_crowd_annotation():
    records = [
        {"file_name": "a", "annotations": [{"iscrowd": 1}]},
        {"file_name": "b", "annotations": []},
        {"file_name": "c"},
        {"file_name": "d", "annotations": [{"iscrowd": 1}, {"iscrowd": 0}]},
        {"file_name": "e", "annotations": [{}]},
    ]
    assert [r["file_name"] for r in with_annotations(records)] == ["d", "e"]


def test_mapped_batch_skips_what_the_mapper_drops_and_names_what_it_cannot_read():
    records = [{"file_name": name} for name in ("keep1", "drop", "keep2", "keep3")]

    def mapper(record):
        if record["file_name"] == "bad":
            raise OSError("truncated file")
        return None if record["file_name"] == "drop" else {"name": record["file_name"]}

    assert mapped_batch(mapper, records, 2) == [{"name": "keep1"}, {"name": "keep2"}]
    assert len(mapped_batch(mapper, records, 10)) == 3
    with pytest.raises(MaskinitError, match=r"^LSUV batch: cannot read image bad: OSError: truncated file$") as caught:
        mapped_batch(mapper, [{"file_name": "bad"}], 1, context="LSUV batch: ")
    assert isinstance(caught.value.__cause__, OSError)  # the cause is kept (--debug shows it)


def test_dataset_batch_is_none_without_a_registered_training_set():
    cfg = tiny()
    cfg.defrost()
    cfg.DATASETS.TRAIN = ("maskinit_test_batches_not_registered",)
    assert dataset_batch(cfg, 2) is None
    cfg.DATASETS.TRAIN = ()
    assert dataset_batch(cfg, 2) is None
