"""A maskinit plugin for the recipe probes: Detectron2's mask head (`MaskRCNNConvUpsampleHead`) with its loss
weighted, registered as `MaskLoss15`, `MaskLoss20` and `MaskLoss30` (weights 1.5, 2 and 3) for
`MODEL.ROI_MASK_HEAD.NAME`. Detectron2's head takes `loss_weight` as an argument but not from the config."""

from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead


def weighted_head(weight: float) -> type:
    """The mask head class whose loss is multiplied by `weight`."""

    class Head(MaskRCNNConvUpsampleHead):
        @classmethod
        def from_config(cls, cfg, input_shape):
            return {**super().from_config(cfg, input_shape), "loss_weight": weight}

    Head.__name__ = Head.__qualname__ = f"MaskLoss{round(weight * 10)}"
    return Head


for _weight in (1.5, 2.0, 3.0):
    _head = weighted_head(_weight)
    if _head.__name__ not in ROI_MASK_HEAD_REGISTRY:
        ROI_MASK_HEAD_REGISTRY.register(_head)
