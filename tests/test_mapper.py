"""maskinit.data.mapper: Detectron2's augmentations on every image kind as `read_image` reads it (the 8-bit
colour path exactly Detectron2's own), `model_image`'s bridges and refusals, `display_rgb`, `ImageMapper`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.data.transforms import ResizeShortestEdge
from test_image_kinds import NO_COPY_PASTE, write_npy

from maskinit import MaskinitError, load_config
from maskinit.augment import build_train_mapper
from maskinit.data.mapper import ImageMapper, display_rgb, model_image
from maskinit.data.synthetic import generate_coco_dataset


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    files = generate_coco_dataset(tmp_path_factory.mktemp("colour"), 2, seed=3)
    return load_coco_json(str(files.json_file), str(files.image_root))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("augment", ["default", "lsj"])
def test_8bit_colour_maps_exactly_as_detectron2(colour_set, tmp_path, suffix, augment):
    """The 8-bit colour path is unchanged: the same tensors as Detectron2's own mapper and reader."""
    cfg = load_config(preset="tiny", overrides=[*NO_COPY_PASTE, "MASKINIT.AUGMENT.NAME", augment,
                                                "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "96"])
    ours = build_train_mapper(cfg)
    theirs = DatasetMapper(
        cfg, is_train=True, augmentations=ours.augmentations.augs, recompute_boxes=ours.recompute_boxes
    )
    for seed, record in enumerate(colour_set):
        record = dict(record, file_name=str(write_jpeg_or_png(record["file_name"], tmp_path, suffix)))
        np.random.seed(seed)
        mine = ours(record)
        np.random.seed(seed)
        reference = theirs(record)
        assert mine["image"].dtype == torch.uint8
        assert torch.equal(mine["image"], reference["image"])
        torch.testing.assert_close(mine["instances"].gt_boxes.tensor, reference["instances"].gt_boxes.tensor)


def write_jpeg_or_png(path, folder: Path, suffix: str) -> Path:
    target = folder / (Path(path).stem + suffix)
    assert cv2.imwrite(str(target), cv2.imread(str(path)))
    return target


def lsj_config(augment: str, scale: float, *overrides):
    """The tiny preset without Copy-Paste, `augment` (default or lsj) and LSJ at a 64-pixel square, one scale."""
    return load_config(preset="tiny", overrides=[
        *NO_COPY_PASTE, "MASKINIT.AUGMENT.NAME", augment, "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "64",
        "MASKINIT.AUGMENT.LSJ_MIN_SCALE", str(scale), "MASKINIT.AUGMENT.LSJ_MAX_SCALE", str(scale), *overrides])


@pytest.mark.parametrize("channels", [1, 2, 4, 16])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("augment", ["default", "lsj"])
def test_augmentations_take_every_channel_count_and_type(tmp_path, channels, dtype, augment):
    """Resize (down and up), flip, LSJ crop and pad on (H, W, C) arrays of 1 to 16 channels."""
    rng = np.random.default_rng(channels)
    scale = {"uint8": 1, "uint16": 250, "float32": 1 / 255}[dtype]
    array = (rng.integers(0, 256, (60, 90, channels)) * scale).astype(dtype)
    array[10:30, 20:50] = array.max()  # an object
    path = write_npy(tmp_path / "image", array if channels > 1 else array[:, :, 0])
    record = {"file_name": str(path), "height": 60, "width": 90, "image_id": 1, "annotations": [
        {"bbox": [20, 10, 30, 20], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
         "segmentation": [[20, 10, 50, 10, 50, 30, 20, 30]]}]}
    pixels = ["MODEL.PIXEL_MEAN", str([float(array.mean())] * channels), "MODEL.PIXEL_STD", str([1.0] * channels),
              "INPUT.FORMAT", "L" if channels == 1 else "BGR"]
    cfg = lsj_config(augment, 1.5, *pixels)  # LSJ: 60 x 90 -> 64 x 96, cropped to 64 x 64 (the object stays in)
    mapper = build_train_mapper(cfg)
    for seed in range(3):
        np.random.seed(seed)
        item = mapper(record)
        image = item["image"]
        assert image.shape[0] == channels
        if augment == "lsj":
            assert tuple(image.shape[1:]) == (64, 64)
        else:
            assert tuple(image.shape[1:]) == ResizeShortestEdge.get_output_shape(60, 90, 128, 128) == (85, 128)
        assert image.dtype == (torch.uint8 if dtype == "uint8" and channels == 1 else torch.float32)
        highest = float(image.float().max())
        assert 0.9 * float(array.max()) < highest <= float(array.max()) * 1.001
        assert len(item["instances"]) == 1


def test_lsj_pads_other_kinds_with_the_data_mean(tmp_path):
    """Detectron2's 128 is about the mean of 8-bit colour; a 16-bit image is padded with its own mean."""
    array = np.full((40, 40, 2), 30000, np.uint16)
    array[5:20, 5:20] = 60000
    path = write_npy(tmp_path / "image", array)
    record = {"file_name": str(path), "height": 40, "width": 40, "image_id": 1, "annotations": [
        {"bbox": [5, 5, 15, 15], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
         "segmentation": [[5, 5, 20, 5, 20, 20, 5, 20]]}]}
    cfg = lsj_config("lsj", 0.5, "MODEL.PIXEL_MEAN", "[31000.0, 32000.0]", "MODEL.PIXEL_STD", "[9000.0, 9000.0]")
    image = build_train_mapper(cfg)(record)["image"]
    assert tuple(image.shape) == (2, 64, 64)
    assert (image[0, 40:] == 31000).all() and (image[1, 40:] == 32000).all()  # 40x40 at scale 0.5 of 64: 32 rows
    assert image[:, :30, :30].min() >= 30000  # the image itself, in its own units


def test_model_image_bridges_what_detectron2_bridges_and_refuses_the_rest():
    gray8 = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert model_image(gray8, 3, "BGR").shape == (3, 4, 3)
    assert (model_image(gray8, 3, "BGR") == gray8).all()
    bgra = np.stack([np.full((3, 4), value, np.uint8) for value in (1, 2, 3, 4)], axis=2)
    assert model_image(bgra, 3, "BGR", "a.png")[0, 0].tolist() == [1, 2, 3]
    assert model_image(bgra, 3, "RGB", "a.png")[0, 0].tolist() == [3, 2, 1]
    with pytest.raises(MaskinitError, match=r"image a\.tif is 4-channel uint8, but the model takes 3 channels"):
        model_image(bgra, 3, "BGR", "a.tif")  # a 4-band TIFF: its 4th channel is data, not alpha
    assert model_image(bgra, 4, "BGR").dtype == np.float32  # 4 channels: resized in float, not by Pillow
    assert model_image(gray8, 1, "L").dtype == np.uint8
    with pytest.raises(MaskinitError, match=r"image a\.tif is 1-channel uint16, but the model takes 3 channels"):
        model_image(gray8.astype(np.uint16), 3, "BGR", "a.tif")
    with pytest.raises(MaskinitError, match="1-channel uint8, but the model takes 4 channels"):
        model_image(gray8, 4, "BGR", "b.png")


def test_display_rgb_for_each_kind():
    gray8 = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    shown = display_rgb(gray8)
    assert shown.shape == (3, 4, 3) and shown.dtype == np.uint8 and (shown == gray8).all()
    wide = np.linspace(1000, 50000, 400).reshape(20, 20, 1).astype(np.uint16)
    shown = display_rgb(wide)
    assert shown.min() == 0 and shown.max() == 255 and (shown[..., 0] == shown[..., 1]).all()
    band4 = np.stack([np.full((2, 2), value, np.uint8) for value in (10, 20, 30, 40)], axis=2)
    assert display_rgb(band4)[0, 0].tolist() == [30, 20, 10]  # the first three, read as B, G, R
    two = np.stack([np.full((2, 2), 10, np.uint8), np.full((2, 2), 20, np.uint8)], axis=2)
    assert display_rgb(two)[0, 0].tolist() == [15, 15, 15]
    assert (gray8 == np.arange(12, dtype=np.uint8).reshape(3, 4, 1)).all()  # arguments are not changed


def test_image_mapper_without_training_drops_the_annotations_and_checks_the_size(colour_set):
    cfg = load_config(preset="tiny", overrides=NO_COPY_PASTE)
    record = colour_set[0]
    mapper = ImageMapper(cfg, is_train=False)
    assert mapper.channels == len(cfg.MODEL.PIXEL_MEAN) == 3
    item = mapper(record)
    assert "annotations" not in item and item["image"].dtype == torch.uint8 and item["image"].shape[0] == 3
    assert "annotations" in record  # the dataset's own record is left alone
    image = mapper.load(record["file_name"])
    with pytest.raises(Exception, match="Mismatched image shape"):  # Detectron2's check_image_size
        mapper.map_image(dict(record, height=record["height"] + 1), image)
