"""A maskinit plugin for the recipe probes: photometric jitter added to the training augmentations. Loading it
appends Detectron2's `RandomBrightness`, `RandomContrast` (each 0.8-1.2) and, on 3-channel images,
`RandomSaturation` (0.8-1.2) to what `detectron2.data.detection_utils.build_augmentation` returns for training,
which Detectron2's DatasetMapper (and so maskinit's ImageMapper) calls. Only the runs that list this file in
`MASKINIT.PLUGINS` load it."""

import numpy as np
from detectron2.data import detection_utils
from detectron2.data import transforms as T


class RandomPhotometric(T.Augmentation):
    """Brightness, contrast and (on 3 channels) saturation, each scaled by a factor in [low, high]."""

    def __init__(self, low: float = 0.8, high: float = 1.2):
        super().__init__()
        self.parts = [T.RandomBrightness(low, high), T.RandomContrast(low, high)]
        self.saturation = T.RandomSaturation(low, high)

    def get_transform(self, image):
        parts = list(self.parts)
        if image.ndim == 3 and image.shape[2] == 3:
            parts.append(self.saturation)
        transforms, current = [], image
        for part in np.random.permutation(len(parts)):
            transform = parts[part].get_transform(current)
            current = transform.apply_image(current)
            transforms.append(transform)
        return T.TransformList(transforms)


_build = detection_utils.build_augmentation


def build_augmentation(cfg, is_train):
    augmentations = _build(cfg, is_train)
    return [*augmentations, RandomPhotometric()] if is_train else augmentations


if detection_utils.build_augmentation.__module__ != __name__:  # once, however often the plugin is loaded
    detection_utils.build_augmentation = build_augmentation
