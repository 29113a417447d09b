"""maskinit.model.build_model: Detectron2's model, its norms converted, every parameter initialized and
reported, a data-dependent pass only when asked; nothing loaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskinit import build_model, load_config
from maskinit.initializers import COMPONENTS
from maskinit.model import component_init_specs


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset with an init that needs no data (the preset's own is LSUV)."""
    return load_config(preset="tiny", init="kaiming_normal")


def test_each_component_gets_its_own_init_or_the_default(tiny):
    cfg = tiny.clone()
    cfg.defrost()
    cfg.MASKINIT.INIT, cfg.MASKINIT.COMPONENT_INIT.FPN = "xavier_uniform", "orthogonal"
    specs = component_init_specs(cfg)
    assert set(specs) == set(COMPONENTS)
    assert specs["fpn"] == "orthogonal" and all(specs[c] == "xavier_uniform" for c in COMPONENTS if c != "fpn")


@pytest.mark.slow
def test_the_init_report_names_every_parameter_once(tiny):
    torch.manual_seed(0)
    model = build_model(tiny)
    report = model.maskinit_init_report
    names = [line.name for line in report]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters())
    assert {line.component for line in report} <= set(COMPONENTS)
    assert model.maskinit_lsuv is None  # no data-dependent init in this config
    assert str(next(model.parameters()).device) == tiny.MODEL.DEVICE


@pytest.mark.slow
def test_the_norm_variant_is_what_the_model_holds(tiny):
    gn = build_model(load_config(preset="tiny", norm="GN", init="c2"))
    assert any(isinstance(m, nn.GroupNorm) for m in gn.modules())
    bn = build_model(load_config(preset="tiny", norm="BN", init="c2"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) and not any(
        isinstance(m, nn.GroupNorm) for m in bn.modules())
    assert not any("Frozen" in type(m).__name__ for m in [*gn.modules(), *bn.modules()])


@pytest.mark.slow
def test_the_same_seed_builds_the_same_weights(tiny):
    torch.manual_seed(3)
    first = build_model(tiny).state_dict()
    torch.manual_seed(3)
    second = build_model(tiny).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.slow
def test_a_model_whose_weights_a_checkpoint_replaces_skips_the_data_dependent_pass():
    cfg = load_config(preset="tiny", init="lsuv")
    model = build_model(cfg, data_dependent=False)
    assert model.maskinit_lsuv is None
    assert not any(line.init.startswith("lsuv(") for line in model.maskinit_init_report)
    fitted = build_model(cfg)
    assert fitted.maskinit_lsuv is not None and fitted.maskinit_lsuv.source == "generated images"
    assert any(line.init.startswith("lsuv(") for line in fitted.maskinit_init_report)
