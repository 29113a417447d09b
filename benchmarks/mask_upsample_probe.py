"""A maskinit plugin for the recipe probes: Detectron2's mask head (`MaskRCNNConvUpsampleHead`) with a second 2x
upsampling (a 2x2 stride-2 transposed conv to 32 channels and a ReLU) before the predictor, so its masks are 4x the
pool's side (36x36 from a 9x9 pool) rather than 2x. Detectron2's mask loss crops the targets to the predicted side
and its inference pastes masks of any side, so only the head changes. Registered as `MaskUpsample4` for
`MODEL.ROI_MASK_HEAD.NAME`."""

from detectron2.layers import Conv2d, ConvTranspose2d
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from fvcore.nn import weight_init
from torch import nn

EXTRA_CHANNELS = 32


class MaskUpsample4(MaskRCNNConvUpsampleHead):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        channels, classes = self.predictor.in_channels, self.predictor.out_channels
        self.deconv2 = ConvTranspose2d(channels, EXTRA_CHANNELS, kernel_size=2, stride=2, padding=0)
        self.deconv2_relu = nn.ReLU()
        weight_init.c2_msra_fill(self.deconv2)
        self.predictor = Conv2d(EXTRA_CHANNELS, classes, kernel_size=1, stride=1, padding=0)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    def layers(self, x):
        for layer in self.conv_norm_relus:
            x = layer(x)
        x = self.deconv_relu(self.deconv(x))
        x = self.deconv2_relu(self.deconv2(x))
        return self.predictor(x)


if "MaskUpsample4" not in ROI_MASK_HEAD_REGISTRY:
    ROI_MASK_HEAD_REGISTRY.register(MaskUpsample4)
