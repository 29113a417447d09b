"""What an image file holds, from its header: its size and kind as `maskinit.data.images.read_image` would
read it, and whether that reader would fail on it, without decoding the pixels where the format allows.

`check-data` probes every image of a dataset this way (`probe_image`), so it must be cheap and agree with
the reader: size and kind come from the header where the format has one to trust (PNG and JPEG: Pillow's,
turned as the EXIF orientation turns it; TIFF: tifffile's; .npy: numpy's), and what the reader's rules
refuse is judged by the same rules (`images.array_kind`, `images.tiff_image_shape`). What a header does not
prove is checked without decoding: PNG chunk checksums, a JPEG's end-of-image marker, TIFF pixel data
inside the file. Other formats are decoded in full. `tests/test_image_kinds.py` checks both agree.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from ..errors import MaskinitError
from .images import (
    EXIF_ORIENTATION,
    TIFF_SUFFIXES,
    TRANSPOSING_ORIENTATIONS,
    array_kind,
    image_kind,
    read_image,
    tiff_image_shape,
    tiff_orientation,
)

# OpenCV's IMREAD_UNCHANGED channels per PNG colour type (IHDR), without / with a tRNS chunk: gray
# stays 1 channel either way, RGB and palette images with a transparent colour become BGRA.
_PNG_CHANNELS = {0: (1, 1), 2: (3, 4), 3: (3, 4), 4: (4, 4), 6: (4, 4)}

Header = tuple[tuple[int, int], tuple[int, str]]  # ((height, width), (channels, dtype name))


class UnreadableImage(Exception):
    """An image file maskinit's reader would fail on; the message says why."""


def _jpeg_is_complete(path: str) -> bool:
    """A JPEG ends with the EOI marker; Pillow's `verify` does not look, its decoder fails late."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64))
        tail = handle.read().rstrip(b"\x00\r\n\t ")
    return tail.endswith(b"\xff\xd9")


def _kind(shape: tuple, dtype, what: str) -> Header:
    """((height, width), kind) of an array of this shape and type, or `UnreadableImage` (the reader's rules)."""
    try:
        kind = array_kind(shape, dtype, what)
    except ValueError as error:
        raise UnreadableImage(str(error)) from error
    return (int(shape[0]), int(shape[1])), kind


def tiff_header(path: str) -> Header:
    """Size and kind of a TIFF from its header (tifffile's first series), as `read_image` loads it; its
    strips or tiles must lie inside the file."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
            orientation = tiff_orientation(tiff.pages[0])
            size = os.path.getsize(path)
            if series.dataoffset is not None:  # one contiguous block (tifffile's own files: several pages of it)
                end = series.dataoffset + series.nbytes
            else:
                end = max((offset + count for page in series.pages if page is not None
                           for offset, count in zip(page.dataoffsets, page.databytecounts)), default=0)
            if end > size:
                raise UnreadableImage(f"truncated TIFF: pixel data up to byte {end}, the file has {size}")
    except UnreadableImage:
        raise
    except Exception as error:  # noqa: BLE001 - tifffile raises many types for a broken file
        raise UnreadableImage(f"not a TIFF tifffile can read ({type(error).__name__}: {error})") from error
    try:
        shape = tiff_image_shape(shape, axes)
    except ValueError as error:
        raise UnreadableImage(str(error)) from error
    (height, width), kind = _kind(shape, dtype, "a TIFF")
    if orientation in TRANSPOSING_ORIENTATIONS:
        height, width = width, height
    return (height, width), kind


def npy_header(path: str) -> Header:
    """Size and kind of a .npy array from its header (a memory map: no pixel is read, but a file shorter
    than its header says fails)."""
    import numpy as np

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise UnreadableImage(f"not a numpy .npy array ({type(error).__name__}: {error})") from error
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise UnreadableImage("not a numpy .npy array (an archive of several)")
    return _kind(array.shape, array.dtype, "an array")


def pillow_header(path: str) -> Header | None:
    """Size and kind of a PNG or JPEG from its header, turned as its EXIF orientation turns it; PNG chunk
    checksums are verified without decompressing and a JPEG must end with its end-of-image marker.
    None for another format, or one Pillow does not know."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image_format, (width, height) = image.format, image.size
            if image_format not in ("PNG", "JPEG", "MPO"):
                return None
            if image.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            transparent = "transparency" in image.info
            gray = image.mode in ("1", "L")
        if image_format == "PNG":
            with Image.open(path) as image:  # verify() must come first on a freshly opened file
                image.verify()
            with open(path, "rb") as handle:  # IHDR is the first chunk: bit depth and colour type at bytes 24, 25
                depth, colour_type = handle.read(26)[24:26]
            channels = _PNG_CHANNELS[colour_type][transparent]
            return (height, width), (channels, "uint16" if depth == 16 else "uint8")
    except Image.UnidentifiedImageError:
        return None
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, struct.error, zlib.error,
            Image.DecompressionBombError) as error:
        raise UnreadableImage(f"{type(error).__name__}: {error}") from error
    if not _jpeg_is_complete(path):
        raise UnreadableImage("truncated JPEG (no end-of-image marker)")
    return (height, width), (1 if gray else 3, "uint8")


def decoded_header(path: str) -> Header:
    """Size and kind of any other image, decoded in full by `read_image`."""
    try:
        array = read_image(path)
    except MaskinitError as error:
        raise UnreadableImage(str(error).removeprefix(f"cannot read image {path}: ")) from error
    return array.shape[:2], image_kind(array)


def image_header(path: str | Path) -> Header:
    """((height, width), (channels, dtype)) of an image file as `read_image` would load it (EXIF-turned),
    from its header where the format has one; `UnreadableImage` or `OSError` when the reader would fail."""
    path = str(path)
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return tiff_header(path)
    if suffix == ".npy":
        return npy_header(path)
    return pillow_header(path) or decoded_header(path)


def probe_image(path: str, height, width) -> tuple[tuple[str, str] | None, tuple[int, str] | None]:
    """((problem kind, detail) or None, (channels, dtype) or None): whether maskinit's reader (which
    training uses) can read this image and gives it the JSON's size, and the image's kind (None when
    unreadable). The problem kinds are `check-data`'s: missing_image_file, unreadable_image, image_size_mismatch.
    """
    if not os.path.isfile(path):
        return ("missing_image_file", "not found"), None
    try:
        (loaded_height, loaded_width), kind = image_header(path)
    except UnreadableImage as error:
        return ("unreadable_image", str(error)[:100]), None
    except OSError as error:
        return ("unreadable_image", f"{type(error).__name__}: {error}"[:100]), None
    if (loaded_height, loaded_width) != (height, width):
        return (
            "image_size_mismatch",
            f"{loaded_width}x{loaded_height} on disk, {width:g}x{height:g} in the JSON",
        ), kind
    return None, kind


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as maskinit's reader loads it (EXIF-turned), from its header where the
    format has one (as `check-data` reads it); `MaskinitError` naming the file when it cannot be read."""
    if not os.path.isfile(path):
        raise MaskinitError(f"image {path} not found")
    try:
        return image_header(path)[0]
    except (UnreadableImage, OSError) as error:
        raise MaskinitError(f"cannot read image {path}: {error}") from error
