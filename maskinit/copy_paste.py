"""Simple Copy-Paste (Ghiasi et al. 2021, "Simple Copy-Paste is a Strong Data Augmentation Method for
Instance Segmentation"), chosen by `cfg.MASKINIT.AUGMENT.COPY_PASTE` (off in the base config, on in the
`tiny` preset).

With probability `PROB`, a training image (the target) gets objects cut by their masks out of another
training image (the source):

- the source is a training record drawn uniformly (numpy's global RNG, which Detectron2 seeds in each
  data-loader worker) from the records of `DATASETS.TRAIN` that have a non-crowd annotation; it may be
  the target's own record, seen through other random augmentations;
- both images go through the same mapper independently (its own augmentation draws each: the paper's
  independent LSJ jitter of both images), read by `ImageMapper.load` (every image kind);
- the source is aligned at the target's top-left corner and cropped to the target's shape (what lies
  beyond the target's canvas is not pasted; the canvas is never enlarged). With LSJ both are the same
  square, with Detectron2's default resize they differ a little;
- a random subset of 1 to `MAX_INSTANCES` source instances is pasted, hard: each pixel inside the union
  of their masks is the source's pixel, every other one the target's (the paper found blending
  unnecessary; no blur here). Source instances that the canvas crops below `MIN_AREA` pixels are not
  candidates;
- the target's masks lose the pixels the pasted objects cover; an instance whose mask lost pixels (an
  occluded target or a cropped source instance) gets its box from its mask, and is dropped when fewer
  than `MIN_AREA` pixels are left (a fully covered one always). Instances left untouched keep their
  boxes. The pasted instances follow the target's, with their classes.

An image that got objects pasted has bitmask masks (`gt_masks` a `BitMasks`, which Detectron2's mask
head crops and resizes as it does polygons), whatever `INPUT.MASK_FORMAT`; the others are exactly what
the wrapped mapper gives (with `PROB` 0 the mapper is not wrapped at all). Only boxes, classes and masks
are kept on a pasted image: maskinit trains instance segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetFromList
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from .errors import MaskinitError


def check_copy_paste(cfg: CfgNode) -> None:
    """A one-line MaskinitError naming the first bad `MASKINIT.AUGMENT.COPY_PASTE` value."""
    cp = cfg.MASKINIT.AUGMENT.COPY_PASTE
    if not _number(cp.PROB) or not 0 <= cp.PROB <= 1:
        raise MaskinitError(f"MASKINIT.AUGMENT.COPY_PASTE.PROB must be in [0, 1] (0: off), got {cp.PROB!r}")
    if not _integer(cp.MAX_INSTANCES) or cp.MAX_INSTANCES < 1:
        raise MaskinitError(
            f"MASKINIT.AUGMENT.COPY_PASTE.MAX_INSTANCES must be an integer of at least 1, got {cp.MAX_INSTANCES!r}"
        )
    if not _integer(cp.MIN_AREA) or cp.MIN_AREA < 1:
        raise MaskinitError(
            f"MASKINIT.AUGMENT.COPY_PASTE.MIN_AREA must be an integer of at least 1 (pixels), got {cp.MIN_AREA!r}"
        )
    if cp.PROB > 0 and not cfg.MODEL.MASK_ON:
        raise MaskinitError(
            "MASKINIT.AUGMENT.COPY_PASTE.PROB > 0 pastes objects by their masks: it needs MODEL.MASK_ON"
        )


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bitmasks(instances: Instances) -> torch.Tensor:
    """The (N, H, W) bool masks of mapped instances (polygons rasterized as Detectron2 rasterizes them)."""
    height, width = instances.image_size
    if not instances.has("gt_masks"):  # Detectron2 sets no masks on an image without annotations
        return torch.zeros((len(instances), height, width), dtype=torch.bool)
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, height, width)
    if isinstance(masks, BitMasks):
        return masks.tensor.to(torch.bool)
    raise MaskinitError(f"copy-paste takes polygon or bitmask instance masks, got {type(masks).__name__}")


def fit_to_canvas(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, h, w) masks on an (N, height, width) canvas, aligned at the top-left corner: cropped where they
    are larger, padded with False where they are smaller (a new tensor)."""
    out = torch.zeros((masks.shape[0], height, width), dtype=torch.bool)
    h, w = min(height, masks.shape[1]), min(width, masks.shape[2])
    out[:, :h, :w] = masks[:, :h, :w]
    return out


def paste_candidates(source: dict, height: int, width: int, min_area: int) -> np.ndarray:
    """Indices of the mapped source's instances that can be pasted onto a (height, width) canvas: those
    the canvas does not crop, and the cropped ones that keep at least `min_area` pixels."""
    instances = source.get("instances")
    if instances is None or len(instances) == 0:
        return np.zeros(0, dtype=np.int64)
    masks = bitmasks(instances)
    full = masks.sum(dim=(1, 2))
    visible = fit_to_canvas(masks, height, width).sum(dim=(1, 2))
    keep = (visible == full) | (visible >= min_area)
    return np.flatnonzero((keep & (visible > 0)).numpy())


