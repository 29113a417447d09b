"""A maskinit plugin for the recipe probes: Detectron2's mask head (`MaskRCNNConvUpsampleHead`) with its loss
weighted 2, registered as `MaskLoss20` for `MODEL.ROI_MASK_HEAD.NAME`. Detectron2's head takes `loss_weight` as
an argument but not from the config."""

from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead


class MaskLoss20(MaskRCNNConvUpsampleHead):
    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), "loss_weight": 2.0}


if "MaskLoss20" not in ROI_MASK_HEAD_REGISTRY:
    ROI_MASK_HEAD_REGISTRY.register(MaskLoss20)
