"""Training augmentation chosen by `cfg.MASKINIT.AUGMENT`: Detectron2's default, or Large-Scale Jitter.

`lsj` is the resize-and-crop of Detectron2's `configs/new_baselines/*_LSJ.py` (after Google's TPU
detection `resize_and_crop_image`): `T.ResizeScale(min, max, size, size)` fits the image into a square
of a random scale, `T.FixedSizeCrop((size, size))` crops (or pads, image with 128, segmentation with
255) to exactly `size x size`, `T.RandomFlip()` flips horizontally; boxes are recomputed from the
cropped masks (`recompute_boxes=True`), as the source does. The pad value 128 is about the mean of
8-bit colour pixels; an image of any other kind (gray, 16-bit, N-channel, see
`maskinit.data.mapper`) is padded with the data's mean per channel (`MODEL.PIXEL_MEAN`), 0 after
normalization, as the model pads the images of a batch.

Both augmentations run in `maskinit.data.mapper.ImageMapper`, which reads every image kind. With
`MASKINIT.AUGMENT.COPY_PASTE.PROB` above 0, that mapper is wrapped by `maskinit.copy_paste`'s
`CopyPasteMapper` (Simple Copy-Paste), which maps a second training image with it and pastes objects.

fvcore's `CropTransform` clips polygon masks with shapely, which is not a maskinit dependency: the
crop here uses shapely when it is installed and an exact rectangle clip in numpy otherwise.
"""

from __future__ import annotations

import functools

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from .copy_paste import check_copy_paste
from .errors import MaskinitError

AUGMENTATIONS = ("default", "lsj")


def check_augment(cfg: CfgNode) -> None:
    """A MaskinitError naming the first bad `MASKINIT.AUGMENT` value."""
    aug = cfg.MASKINIT.AUGMENT
    if aug.NAME not in AUGMENTATIONS:
        raise MaskinitError(f"unknown MASKINIT.AUGMENT.NAME {aug.NAME!r} (known: {', '.join(AUGMENTATIONS)})")
    if aug.NAME == "lsj":
        if not 0 < aug.LSJ_MIN_SCALE <= aug.LSJ_MAX_SCALE:
            raise MaskinitError(
                f"MASKINIT.AUGMENT LSJ scales must satisfy 0 < LSJ_MIN_SCALE <= LSJ_MAX_SCALE, "
                f"got {aug.LSJ_MIN_SCALE} and {aug.LSJ_MAX_SCALE}"
            )
        if aug.LSJ_IMAGE_SIZE < 1:
            raise MaskinitError(f"MASKINIT.AUGMENT.LSJ_IMAGE_SIZE must be at least 1, got {aug.LSJ_IMAGE_SIZE}")
    check_copy_paste(cfg)


