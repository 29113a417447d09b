"""maskinit.deploy's runner on its own: the steps around the exported graph (resize, box scaling, mask
pasting) against Detectron2's own, and how it tells an exported file from anything else."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from detectron2.data.transforms import ResizeShortestEdge, ResizeTransform
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from maskinit.deploy import (
    DeployError,
    is_exported_model,
    model_format,
    paste_masks,
    postprocess,
    read_metadata,
    resize_linear,
    resize_pillow,
    resize_pillow_numpy,
    resize_shape,
)

RNG = np.random.default_rng(0)
# (height, width) -> (new height, new width): growing, shrinking, one side, both, odd ratios
SIZES = [((128, 128), (800, 800)), ((97, 131), (64, 85)), ((300, 200), (128, 85)), ((50, 70), (50, 123)),
         ((61, 40), (133, 40)), ((257, 311), (800, 968)), ((40, 33), (17, 14)), ((128, 96), (171, 128))]


def test_resize_shape_is_resize_shortest_edge():
    for height, width in [(128, 128), (480, 640), (640, 480), (1000, 37), (37, 1000), (333, 517)]:
        for min_size, max_size in [(128, 128), (800, 1333), (512, 640), (0, 1333)]:
            if min_size == 0:
                assert resize_shape(height, width, min_size, max_size) == (height, width)
                continue
            expected = ResizeShortestEdge.get_output_shape(height, width, min_size, max_size)
            assert resize_shape(height, width, min_size, max_size) == expected


@pytest.mark.parametrize("channels", [1, 3])
def test_8bit_resize_is_detectron2s_pillow_resize(channels):
    for (height, width), (new_h, new_w) in SIZES:
        image = RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)
        expected = ResizeTransform(height, width, new_h, new_w).apply_image(image)
        assert np.array_equal(resize_pillow(image, new_h, new_w), expected.reshape(new_h, new_w, channels))


@pytest.mark.slow
def test_numpy_copy_of_pillow_is_exact_where_pillow_runs_horizontal_first():
    """Without Pillow: bit for bit when one side changes or both grow (the common upscale to the model's
    size), within one level otherwise (some Pillow versions run the vertical pass first)."""
    for (height, width), (new_h, new_w) in SIZES:
        for channels in (1, 3):
            image = RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)
            expected = ResizeTransform(height, width, new_h, new_w).apply_image(image).reshape(new_h, new_w, channels)
            mine = resize_pillow_numpy(image, new_h, new_w)
            difference = np.abs(mine.astype(int) - expected).max()
            if new_h == height or new_w == width or (new_h > height and new_w > width):
                assert difference == 0, ((height, width), (new_h, new_w))
            assert difference <= 1, ((height, width), (new_h, new_w))


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 2, 4, 13])
def test_other_kinds_resize_as_detectron2s_interpolate(channels):
    for (height, width), (new_h, new_w) in SIZES:
        image = (RNG.random((height, width, channels)) * 4095).astype(np.float32)
        expected = ResizeTransform(height, width, new_h, new_w).apply_image(image)
        np.testing.assert_allclose(resize_linear(image, new_h, new_w), expected.reshape(new_h, new_w, channels),
                                   rtol=1e-6, atol=1e-3)  # float32 rounding of the last step


def test_masks_are_pasted_as_detectron2_pastes_them():
    compared = 0
    for _ in range(40):
        height, width = (int(v) for v in RNG.integers(20, 200, 2))
        corner = RNG.random((6, 2)) * [width * 0.8, height * 0.8]
        size = RNG.random((6, 2)) * [width * 0.5, height * 0.5] + 0.3
        boxes = np.concatenate([corner, np.minimum(corner + size, [width, height])], axis=1).astype(np.float32)
        probs = RNG.random((6, 14, 14)).astype(np.float32)
        expected = paste_masks_in_image(torch.from_numpy(probs), torch.from_numpy(boxes), (height, width)).numpy()
        assert np.array_equal(paste_masks(probs, boxes, height, width), expected)
        compared += int(expected.sum())
    assert compared > 1000


def test_postprocess_is_detector_postprocess():
    """Scaled from the resized input to the image, clipped, empty boxes dropped, masks pasted."""
    boxes = np.array([[3.2, 4.1, 60.7, 50.3], [100.0, 10.0, 140.0, 30.0], [10.0, 10.0, 10.0, 20.0], [-5, 60, 30, 100]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 2, 1, 1])
    probs = RNG.random((4, 28, 28)).astype(np.float32)
    instances = Instances((96, 128), pred_boxes=Boxes(torch.from_numpy(boxes.copy())), scores=torch.from_numpy(scores),
                          pred_classes=torch.from_numpy(classes), pred_masks=torch.from_numpy(probs[:, None]))
    expected = detector_postprocess(instances, 150, 200)
    found = postprocess(boxes, scores, classes, probs, (96, 128), (150, 200))
    assert len(found) == len(expected) == 3  # the zero-width box is dropped
    np.testing.assert_allclose(found.boxes, expected.pred_boxes.tensor.numpy(), rtol=1e-6)
    assert np.array_equal(found.classes, expected.pred_classes.numpy())
    assert np.array_equal(found.masks, expected.pred_masks.numpy())
    assert found.masks.any(axis=(1, 2)).all()


def test_format_is_told_by_content(tmp_path):
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, checkpoint)  # a zip archive too, without the metadata
    assert not is_exported_model(checkpoint)
    with pytest.raises(DeployError, match="a training checkpoint"):
        model_format(checkpoint)
    archive = tmp_path / "model.ts"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("model/extra/maskinit.json", json.dumps({"export_version": 99}))
    assert model_format(archive) == "torchscript"
    with pytest.raises(DeployError, match="export version 99"):
        read_metadata(archive)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert not is_exported_model(text) and not is_exported_model(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(DeployError, match="onnxruntime .* cannot load"):
        read_metadata(broken)
