"""A maskinit plugin for the recipe probes: Detectron2's mask head (`MaskRCNNConvUpsampleHead`) trained with a
Dice loss beside its binary cross-entropy (`loss_mask_dice`, weight 1: one minus the soft Dice coefficient of each
RoI's predicted mask and its target, averaged over the RoIs). Cross-entropy weighs every pixel alike; the Dice term
weighs each mask's overlap as a whole, which sharpens the boundaries of large masks. The layers and inference are
Detectron2's. Registered as `MaskDice` for `MODEL.ROI_MASK_HEAD.NAME`."""

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)

DICE_WEIGHT = 1.0


def dice_loss(pred_mask_logits, instances):
    """One minus the soft Dice coefficient per RoI (smoothed by 1), averaged; the targets are cropped and resized
    to the predicted side as Detectron2's `mask_rcnn_loss` does."""
    side = pred_mask_logits.size(2)
    targets, classes = [], []
    for image in instances:
        if len(image):
            targets.append(image.gt_masks.crop_and_resize(image.proposal_boxes.tensor, side))
            classes.append(image.gt_classes.to(torch.int64))
    if not targets:
        return pred_mask_logits.sum() * 0
    target = cat(targets, dim=0).to(device=pred_mask_logits.device, dtype=torch.float32)
    if pred_mask_logits.size(1) == 1:
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(len(target)), cat(classes, dim=0)]
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    dice = (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return (1 - dice).mean()


class MaskDice(MaskRCNNConvUpsampleHead):
    def forward(self, x, instances):
        x = self.layers(x)
        if self.training:
            return {
                "loss_mask": mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight,
                "loss_mask_dice": dice_loss(x, instances) * DICE_WEIGHT,
            }
        mask_rcnn_inference(x, instances)
        return instances


if "MaskDice" not in ROI_MASK_HEAD_REGISTRY:
    ROI_MASK_HEAD_REGISTRY.register(MaskDice)
