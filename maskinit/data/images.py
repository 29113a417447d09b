"""The one image reader of maskinit: any image file as an (H, W, C) array in its own dtype.

Detectron2's `read_image` goes through Pillow and turns everything into 8-bit RGB/BGR (or "L"): a
16-bit microscope image loses its low bits, a 4-channel satellite tile its fourth band. `read_image`
here keeps what the file holds:

- PNG, JPEG, BMP and whatever else OpenCV decodes: `cv2.IMREAD_UNCHANGED` (8 or 16 bits, gray,
  BGR or BGRA), turned as its EXIF orientation says, as Detectron2's reader turns it;
- TIFF: `tifffile` (any bit depth, float, 1 to 16 channels, channels stored per pixel or per plane);
  RGB TIFFs come back in BGR order like the others, other multichannel TIFFs in their stored order;
- `.npy`: numpy, (H, W) or (H, W, C), channels in their stored order.

Colour comes back in BGR order (Detectron2's default `INPUT.FORMAT`), grayscale as one channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MaskinitError

# The most channels one image may have: more is a volume, a time series or a channels-first array.
MAX_CHANNELS = 16
TIFF_SUFFIXES = (".tif", ".tiff")
EXIF_ORIENTATION = 0x0112
# The EXIF (and TIFF) orientations that turn an image by 90 degrees: it is read as width x height.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# EXIF orientation -> the numpy view that shows the image upright (as Pillow's ImageOps.exif_transpose).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def image_kind(array: np.ndarray) -> tuple[int, str]:
    """The kind of an image array, (channels, dtype name): (3, "uint8") for a `read_image` of a colour JPEG.
    One model takes one kind of image."""
    return (array.shape[2] if array.ndim == 3 else 1), array.dtype.name


def describe_kind(kind: tuple[int, str]) -> str:
    """An image kind in words: "3-channel uint8"."""
    channels, dtype = kind
    return f"{channels}-channel {dtype}"


def array_kind(shape: tuple, dtype, what: str = "") -> tuple[int, str]:
    """The kind `read_image` gives an array of this shape and type, or ValueError saying why such an array is
    not one image (`what` names it: "an array of shape ..."; without, "shape ..."). The rules of every image
    maskinit reads, applied to a decoded array and to a header alike (check-data judges files by their header)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(side) for side in shape)
    of_shape = f"{what} of shape {shape}" if what else f"shape {shape}"
    if len(shape) == 3 and shape[2] > MAX_CHANNELS and shape[0] <= MAX_CHANNELS:
        raise ValueError(f"{of_shape} looks channels-first; save it as (H, W) or (H, W, C)")
    if len(shape) not in (2, 3) or (len(shape) == 3 and not 1 <= shape[2] <= MAX_CHANNELS):
        raise ValueError(f"{of_shape} is not (H, W) or (H, W, C) with 1 to {MAX_CHANNELS} channels")
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        raise ValueError(f"{what + ' of ' if what else ''}pixels of type {dtype} (integers or floats are needed)")
    if 0 in shape:
        raise ValueError(f"{what or 'it'} is empty (shape {shape})")
    return (shape[2] if len(shape) == 3 else 1), dtype.name


def tiff_image_shape(shape: tuple, axes: str) -> tuple:
    """A TIFF series' shape as `read_image` returns its pixels (channels last), or ValueError when it is not
    one image. Channels stored as planes or pages (CYX, SYX, QYX) come first; but tifffile.imwrite of an
    (H, W, C) array with C > 4 stores H pages of W x C, which reads back as written: the shorter of the two
    outer axes is the channels."""
    shape = tuple(shape)
    if len(shape) == 3 and not axes.endswith("S") and shape[0] <= MAX_CHANNELS and shape[0] < shape[2]:
        shape = (*shape[1:], shape[0])
    if len(shape) not in (2, 3):
        raise ValueError(f"a TIFF of {len(shape)} dimensions ({axes}) is not one image")
    return shape


def tiff_orientation(page) -> int:
    """The Orientation tag of a tifffile page (1, upright, when it has none)."""
    orientation = page.tags.get("Orientation")
    return int(orientation.value) if orientation is not None else 1


def _upright(array: np.ndarray, orientation) -> np.ndarray:
    turn = _UPRIGHT.get(orientation)
    return array if turn is None else np.ascontiguousarray(turn(array))


def _exif_orientation(path: Path) -> int:
    """The EXIF orientation tag from the file's header (1, upright, when there is none or no header Pillow knows)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - not a format Pillow reads, or a broken header: OpenCV has decoded it
        return 1


def _read_opencv(path: Path) -> np.ndarray:
    import cv2

    # imdecode, not imread: imread prints its own warning for a file it cannot read.
    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise MaskinitError(f"cannot read image {path}: not an image file OpenCV can decode (or a corrupt one)")
    return _upright(array, _exif_orientation(path))


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes, array = series.axes, series.asarray()
            page = tiff.pages[0]
            rgb = page.photometric == tifffile.PHOTOMETRIC.RGB
            orientation = tiff_orientation(page)
    except Exception as error:  # noqa: BLE001 - tifffile raises many types for a broken file
        raise MaskinitError(
            f"cannot read image {path}: not a TIFF tifffile can read ({type(error).__name__}: {error})"
        ) from error
    shape = tiff_image_shape(array.shape, axes)  # a ValueError: read_image names the file
    if shape != array.shape:
        array = np.moveaxis(array, 0, -1)
    if rgb and array.ndim == 3 and array.shape[2] in (3, 4):
        array = np.concatenate([array[..., 2::-1], array[..., 3:]], axis=2)  # RGB(A) -> BGR(A), as OpenCV reads colour
    return _upright(array, orientation)


def _read_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            np.lib.format.read_magic(handle)  # a file that is not .npy fails here, not in np.load's pickle fallback
            handle.seek(0)
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except ValueError as error:
        raise MaskinitError(f"cannot read image {path}: not a numpy .npy array ({error})") from error
    return array


def read_image(path: str | Path) -> np.ndarray:
    """The image at `path` as an (H, W, C) array in the file's own dtype (uint8, uint16, float32, ...).

    C is 1 for grayscale, 3 for colour (BGR), 4 for BGRA or a 4-band image, up to `MAX_CHANNELS`.
    An unreadable file, or one that is not a single 2-D image, raises `MaskinitError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskinitError(f"cannot read image {path}: {'a directory' if path.is_dir() else 'not found'}")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            array = _read_tiff(path)
        elif suffix == ".npy":
            array = _read_npy(path)
        else:
            array = _read_opencv(path)
        array_kind(array.shape, array.dtype)
    except OSError as error:
        raise MaskinitError(f"cannot read image {path}: {error.strerror or error}") from error
    except ValueError as error:  # not one image of a kind maskinit reads
        raise MaskinitError(f"cannot read image {path}: {error}") from error
    return array[:, :, None] if array.ndim == 2 else array
