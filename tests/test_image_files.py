"""maskinit.data.image_files: an image's size and kind from its header, as read_image would read it, and the
files the reader would fail on (truncated, corrupt, archives); `image_size` names the file it cannot read.
Every image kind and layout against the reader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_image_kinds import KINDS, bands, gray, write_npy, write_png, write_tiff

from maskinit.data.image_files import image_header, image_size, probe_image
from maskinit.data.images import image_kind, read_image
from maskinit.data.synthetic import generate_coco_dataset
from maskinit.errors import MaskinitError


def colour(height=20, width=30):
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_an_exif_turned_jpeg_has_the_size_the_reader_gives_it(tmp_path, orientation):
    image = Image.fromarray(colour())
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    image.save(path, exif=exif)
    read = read_image(path)
    assert image_header(path) == (read.shape[:2], (3, "uint8"))
    assert image_size(path) == ((30, 20) if orientation in (6, 8) else (20, 30))
    assert probe_image(str(path), *read.shape[:2]) == (None, (3, "uint8"))


def test_a_truncated_jpeg_and_a_png_with_a_bad_checksum_are_unreadable(tmp_path):
    jpeg, png = tmp_path / "cut.jpg", tmp_path / "bad.png"
    cv2.imwrite(str(jpeg), colour(64, 64))
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    cv2.imwrite(str(png), colour(64, 64))
    data = bytearray(png.read_bytes())
    data[60] ^= 0xFF  # inside the image data chunk: its CRC no longer matches
    png.write_bytes(bytes(data))
    assert probe_image(str(jpeg), 64, 64) == (("unreadable_image", "truncated JPEG (no end-of-image marker)"), None)
    problem, kind = probe_image(str(png), 64, 64)
    assert problem[0] == "unreadable_image" and kind is None
    assert probe_image(str(tmp_path / "gone.png"), 64, 64) == (("missing_image_file", "not found"), None)


def test_an_npz_archive_is_not_an_image(tmp_path):
    path = tmp_path / "several.npy"
    with open(path, "wb") as handle:
        np.savez(handle, a=np.zeros((4, 4)), b=np.ones((4, 4)))
    problem, _ = probe_image(str(path), 4, 4)
    assert problem[0] == "unreadable_image" and "not a numpy .npy array" in problem[1]


def test_a_size_that_differs_from_the_json_says_both(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), colour())
    assert probe_image(str(path), 20, 31) == (("image_size_mismatch", "30x20 on disk, 31x20 in the JSON"), (3, "uint8"))


def test_image_size_names_the_file_and_keeps_the_cause(tmp_path):
    with pytest.raises(MaskinitError, match=r"^image .*missing\.png not found$"):
        image_size(tmp_path / "missing.png")
    (tmp_path / "garbage.tif").write_bytes(b"not a tiff")
    with pytest.raises(
        MaskinitError, match=r"^cannot read image .*garbage\.tif: not a TIFF tifffile can read"
    ) as caught:
        image_size(tmp_path / "garbage.tif")
    assert caught.value.__cause__ is not None


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """One synthetic 8-bit colour picture (128 x 128)."""
    files = generate_coco_dataset(tmp_path_factory.mktemp("picture"), 1, seed=4)
    return cv2.imread(str(next(files.image_root.iterdir())))


def header_cases(folder: Path, bgr: np.ndarray) -> list[Path]:
    """Files of many kinds and layouts, whose header must tell what read_image reads."""
    paths = [convert(folder / kind, bgr) for kind, (_, _, convert) in KINDS.items()]
    bgra = np.concatenate([bgr, gray(bgr)[:, :, None]], axis=2)
    paths += [
        write_png(folder / "bgra8", bgra),
        write_png(folder / "bgr16", bgr.astype(np.uint16) * 257),
        write_png(folder / "bgra16", bgra.astype(np.uint16) * 257),
        write_tiff(
            folder / "planar", np.moveaxis(bands(bgr, 5), 2, 0), photometric="minisblack", planarconfig="separate"
        ),
        write_tiff(folder / "gray-float", gray(bgr).astype(np.float32)),
        write_tiff(folder / "rgb8", bgr[:, :, ::-1], photometric="rgb", compression="zlib"),
        write_npy(folder / "gray-npy", gray(bgr)),
        write_npy(folder / "band16-npy", bands(bgr, 16).astype(np.float64)),
    ]
    from PIL import Image

    Image.fromarray(bgr[:, :, ::-1]).convert("P").save(folder / "palette.png")
    Image.fromarray(bgr[:, :, ::-1]).save(folder / "transparent.png", transparency=(1, 2, 3))
    Image.fromarray(gray(bgr)).save(folder / "gray.jpg")
    Image.fromarray(bgr[:, :, ::-1]).save(folder / "colour.bmp")
    return paths + [folder / name for name in ("palette.png", "transparent.png", "gray.jpg", "colour.bmp")]


def test_headers_tell_the_size_and_kind_read_image_reads(tmp_path, pictures):
    for path in header_cases(tmp_path, pictures):
        array = read_image(path)
        problem, kind = probe_image(str(path), *array.shape[:2])
        assert problem is None, (path.name, problem)
        assert kind == image_kind(array), path.name
        problem, _ = probe_image(str(path), array.shape[0], array.shape[1] + 1)
        assert problem[0] == "image_size_mismatch", path.name


def test_broken_tiff_and_npy_are_unreadable(tmp_path, pictures):
    tiff = write_tiff(tmp_path / "image", bands(pictures, 4), photometric="minisblack")
    npy = write_npy(tmp_path / "image", bands(pictures, 4))
    for path in (tiff, npy):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        problem, kind = probe_image(str(path), 128, 128)
        assert problem[0] == "unreadable_image" and kind is None, problem
        with pytest.raises(MaskinitError):
            read_image(path)  # and the reader agrees
    channels_first = write_npy(tmp_path / "first", np.zeros((3, 50, 40), np.uint8))
    assert probe_image(str(channels_first), 3, 50)[0] == (
        "unreadable_image",
        "an array of shape (3, 50, 40) looks channels-first; save it as (H, W) or (H, W, C)",
    )
