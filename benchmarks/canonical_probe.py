"""A maskinit plugin for the recipe probes: Detectron2's StandardROIHeads with the RoI poolers' canonical box size
(the side mapped to FPN level 4; Detectron2: 224, for ~800-px inputs) set to 112 or 56, registered as
`StandardROIHeadsCanonical112` and `StandardROIHeadsCanonical56` for `MODEL.ROI_HEADS.NAME`."""

from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads


def canonical_heads(size: int) -> type:
    """StandardROIHeads whose box and mask poolers assign RoIs to levels with canonical box size `size`."""

    class Heads(StandardROIHeads):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for pooler in (self.box_pooler, getattr(self, "mask_pooler", None)):
                if pooler is not None:
                    pooler.canonical_box_size = size

    Heads.__name__ = Heads.__qualname__ = f"StandardROIHeadsCanonical{size}"
    return Heads


for _size in (112, 56):
    _heads = canonical_heads(_size)
    if _heads.__name__ not in ROI_HEADS_REGISTRY:
        ROI_HEADS_REGISTRY.register(_heads)