def clip_polygon(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The part of a polygon (N x 2, absolute x, y) inside the box [x0, x1] x [y0, y1].

    Sutherland-Hodgman against the box's four sides: exact for the convex clip window. A concave
    polygon that the window cuts into several pieces comes back as one ring whose pieces are joined
    by zero-area runs along the window border, which rasterize to the same pixels.
    """
    poly = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if len(poly) == 0:
            break
        inside = poly[:, axis] >= bound if keep_above else poly[:, axis] <= bound
        out = []
        prev, prev_in = poly[-1], inside[-1]
        for cur, cur_in in zip(poly, inside):
            if cur_in != prev_in:  # the edge crosses the side: add the crossing point
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                point = prev + t * (cur - prev)
                point[axis] = bound
                out.append(point)
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
        poly = np.asarray(out, dtype=np.float64).reshape(-1, 2)
    return poly


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


class ClippingCropTransform(T.CropTransform):
    """fvcore's CropTransform, with polygons clipped in numpy when shapely is not installed."""

    def apply_polygons(self, polygons: list) -> list:
        if not has_shapely():
            x1, y1 = self.x0 + self.w, self.y0 + self.h
            clipped = (clip_polygon(p, self.x0, self.y0, x1, y1) for p in polygons)
            return [self.apply_coords(p) for p in clipped if len(p) >= 3 and polygon_area(p) > 0]
        return super().apply_polygons(polygons)


@functools.cache
def has_shapely() -> bool:
    """Whether shapely imports, asked once per process: a failed import is not cached by Python, and
    searching for it again for every cropped annotation cost about a third of an LSJ image's mapping."""
    try:
        import shapely.geometry  # noqa: F401
    except ImportError:
        return False
    return True


class ChannelPadTransform(T.PadTransform):
    """fvcore's PadTransform with one image pad value per channel (`pad_value` a sequence); segmentation
    masks keep its single `seg_pad_value`."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        # Re-states fvcore 0.1.5's PadTransform.apply_image (np.pad of ((y0, y1), (x0, x1)) with a
        # constant), once per channel.
        padding = ((self.y0, self.y1), (self.x0, self.x1))
        planes = [np.pad(img[:, :, c], padding, constant_values=value) for c, value in enumerate(self.pad_value)]
        return np.stack(planes, axis=2)


class FixedSizeCrop(T.FixedSizeCrop):
    """Detectron2's FixedSizeCrop (same random offset, same padding); its crop is a ClippingCropTransform.

    `channel_pad` (one value per channel, `MODEL.PIXEL_MEAN`): the pad of every image but an 8-bit
    3-channel one, which keeps Detectron2's `pad_value`.
    """

    def __init__(self, crop_size, pad: bool = True, pad_value: float = 128.0, seg_pad_value: int = 255,
                 channel_pad=None):
        super().__init__(crop_size, pad=pad, pad_value=pad_value, seg_pad_value=seg_pad_value)
        self.channel_pad = tuple(float(value) for value in channel_pad) if channel_pad is not None else None

    def _get_crop(self, image: np.ndarray) -> T.Transform:
        crop = super()._get_crop(image)  # Detectron2 private method, overridden for its transform's type
        return ClippingCropTransform(crop.x0, crop.y0, crop.w, crop.h, crop.orig_w, crop.orig_h)

    def _get_pad(self, image: np.ndarray) -> T.Transform:
        pad = super()._get_pad(image)  # Detectron2 private method: the same padding, other values
        eight_bit_colour = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if self.channel_pad is None or eight_bit_colour or image.ndim != 3:
            return pad
        if len(self.channel_pad) != image.shape[2]:
            raise MaskinitError(
                f"LSJ padding: {len(self.channel_pad)} pad values (MODEL.PIXEL_MEAN) "
                f"for an image of {image.shape[2]} channels"
            )
        return ChannelPadTransform(pad.x0, pad.y0, pad.x1, pad.y1, pad.orig_w, pad.orig_h,
                                   self.channel_pad, pad.seg_pad_value)


def build_train_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """The training augmentations of `MASKINIT.AUGMENT.NAME` (default: what Detectron2's DatasetMapper builds)."""
    from detectron2.data import detection_utils

    check_augment(cfg)
    aug = cfg.MASKINIT.AUGMENT
    if aug.NAME == "default":
        augmentations = detection_utils.build_augmentation(cfg, is_train=True)
        if cfg.INPUT.CROP.ENABLED:
            augmentations.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return augmentations
    size = int(aug.LSJ_IMAGE_SIZE)
    return [
        T.ResizeScale(
            min_scale=float(aug.LSJ_MIN_SCALE),
            max_scale=float(aug.LSJ_MAX_SCALE),
            target_height=size,
            target_width=size,
        ),
        # Detectron2 0.7.2's defaults, which the LSJ configs use: pad the image with 128, segmentation with 255;
        # images other than 8-bit colour with the data's mean.
        FixedSizeCrop(
            crop_size=(size, size), pad=True, pad_value=128.0, seg_pad_value=255, channel_pad=cfg.MODEL.PIXEL_MEAN
        ),
        T.RandomFlip(horizontal=True),
    ]


def build_train_mapper(cfg: CfgNode):
    """The training mapper (`maskinit.data.mapper.ImageMapper`, Detectron2's DatasetMapper reading every
    image kind): for `default`, built from `INPUT.*` as Detectron2 builds its own; for `lsj`, with the LSJ
    augmentations and `recompute_boxes=True`. With `MASKINIT.AUGMENT.COPY_PASTE.PROB` above 0 it is
    wrapped by `maskinit.copy_paste.CopyPasteMapper`, whose source images are the records of
    `DATASETS.TRAIN` (registered before this is called)."""
    from .copy_paste import build_copy_paste_mapper
    from .data.mapper import ImageMapper

    check_augment(cfg)
    if cfg.MASKINIT.AUGMENT.NAME == "default":
        mapper = ImageMapper(cfg, is_train=True)
    elif not cfg.MODEL.MASK_ON:
        raise MaskinitError("MASKINIT.AUGMENT.NAME lsj recomputes boxes from the masks: it needs MODEL.MASK_ON")
    else:
        mapper = ImageMapper(cfg, is_train=True, augmentations=build_train_augmentations(cfg), recompute_boxes=True)
    if cfg.MASKINIT.AUGMENT.COPY_PASTE.PROB > 0:
        return build_copy_paste_mapper(cfg, mapper)
    return mapper
