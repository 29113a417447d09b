"""Initializers: measured std against theory, orthogonality, head priors, zero-init residual, components, specs."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.modeling.backbone.resnet import BasicBlock
from torch import nn

from maskinit import MaskinitError, load_config
from maskinit.initializers import INITIALIZER_REGISTRY, build_initializer
from maskinit.model import build_model
from maskinit.specs import parse_spec

# (out, in, k, k) convolutions and a Linear (out, in).
SHAPES = [(64, 64, 3, 3), (128, 64, 1, 1), (256, 128, 3, 3), (256, 1024)]
RELU_GAIN = math.sqrt(2.0)


def fans(shape):
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def truncated_std_factor(bound: float) -> float:
    """Std of a unit normal truncated to [-bound, bound]: sqrt(1 - 2 b phi(b) / (2 Phi(b) - 1))."""
    pdf = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1 - 2 * bound * pdf / mass)


def theoretical_std(spec: str, shape) -> float:
    fan_in, fan_out = fans(shape)
    name, params = parse_spec(spec)
    if name in ("kaiming_normal", "kaiming_uniform"):  # uniform bound gain*sqrt(3/fan) has std gain/sqrt(fan)
        fan = fan_in if params.get("mode", "fan_out") == "fan_in" else fan_out
        return RELU_GAIN / math.sqrt(fan)
    if name in ("xavier_uniform", "xavier_normal"):
        return math.sqrt(2.0 / (fan_in + fan_out))
    if name == "orthogonal":  # unit rows (or columns) of the out x fan_in matrix
        return 1 / math.sqrt(max(shape[0], fan_in))
    if name == "normal":
        return params["std"]
    if name == "trunc_normal":
        return params["std"] * truncated_std_factor(2.0)
    raise AssertionError(spec)


SPECS = [
    "kaiming_normal", "kaiming_normal:mode=fan_in", "kaiming_uniform", "kaiming_uniform:mode=fan_in",
    "xavier_uniform", "xavier_normal", "orthogonal", "normal:std=0.02", "trunc_normal:std=0.05",
]


def test_truncated_factor_matches_the_known_constant():
    assert truncated_std_factor(2.0) == pytest.approx(0.8796, abs=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("spec", SPECS)
def test_measured_std_matches_theory(spec, shape):
    fn, params, _ = build_initializer(spec)
    torch.manual_seed(0)
    weight = torch.empty(shape)
    fn(weight, **params)
    assert weight.std().item() == pytest.approx(theoretical_std(spec, shape), rel=0.05)
    assert abs(weight.mean().item()) < 0.1 * theoretical_std(spec, shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_orthogonal_is_orthogonal(shape):
    fn, params, _ = build_initializer("orthogonal")
    torch.manual_seed(0)
    weight = torch.empty(shape)
    fn(weight, **params)
    flat = weight.flatten(1)
    rows, cols = flat.shape
    gram = flat @ flat.T if rows <= cols else flat.T @ flat
    torch.testing.assert_close(gram, torch.eye(min(rows, cols)), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "spec,name,params",
    [
        ("kaiming_normal", "kaiming_normal", {}),
        ("kaiming_uniform:mode=fan_in,a=0.1", "kaiming_uniform", {"mode": "fan_in", "a": 0.1}),
        (" normal : std=1e-3 ", "normal", {"std": 1e-3}),
    ],
)
def test_spec_parsing(spec, name, params):
    assert parse_spec(spec) == (name, params)
    fn, parsed, _ = build_initializer(spec)
    assert fn is INITIALIZER_REGISTRY.get(name) and parsed == params


@pytest.mark.parametrize(
    "spec,message",
    [
        ("magic", "unknown initializer 'magic'"),
        ("normal:sd=1", "bad parameters for initializer normal"),
        ("kaiming_normal:mode=fan_sideways", "bad parameters for initializer kaiming_normal"),
        ("normal:std", "malformed initializer parameter"),
        (":std=1", "empty initializer name"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(MaskinitError, match=message):
        build_initializer(spec)
    with pytest.raises(MaskinitError):
        load_config(preset="tiny", init=spec)


def tiny_model(*overrides, init=None, norm=None):
    torch.manual_seed(0)
    return build_model(load_config(preset="tiny", init=init, norm=norm, overrides=list(overrides)))


def report_of(model) -> dict:
    return {line.name: line for line in model.maskinit_init_report}


PRIORS = {
    "roi_heads.box_predictor.cls_score": 0.01,
    "roi_heads.box_predictor.bbox_pred": 0.001,
    "roi_heads.mask_head.predictor": 0.001,
    "proposal_generator.rpn_head.objectness_logits": 0.01,
    "proposal_generator.rpn_head.anchor_deltas": 0.01,
}
FOCAL_BIASED = ("roi_heads.box_predictor.cls_score", "proposal_generator.rpn_head.objectness_logits")


@pytest.fixture(scope="module")
def default_model():
    return tiny_model()


@pytest.mark.slow
def test_head_priors_kept(default_model):
    modules = dict(default_model.named_modules())
    report = report_of(default_model)
    for name, std in PRIORS.items():
        layer = modules[name]
        rel = 3 / math.sqrt(2 * layer.weight.numel())  # three standard errors of a sample std
        assert layer.weight.std().item() == pytest.approx(std, rel=rel), name
        if name not in FOCAL_BIASED:  # the default recipe's MASKINIT.PRIOR_PROB sets those biases
            assert torch.count_nonzero(layer.bias) == 0, name
        assert report[name + ".weight"].init == f"prior normal(std={std})"


@pytest.mark.slow
def test_default_recipe_starts_classifiers_at_the_focal_prior(default_model):
    rpn = default_model.proposal_generator.rpn_head.objectness_logits
    torch.testing.assert_close(torch.sigmoid(rpn.bias), torch.full_like(rpn.bias, 0.01))
    without = tiny_model("MASKINIT.PRIOR_PROB", "0.0")
    assert all(torch.count_nonzero(dict(without.named_modules())[name].bias) == 0 for name in FOCAL_BIASED)


@pytest.mark.slow
def test_without_head_priors_the_initializer_applies():
    model = tiny_model("MASKINIT.HEAD_PRIORS", "False", init="normal:std=0.05")
    modules = dict(model.named_modules())
    report = report_of(model)
    for name in PRIORS:
        layer = modules[name]
        rel = 3 / math.sqrt(2 * layer.weight.numel())
        assert layer.weight.std().item() == pytest.approx(0.05, rel=rel), name
        assert report[name + ".weight"].init == "normal:std=0.05"


@pytest.mark.slow
def test_prior_prob_sets_focal_biases():
    p = 0.01
    model = tiny_model("MASKINIT.PRIOR_PROB", str(p))
    rpn = model.proposal_generator.rpn_head.objectness_logits
    torch.testing.assert_close(torch.sigmoid(rpn.bias), torch.full_like(rpn.bias, p))
    probabilities = torch.softmax(model.roi_heads.box_predictor.cls_score.bias, dim=0)
    assert probabilities[-1].item() == pytest.approx(1 - p)  # background is the last class
    assert probabilities[:-1].sum().item() == pytest.approx(p)


def test_prior_prob_out_of_range_is_refused():
    with pytest.raises(MaskinitError, match="PRIOR_PROB"):
        tiny_model("MASKINIT.PRIOR_PROB", "1.5")


def norm_scales(model):
    return {
        name: module.weight
        for name, module in model.backbone.bottom_up.named_modules()
        if isinstance(module, nn.GroupNorm)
    }


@pytest.mark.slow
def test_zero_init_residual_zeroes_only_the_last_norm_of_each_block():
    model = tiny_model("MASKINIT.ZERO_INIT_RESIDUAL", "True")
    blocks = [(name, m) for name, m in model.backbone.bottom_up.named_modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8  # ResNet-18
    last = {f"{name}.conv2.norm" for name, _ in blocks}
    scales = norm_scales(model)
    assert last <= set(scales)
    for name, weight in scales.items():
        expected = 0.0 if name in last else 1.0
        assert torch.all(weight == expected), name
    for module in [model.backbone, model.roi_heads]:
        for sub in module.modules():
            if isinstance(sub, nn.GroupNorm) and not any(sub is m.conv2.norm for _, m in blocks):
                assert torch.all(sub.weight == 1)


@pytest.mark.slow
def test_without_zero_init_residual_every_norm_starts_at_one(default_model):
    assert all(torch.all(weight == 1) for weight in norm_scales(default_model).values())


@pytest.mark.slow
def test_zero_init_residual_without_norm_zeroes_the_last_conv():
    model = tiny_model("MASKINIT.ZERO_INIT_RESIDUAL", "True", norm="none")
    for module in model.backbone.bottom_up.modules():
        if isinstance(module, BasicBlock):
            assert torch.count_nonzero(module.conv2.weight) == 0
            assert torch.count_nonzero(module.conv1.weight) > 0


COMPONENT_SPECS = {
    "BACKBONE": "normal:std=0.03",
    "FPN": "xavier_uniform",
    "RPN": "orthogonal",
    "BOX_HEAD": "kaiming_uniform:mode=fan_in",
    "MASK_HEAD": "trunc_normal:std=0.02",
}
COMPONENT_PREFIXES = {
    "BACKBONE": "backbone.bottom_up.",
    "FPN": "backbone.fpn_",
    "RPN": "proposal_generator.rpn_head.conv",
    "BOX_HEAD": "roi_heads.box_head.",
    "MASK_HEAD": "roi_heads.mask_head.mask_fcn",
}


@pytest.mark.slow
def test_component_initializers_reach_their_parameters():
    overrides = [item for key, spec in COMPONENT_SPECS.items() for item in (f"MASKINIT.COMPONENT_INIT.{key}", spec)]
    model = tiny_model(*overrides, init="kaiming_normal")
    report = report_of(model)
    params = dict(model.named_parameters())
    conv_weights = {name for name, p in params.items() if name.endswith(".weight") and p.dim() > 1}
    for key, prefix in COMPONENT_PREFIXES.items():
        names = [name for name in conv_weights if name.startswith(prefix)]
        assert names, key
        for name in names:
            assert report[name].init == COMPONENT_SPECS[key], name
    assert params["backbone.bottom_up.res3.0.conv1.weight"].std().item() == pytest.approx(0.03, rel=0.05)
    # Priors win over the component's initializer; nothing is left at the global default.
    assert report["roi_heads.mask_head.predictor.weight"].init == "prior normal(std=0.001)"
    assert not [name for name in conv_weights if report[name].init == "kaiming_normal"]
