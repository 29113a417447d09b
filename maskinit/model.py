"""`build_model(cfg)`: Detectron2's model with the chosen norm variant and initializers, nothing loaded."""

from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.modeling import build_model as detectron2_build_model
from torch import nn

from .initializers import COMPONENTS, apply_initializers, is_data_dependent
from .lsuv import run_lsuv, updated_report
from .norms import apply_norm_variant
from .plugins import load_plugins

logger = logging.getLogger(__name__)


def component_init_specs(cfg: CfgNode) -> dict[str, str]:
    """The initializer spec of each component: its own, else `MASKINIT.INIT`."""
    return {
        component: cfg.MASKINIT.COMPONENT_INIT.get(component.upper(), "") or cfg.MASKINIT.INIT
        for component in COMPONENTS
    }


def build_model(cfg: CfgNode, lsuv_batch: list[dict] | None = None, *, data_dependent: bool = True) -> nn.Module:
    """Build on `cfg.MODEL.DEVICE`, convert norms, initialize every parameter; the init report is
    attached as `model.maskinit_init_report`. No checkpoint is read here.

    When a component's init is data-dependent (`lsuv`), its layers are then rescaled on a batch
    (`maskinit.lsuv.run_lsuv`): `lsuv_batch` (Detectron2 input dicts), else the first images of the
    registered training set `DATASETS.TRAIN[0]`, else generated ones; seeded by `cfg.SEED` (0 when
    negative), RNG states restored. What it did is in the report's `lsuv` fields and in
    `model.maskinit_lsuv` (None without LSUV). `data_dependent=False` skips that pass (the base init
    only): for a model whose weights a checkpoint replaces at once (eval, predict, resume).
    """
    load_plugins(cfg.MASKINIT.PLUGINS)
    model = detectron2_build_model(cfg)
    apply_norm_variant(model, cfg.MASKINIT.NORM, cfg.MODEL.DEVICE, rpn_norm=cfg.MASKINIT.RPN_NORM)
    model.to(cfg.MODEL.DEVICE)
    specs = component_init_specs(cfg)
    report = apply_initializers(
        model,
        specs,
        head_priors=cfg.MASKINIT.HEAD_PRIORS,
        zero_init_residual=cfg.MASKINIT.ZERO_INIT_RESIDUAL,
        prior_prob=cfg.MASKINIT.PRIOR_PROB,
    )
    model.maskinit_lsuv = None
    if data_dependent and any(is_data_dependent(spec) for spec in specs.values()):
        model.maskinit_lsuv = run_lsuv(model, cfg, specs, batch=lsuv_batch, seed=max(int(cfg.SEED), 0))
        report = updated_report(report, model.maskinit_lsuv, model)
    model.maskinit_init_report = report
    return model
