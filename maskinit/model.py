"""`build_model(cfg)`: Detectron2's model with the chosen norm variant and initializers, nothing loaded."""

from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.modeling import build_model as detectron2_build_model
from torch import nn

from .initializers import COMPONENTS, apply_initializers
from .norms import apply_norm_variant
from .plugins import load_plugins

logger = logging.getLogger(__name__)


def component_init_specs(cfg: CfgNode) -> dict[str, str]:
    """The initializer spec of each component: its own, else `MASKINIT.INIT`."""
    return {
        component: cfg.MASKINIT.COMPONENT_INIT.get(component.upper(), "") or cfg.MASKINIT.INIT
        for component in COMPONENTS
    }


def build_model(cfg: CfgNode) -> nn.Module:
    """Build on `cfg.MODEL.DEVICE`, convert norms, initialize every parameter; the init report is
    attached as `model.maskinit_init_report`. No checkpoint is read here."""
    load_plugins(cfg.MASKINIT.PLUGINS)
    model = detectron2_build_model(cfg)
    apply_norm_variant(model, cfg.MASKINIT.NORM, cfg.MODEL.DEVICE, rpn_norm=cfg.MASKINIT.RPN_NORM)
    model.to(cfg.MODEL.DEVICE)
    model.maskinit_init_report = apply_initializers(
        model,
        component_init_specs(cfg),
        head_priors=cfg.MASKINIT.HEAD_PRIORS,
        zero_init_residual=cfg.MASKINIT.ZERO_INIT_RESIDUAL,
        prior_prob=cfg.MASKINIT.PRIOR_PROB,
    )
    return model
