"""maskinit.data.images.read_image: every file kind comes back as (H, W, C) in its own dtype."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from maskinit.data.images import image_kind, read_image
from maskinit.errors import MaskinitError


def random_image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def test_colour_png_and_jpeg_come_back_bgr_uint8(tmp_path):
    bgr = random_image((20, 30, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    read = read_image(tmp_path / "a.png")
    assert read.dtype == np.uint8 and read.shape == (20, 30, 3)
    np.testing.assert_array_equal(read, bgr)
    flat = np.zeros((16, 16, 3), np.uint8)
    flat[:] = (200, 100, 20)  # blue-heavy in BGR: a red/blue swap would show
    cv2.imwrite(str(tmp_path / "b.jpg"), flat)
    assert np.abs(read_image(tmp_path / "b.jpg").astype(int) - flat).max() <= 2
    assert image_kind(read) == (3, "uint8")


def test_grayscale_is_one_channel_not_three_copies(tmp_path):
    gray = random_image((20, 30), np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "g.bmp"), gray)
    for name in ("g.png", "g.bmp"):
        read = read_image(tmp_path / name)
        assert read.shape == (20, 30, 1)
        np.testing.assert_array_equal(read[:, :, 0], gray)
    assert image_kind(read) == (1, "uint8")


def test_16_bit_png_keeps_its_bits(tmp_path):
    gray16 = random_image((20, 30), np.uint16, seed=1)
    colour16 = random_image((20, 30, 3), np.uint16, seed=2)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    cv2.imwrite(str(tmp_path / "c16.png"), colour16)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[:, :, 0], gray16)
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), colour16)
    assert image_kind(read_image(tmp_path / "g16.png")) == (1, "uint16")


def test_png_alpha_is_kept_as_a_fourth_channel(tmp_path):
    bgra = random_image((20, 30, 4), np.uint8, seed=3)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), bgra)


def test_rgb_tiff_comes_back_bgr_like_the_other_formats(tmp_path):
    bgr16 = random_image((20, 30, 3), np.uint16, seed=4)
    tifffile.imwrite(tmp_path / "c.tif", bgr16[:, :, ::-1], photometric="rgb")
    read = read_image(tmp_path / "c.tif")
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, bgr16)
    gray16 = random_image((20, 30), np.uint16, seed=5)
    tifffile.imwrite(tmp_path / "g.tiff", gray16)
    np.testing.assert_array_equal(read_image(tmp_path / "g.tiff"), gray16[:, :, None])


@pytest.mark.parametrize("layout", ["contig", "planes", "pages_of_rows"])
def test_multichannel_tiff_in_any_layout_comes_back_channels_last(tmp_path, layout):
    bands = random_image((24, 32, 6), np.float32, seed=6)
    path = tmp_path / "m.tif"
    if layout == "contig":  # samples of one pixel together
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")
    elif layout == "planes":  # one page per band (microscopy)
        tifffile.imwrite(path, np.moveaxis(bands, -1, 0), photometric="minisblack")
    else:  # tifffile.imwrite of an (H, W, C) array, stored as H pages of W x C
        tifffile.imwrite(path, bands)
    read = read_image(path)
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, bands)
    assert image_kind(read) == (6, "float32")


def test_four_band_tiff_is_not_reordered(tmp_path):
    bands = random_image((20, 30, 4), np.uint16, seed=7)
    tifffile.imwrite(tmp_path / "b.tif", bands, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif"), bands)


def test_npy_two_and_three_dimensional(tmp_path):
    plane = random_image((20, 30), np.float32, seed=8)
    bands = random_image((20, 30, 5), np.uint16, seed=9)
    np.save(tmp_path / "p.npy", plane)
    np.save(tmp_path / "b.npy", bands)
    np.testing.assert_array_equal(read_image(tmp_path / "p.npy"), plane[:, :, None])
    np.testing.assert_array_equal(read_image(tmp_path / "b.npy"), bands)
    assert image_kind(read_image(tmp_path / "b.npy")) == (5, "uint16")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_image_as_detectron2_does(tmp_path, orientation):
    from detectron2.data.detection_utils import read_image as detectron2_read_image

    rgb = random_image((20, 30, 3), np.uint8, seed=orientation)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.png"  # lossless, so both readers must agree to the pixel
    image.save(path, exif=exif)
    np.testing.assert_array_equal(read_image(path), detectron2_read_image(str(path), format="BGR"))


def test_unreadable_files_raise_one_error_naming_them(tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    (tmp_path / "garbage.tif").write_bytes(b"not a tiff")
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "objects.npy", np.array([object()], dtype=object))
    np.save(tmp_path / "channels_first.npy", np.zeros((3, 40, 50), np.float32))
    np.save(tmp_path / "volume.npy", np.zeros((4, 5, 6, 7), np.float32))
    np.save(tmp_path / "flags.npy", np.zeros((4, 5), bool))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 3, 20, 30), np.uint8), photometric="minisblack")
    (tmp_path / "folder.png").mkdir()
    names = ["missing.png", "folder.png", "garbage.png", "garbage.tif", "garbage.npy", "objects.npy",
             "channels_first.npy", "volume.npy", "flags.npy", "stack.tif"]
    for name in names:
        with pytest.raises(MaskinitError, match=f"cannot read image .*{name}"):
            read_image(tmp_path / name)


def test_one_set_of_rules_for_what_is_one_image():
    """`array_kind` is what read_image refuses and what check-data judges a header by."""
    from maskinit.data.images import MAX_CHANNELS, array_kind, describe_kind

    assert array_kind((20, 30), np.uint8) == (1, "uint8") and array_kind((20, 30, 5), np.float32) == (5, "float32")
    assert describe_kind(array_kind((20, 30, 4), np.uint16)) == "4-channel uint16"
    refused = {
        (3, 40, MAX_CHANNELS + 1): "shape (3, 40, 17) looks channels-first",
        (20, 30, MAX_CHANNELS + 1): f"is not (H, W) or (H, W, C) with 1 to {MAX_CHANNELS} channels",
        (4, 5, 6, 7): "shape (4, 5, 6, 7) is not (H, W)",
        (0, 30): "it is empty (shape (0, 30))",
    }
    for shape, message in refused.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            array_kind(shape, np.uint8)
    with pytest.raises(ValueError, match=r"^an array of pixels of type bool \(integers or floats are needed\)$"):
        array_kind((4, 5), bool, "an array")


def test_tiff_planes_come_last_and_a_stack_is_refused():
    from maskinit.data.images import tiff_image_shape

    assert tiff_image_shape((5, 20, 30), "CYX") == (20, 30, 5)  # planes first: channels last
    assert tiff_image_shape((20, 30, 5), "YXS") == (20, 30, 5)  # samples per pixel: already last
    assert tiff_image_shape((20, 30, 40), "QYX") == (20, 30, 40)  # pages of W x C as tifffile writes them
    with pytest.raises(ValueError, match=r"a TIFF of 4 dimensions \(QQYX\) is not one image"):
        tiff_image_shape((2, 3, 20, 30), "QQYX")


def test_the_cause_of_an_unreadable_file_is_kept(tmp_path):
    np.save(tmp_path / "flags.npy", np.zeros((4, 5), bool))
    with pytest.raises(MaskinitError, match=r"flags\.npy: pixels of type bool") as caught:
        read_image(tmp_path / "flags.npy")
    assert isinstance(caught.value.__cause__, ValueError)
