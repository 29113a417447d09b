"""Every image kind into Detectron2's model input: `ImageMapper`, Detectron2's `DatasetMapper` reading
with maskinit's `read_image` instead of Detectron2's (Pillow, 8-bit RGB/BGR/L only).

An image keeps its channels and its units until the model normalizes it with `MODEL.PIXEL_MEAN` and
`MODEL.PIXEL_STD` (one value per channel; Detectron2 builds the stem with `len(PIXEL_MEAN)` input
channels). Nothing is divided by 255 or 65535 here. Detectron2's augmentations are applied as they are;
they take:

- 8-bit images of 1 or 3 channels as uint8: Detectron2's `ResizeTransform` resizes them with Pillow
  ("L" for an (H, W, 1) array), exactly as for the images Detectron2 reads itself;
- every other kind (16 bits, floats, 2 or 4 to 16 channels, also 8-bit ones: Pillow cannot take more
  than 4 channels and premultiplies a 4th as alpha) as float32 in the file's units: `ResizeTransform`
  resizes those with `torch.nn.functional.interpolate`, bilinear too (without Pillow's antialiasing
  when shrinking).

This split is Detectron2 0.7.2's `ResizeTransform.apply_image` (Pillow for uint8, torch for other
types), a behaviour of its internals relied on here; the tests run every kind through it.

The tensor given to the model is (C, H, W), uint8 for the first case (as Detectron2's own mapper
gives it; the model subtracts its float mean) and float32 otherwise.

8-bit colour images come out of OpenCV exactly as out of Detectron2's Pillow reader (both decode PNG
losslessly and JPEG with the same libjpeg-turbo; the tests compare them), so a colour data set gives
the model the same tensors as before.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..errors import MaskinitError
from .images import TIFF_SUFFIXES, describe_kind, image_kind, read_image

# The formats in which Detectron2's reader gives 3 channels (gray and BGRA turned into them).
COLOUR_FORMATS = ("BGR", "RGB")
# Files whose 4th channel is a band, not an alpha channel.
BAND_SUFFIXES = (*TIFF_SUFFIXES, ".npy")
# The display range of an image that is not 8-bit: these percentiles of its pixels.
DISPLAY_PERCENTILES = (0.5, 99.5)


def model_image(image: np.ndarray, channels: int, image_format: str, path: str | Path = "image") -> np.ndarray:
    """A `read_image` array as the model and Detectron2's augmentations take it (a new array or a view;
    `image` is not changed).

    - Channels: the model's `channels` (the length of `MODEL.PIXEL_MEAN`). Two differences are bridged
      as Detectron2's own reader bridges them for a colour model (`INPUT.FORMAT` BGR or RGB): an 8-bit
      gray image is repeated into 3 channels, an 8-bit BGRA image (a PNG or WebP with alpha; not a
      TIFF or .npy, whose 4th channel is a band) loses its alpha. Any other difference is a
      `MaskinitError` naming `path`.
    - Order: 3 channels are BGR (as read) or RGB for `INPUT.FORMAT RGB`; other counts keep their
      stored order.
    - Type: uint8 for 8-bit images of 1 or 3 channels, float32 in the file's units otherwise.
    """
    have = image.shape[2]
    colour_model = channels == 3 and image_format in COLOUR_FORMATS
    if have != channels:
        if colour_model and image.dtype == np.uint8 and have == 1:
            image = np.repeat(image, 3, axis=2)
        elif colour_model and image.dtype == np.uint8 and have == 4 and Path(path).suffix.lower() not in BAND_SUFFIXES:
            image = image[:, :, :3]
        else:
            raise MaskinitError(
                f"image {path} is {describe_kind(image_kind(image))}, but the model takes {channels} channel"
                f"{'s' if channels != 1 else ''} (MODEL.PIXEL_MEAN and MODEL.PIXEL_STD have {channels} values): "
                f"give them one value per channel of the data (maskinit analyze-data measures them)"
            )
    if colour_model and image_format == "RGB":
        image = image[:, :, ::-1]
    if image.dtype == np.uint8 and image.shape[2] in (1, 3):
        return image
    return image.astype(np.float32)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view of a `read_image` array, for drawings (a new array; `image` is not changed).

    - Channels: 1 channel is shown gray (repeated into R, G and B); 2 channels as the gray of their
      mean; 3 or more as colour from the first three, read as B, G, R: a colour or BGRA image shows its
      own colours, a multispectral one a false-colour picture of its bands 0, 1, 2 (band 0 blue).
    - Values: 8-bit images as they are; any other type (16 bits, floats) stretched from the
      0.5th to the 99.5th percentile of the shown pixels (all channels together, which keeps the colour
      balance) to 0..255, so that a 12-bit image in a 16-bit file is not drawn black.
    """
    if image.shape[2] >= 3:
        shown = image[:, :, 2::-1]  # B, G, R -> R, G, B
    elif image.shape[2] == 2:
        shown = image.mean(axis=2, keepdims=True)
        shown = np.round(shown).astype(np.uint8) if image.dtype == np.uint8 else shown
    else:
        shown = image
    if shown.dtype != np.uint8:
        values = shown.astype(np.float64)
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, DISPLAY_PERCENTILES) if finite.size else (0.0, 1.0)
        scale = 255.0 / (high - low) if high > low else 0.0
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
        shown = np.clip(np.round((values - low) * scale), 0, 255).astype(np.uint8)
    if shown.shape[2] == 1:
        shown = np.repeat(shown, 3, axis=2)
    return np.ascontiguousarray(shown)


class ImageMapper(DatasetMapper):
    """Detectron2's `DatasetMapper`, reading images with maskinit's `read_image` (every kind, see the
    module docstring) for a model of `channels` input channels (from `MODEL.PIXEL_MEAN`)."""

    @configurable
    def __init__(self, is_train: bool, *, channels: int, **kwargs):
        super().__init__(is_train, **kwargs)
        self.channels = int(channels)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {**super().from_config(cfg, is_train), "channels": len(cfg.MODEL.PIXEL_MEAN)}

    def model_image(self, image: np.ndarray, path: str | Path = "image") -> np.ndarray:
        """`model_image` for this mapper's model."""
        return model_image(image, self.channels, self.image_format, path)

    def load(self, file_name: str | Path) -> np.ndarray:
        """The image file as this mapper augments it."""
        return self.model_image(read_image(file_name), file_name)

    def __call__(self, dataset_dict: dict) -> dict:
        return self.map_image(dataset_dict, self.load(dataset_dict["file_name"]))

    def map_image(self, dataset_dict: dict, image: np.ndarray) -> dict:
        """The model input of a dataset dict whose image is already loaded (by `load`); a new dict.

        Re-stated from Detectron2 0.7.2's `DatasetMapper.__call__` (which reads the file itself, with
        no hook to replace the reader): the same size check, augmentation, tensor and annotations,
        through its `_transform_annotations` (a private method). Semantic segmentation files are not
        read: maskinit trains instance segmentation only.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        if not chw.flags.writeable:  # a read-only decoded image (gray8 PNG): torch warns on those
            chw = chw.copy()
        dataset_dict["image"] = torch.as_tensor(chw)
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)  # Detectron2 private method
        return dataset_dict
