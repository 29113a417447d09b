"""A maskinit plugin for the recipe probes: Detectron2's StandardROIHeads with the RoI poolers' canonical box size
(the side mapped to FPN level 4; Detectron2: 224, for ~800-px inputs) set to 112, registered as
`StandardROIHeadsCanonical112` for `MODEL.ROI_HEADS.NAME`."""

from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads


class StandardROIHeadsCanonical112(StandardROIHeads):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for pooler in (self.box_pooler, getattr(self, "mask_pooler", None)):
            if pooler is not None:
                pooler.canonical_box_size = 112


if "StandardROIHeadsCanonical112" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(StandardROIHeadsCanonical112)