def copy_paste(target: dict, source: dict, chosen: Sequence[int], min_area: int) -> dict:
    """The mapped `target` dict with the mapped `source`'s instances `chosen` pasted onto it (a new dict;
    neither argument is changed). See the module docstring for what happens to masks and boxes."""
    out = dict(target)
    tgt, src = target["instances"], source["instances"]
    height, width = tgt.image_size
    chosen = torch.as_tensor(np.asarray(chosen, dtype=np.int64))
    if len(chosen) == 0:
        return out

    src_masks = bitmasks(src)[chosen]
    pasted = fit_to_canvas(src_masks, height, width)
    alpha = pasted.any(dim=0)

    image, src_image = target["image"], source["image"]
    if image.dtype != src_image.dtype:  # data sets that mix image kinds: the model takes float32 too
        image, src_image = image.to(torch.float32), src_image.to(torch.float32)
    h, w = min(height, src_image.shape[1]), min(width, src_image.shape[2])
    image = image.clone()
    image[:, :h, :w] = torch.where(alpha[:h, :w], src_image[:, :h, :w], image[:, :h, :w])
    out["image"] = image

    tgt_masks = bitmasks(tgt)
    occluded = tgt_masks & ~alpha
    masks = torch.cat([occluded, pasted])
    before = torch.cat([tgt_masks.sum(dim=(1, 2)), src_masks.sum(dim=(1, 2))])
    area = masks.sum(dim=(1, 2))
    changed = area != before
    boxes = torch.cat([tgt.gt_boxes.tensor, src.gt_boxes.tensor[chosen]])
    if changed.any():
        boxes[changed] = BitMasks(masks[changed]).get_bounding_boxes().tensor
    keep = ~changed | (area >= min_area)
    instances = Instances(
        (height, width),
        gt_boxes=Boxes(boxes[keep]),
        gt_classes=torch.cat([tgt.gt_classes, src.gt_classes[chosen]])[keep],
        gt_masks=BitMasks(masks[keep]),
    )
    out["instances"] = utils.filter_empty_instances(instances)
    return out


class CopyPasteMapper:
    """A training mapper (`maskinit.data.mapper.ImageMapper`) whose output gets, with probability `prob`,
    up to `max_instances` objects of another training record pasted (see the module docstring).

    Picklable for data-loader workers: the mapper, the source records (Detectron2's `DatasetFromList`,
    serialized into one buffer as the train loader keeps its own) and numbers.
    """

    def __init__(self, mapper, sources, prob: float, max_instances: int, min_area: int):
        self.mapper = mapper
        self.sources = sources
        self.prob = float(prob)
        self.max_instances = int(max_instances)
        self.min_area = int(min_area)

    def __call__(self, dataset_dict: dict) -> dict:
        target = self.mapper(dataset_dict)
        if "instances" not in target or np.random.rand() >= self.prob:
            return target
        source = self.mapper(self.sources[np.random.randint(len(self.sources))])
        if "instances" not in source:
            return target
        height, width = target["instances"].image_size
        candidates = paste_candidates(source, height, width, self.min_area)
        if len(candidates) == 0:  # LSJ may crop every source object away
            return target
        count = np.random.randint(1, min(len(candidates), self.max_instances) + 1)
        chosen = np.sort(np.random.choice(candidates, size=count, replace=False))
        return copy_paste(target, source, chosen, self.min_area)


def source_records(names: Sequence[str]) -> DatasetFromList:
    """The records of the datasets `names` that have a non-crowd annotation, serialized into one buffer."""
    records = []
    for name in names:
        if name not in DatasetCatalog.list():
            raise MaskinitError(f"MASKINIT.AUGMENT.COPY_PASTE: training dataset {name!r} is not registered")
        records += [
            r for r in DatasetCatalog.get(name) if any(a.get("iscrowd", 0) == 0 for a in r.get("annotations", ()))
        ]
    if not records:
        raise MaskinitError(
            f"MASKINIT.AUGMENT.COPY_PASTE: no training image of {', '.join(names)} has an annotation to paste"
        )
    return DatasetFromList(records, copy=True, serialize=True)


def build_copy_paste_mapper(cfg: CfgNode, mapper) -> CopyPasteMapper:
    """`mapper` wrapped by copy-paste, its sources the records of `DATASETS.TRAIN` (registered first)."""
    check_copy_paste(cfg)
    cp = cfg.MASKINIT.AUGMENT.COPY_PASTE
    return CopyPasteMapper(mapper, source_records(cfg.DATASETS.TRAIN), cp.PROB, cp.MAX_INSTANCES, cp.MIN_AREA)
