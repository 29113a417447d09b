"""Weight initializers as a registry, applied per component after Detectron2 builds the model.

Detection-head priors (box classifier std 0.01, box regressor std 0.001, mask predictor std 0.001,
RPN predictors std 0.01, as Detectron2 sets them) are kept unless `MASKINIT.HEAD_PRIORS` is off;
biases start at zero unless a prior says otherwise; norm layers start at scale 1, shift 0.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from detectron2.utils.registry import Registry
from torch import nn

from .errors import MaskinitError
from .specs import parse_spec

INITIALIZER_REGISTRY = Registry("MASKINIT_INITIALIZER")
INITIALIZER_REGISTRY.__doc__ = """
Registry of weight initializers. An entry is called as `fn(weight: torch.Tensor, **params) -> None`
and fills the weight of a convolution or linear layer in place; `params` come from a
`NAME:key=value` spec. An entry whose `keeps_built` attribute is true leaves Detectron2's own init.
An entry whose `data_dependent` attribute is true (`lsuv`) is called the same way to fill the weight
with its base init; `maskinit.model.build_model(cfg, lsuv_batch=None)` then runs it on a batch
(`maskinit.lsuv.run_lsuv(model, cfg, component_specs, batch)`), which rescales the weights it fills.
"""

COMPONENTS = ("backbone", "fpn", "rpn", "box_head", "mask_head")
# Module-name prefixes of each component in Detectron2's GeneralizedRCNN.
COMPONENT_PREFIXES = {
    "backbone": ("backbone.bottom_up.",),
    "fpn": ("backbone.",),
    "rpn": ("proposal_generator.",),
    "box_head": ("roi_heads.box_head.", "roi_heads.box_predictor."),
    "mask_head": ("roi_heads.mask_head.",),
}
# Detection-head layers whose Detectron2 init is a deliberate prior: module name -> std.
HEAD_PRIOR_STDS = {
    "roi_heads.box_predictor.cls_score": 0.01,
    "roi_heads.box_predictor.bbox_pred": 0.001,
    "roi_heads.mask_head.predictor": 0.001,
    "proposal_generator.rpn_head.objectness_logits": 0.01,
    "proposal_generator.rpn_head.anchor_deltas": 0.01,
}
WEIGHTED_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
NORM_LAYERS = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


def register_initializer(name: str):
    """Decorator: `@register_initializer("my_init") def my_init(weight, **params): ...`."""

    def decorator(fn):
        INITIALIZER_REGISTRY._do_register(name, fn)  # fvcore's private method: see internals.py
        return fn

    return decorator


@register_initializer("c2")
def c2(weight: torch.Tensor) -> None:
    """Detectron2's own scheme as built (c2_msra_fill in ResNet, c2_xavier_fill in FPN and FCs)."""


c2.keeps_built = True


@register_initializer("kaiming_normal")
def kaiming_normal(weight: torch.Tensor, mode: str = "fan_out", nonlinearity: str = "relu", a: float = 0.0) -> None:
    """He et al. normal, std = gain/sqrt(fan); fan_out as torchvision's ResNet and c2_msra_fill."""
    nn.init.kaiming_normal_(weight, a=a, mode=mode, nonlinearity=nonlinearity)


@register_initializer("kaiming_uniform")
def kaiming_uniform(weight: torch.Tensor, mode: str = "fan_out", nonlinearity: str = "relu", a: float = 0.0) -> None:
    """He et al. uniform, bound = gain*sqrt(3/fan)."""
    nn.init.kaiming_uniform_(weight, a=a, mode=mode, nonlinearity=nonlinearity)


@register_initializer("xavier_uniform")
def xavier_uniform(weight: torch.Tensor, gain: float = 1.0) -> None:
    """Glorot uniform, std = gain*sqrt(2/(fan_in+fan_out))."""
    nn.init.xavier_uniform_(weight, gain=gain)


@register_initializer("xavier_normal")
def xavier_normal(weight: torch.Tensor, gain: float = 1.0) -> None:
    """Glorot normal, std = gain*sqrt(2/(fan_in+fan_out))."""
    nn.init.xavier_normal_(weight, gain=gain)


@register_initializer("orthogonal")
def orthogonal(weight: torch.Tensor, gain: float = 1.0) -> None:
    """(Semi-)orthogonal rows of the flattened weight (Saxe et al.)."""
    nn.init.orthogonal_(weight, gain=gain)


def check_std_mean(std, mean) -> None:
    """A ValueError (reported by `build_initializer`) for a std that is not positive and finite, or a mean that
    is not finite."""
    for name, value, positive in (("std", std, True), ("mean", mean, False)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (positive and value <= 0):
            raise ValueError(f"{name} must be a {'positive ' if positive else ''}finite number, got {value!r}")


@register_initializer("normal")
def normal(weight: torch.Tensor, std: float = 0.01, mean: float = 0.0) -> None:
    """Plain normal with a fixed std."""
    check_std_mean(std, mean)
    nn.init.normal_(weight, mean=mean, std=std)


@register_initializer("trunc_normal")
def trunc_normal(weight: torch.Tensor, std: float = 0.02, mean: float = 0.0) -> None:
    """Normal with a fixed std, truncated at two standard deviations."""
    check_std_mean(std, mean)
    nn.init.trunc_normal_(weight, mean=mean, std=std, a=mean - 2 * std, b=mean + 2 * std)


LSUV_DEFAULTS = {"tol": 0.1, "iters": 10, "base": "orthogonal"}  # Mishkin & Matas 2016: Tol_var 0.1, T_max 10


def lsuv_base(tol=LSUV_DEFAULTS["tol"], iters=LSUV_DEFAULTS["iters"], base=LSUV_DEFAULTS["base"]):
    """`(fn, params, spec)` of LSUV's base init, after checking `tol` (in (0, 1)) and `iters` (1..1000).

    A ValueError names the bad parameter (`build_initializer` turns it into one MaskinitError line).
    The base is a spec of its own (`base=kaiming_normal:mode=fan_in`); inside lsuv's spec it can take
    one parameter, since commas separate lsuv's own.
    """
    number = isinstance(tol, (int, float)) and not isinstance(tol, bool) and math.isfinite(tol)
    if not number or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1) (|output variance - 1| < tol), got {tol!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or not 1 <= iters <= 1000:
        raise ValueError(f"iters must be an integer from 1 to 1000 (rescalings per layer), got {iters!r}")
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"base must name an initializer spec (e.g. base=c2), got {base!r}")
    try:
        name, params = parse_spec(base, "initializer")
    except MaskinitError as error:
        raise ValueError(f"base: {error}") from error
    if name not in INITIALIZER_REGISTRY:
        known = ", ".join(sorted(name for name, _ in INITIALIZER_REGISTRY))
        raise ValueError(f"base: unknown initializer {name!r} (known: {known})")
    fn = INITIALIZER_REGISTRY.get(name)
    if getattr(fn, "data_dependent", False):
        raise ValueError(f"base must be a data-independent initializer, got {base!r}")
    try:
        inspect.signature(fn).bind(None, **params)
    except TypeError as error:
        raise ValueError(f"base: bad parameters for initializer {name}: {error}") from error
    # No dry run here (it would draw from the RNG once per layer): `build_initializer`'s dry run of the
    # lsuv spec runs the base on its test weight, which checks the base's values.
    return fn, params, base.strip()


@register_initializer("lsuv")
def lsuv(weight: torch.Tensor, tol: float = LSUV_DEFAULTS["tol"], iters: int = LSUV_DEFAULTS["iters"],
         base: str = LSUV_DEFAULTS["base"]) -> None:
    """LSUV (Mishkin & Matas 2016): the base init, then per layer scaled to unit output variance on a batch.

    Here: fills `weight` with the base init (`base`, default orthogonal). `build_model` then rescales
    each layer, in forward order, until its output variance on a batch is within `tol` of 1 (at most
    `iters` rescalings per layer): see `maskinit.lsuv`.
    """
    fn, params, _ = lsuv_base(tol, iters, base)
    fn(weight, **params)


lsuv.data_dependent = True


def is_data_dependent(spec: str) -> bool:
    """True for a spec whose initializer needs a forward pass on data (`lsuv`)."""
    name, _ = parse_spec(spec, "initializer")
    return name in INITIALIZER_REGISTRY and getattr(INITIALIZER_REGISTRY.get(name), "data_dependent", False)


@dataclass
class ParamInit:
    """One line of the init report: which parameter got which initializer, and its measured std."""

    name: str
    shape: list
    component: str
    init: str
    std: float
    # For a layer a data-dependent init measured (LSUV): scale, output variance before/after, status.
    lsuv: dict | None = None


def build_initializer(spec: str):
    """`(fn, params, spec)` for a `NAME:key=value` spec, with the parameters checked against `fn`."""
    name, params = parse_spec(spec, "initializer")
    if name not in INITIALIZER_REGISTRY:
        known = ", ".join(sorted(name for name, _ in INITIALIZER_REGISTRY))
        raise MaskinitError(f"unknown initializer {name!r} (known: {known})")
    fn = INITIALIZER_REGISTRY.get(name)
    weight = torch.zeros(4, 4, 3, 3)  # zeros: an init that keeps the weight (c2, lsuv:base=c2) leaves it finite
    try:
        inspect.signature(fn).bind(None, **params)
        with torch.random.fork_rng(devices=[]):  # the dry run leaves the caller's random stream as it was
            fn(weight, **params)  # a dry run catches bad values (mode=fan_sideways, gain=nan)
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as error:
        raise MaskinitError(f"bad parameters for initializer {name}: {str(error).strip().splitlines()[0]}") from error
    if not getattr(fn, "keeps_built", False) and not torch.isfinite(weight).all():
        raise MaskinitError(f"bad parameters for initializer {name}: {spec} gives non-finite weights")
    return fn, params, spec


def component_of(module_name: str) -> str | None:
    """The component a module belongs to; the most specific prefix wins (bottom_up before FPN)."""
    for component in COMPONENTS:
        if any(module_name.startswith(prefix) for prefix in COMPONENT_PREFIXES[component]):
            return component
    return None


def residual_last_norms(model: nn.Module) -> set[str]:
    """Names of the last norm of each residual block (BasicBlock conv2, BottleneckBlock conv3)."""
    from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

    names = set()
    for block_name, block in model.named_modules():
        last = {BasicBlock: "conv2", BottleneckBlock: "conv3"}.get(type(block))
        if last is not None:
            names.add(f"{block_name}.{last}")
    return names


@torch.no_grad()
def apply_initializers(
    model: nn.Module,
    component_specs: dict[str, str],
    head_priors: bool = True,
    zero_init_residual: bool = False,
    prior_prob: float = 0.0,
) -> list[ParamInit]:
    """Initialize every parameter on purpose; return the report (one entry per parameter)."""
    initializers = {component: build_initializer(spec) for component, spec in component_specs.items()}
    labels: dict[str, str] = {}
    zero_residual = residual_last_norms(model) if zero_init_residual else set()

    for module_name, module in model.named_modules():
        component = component_of(module_name + ".")
        if component is None:
            continue
        if isinstance(module, WEIGHTED_LAYERS):
            prior = HEAD_PRIOR_STDS.get(module_name) if head_priors else None
            if prior is not None:
                nn.init.normal_(module.weight, std=prior)
                labels[module_name + ".weight"] = f"prior normal(std={prior})"
            else:
                fn, params, spec = initializers[component]
                if getattr(fn, "keeps_built", False):
                    labels[module_name + ".weight"] = spec + " (as built)"
                else:
                    fn(module.weight, **params)
                    labels[module_name + ".weight"] = spec
            if module.bias is not None:
                nn.init.zeros_(module.bias)
                labels[module_name + ".bias"] = "zeros"
            if module_name in zero_residual and getattr(module, "norm", None) is None:
                nn.init.zeros_(module.weight)
                labels[module_name + ".weight"] = "zeros (zero-init residual, no norm)"
        elif isinstance(module, NORM_LAYERS) and getattr(module, "weight", None) is not None:
            is_last = module_name.rsplit(".", 1)[0] in zero_residual
            nn.init.constant_(module.weight, 0.0 if is_last else 1.0)
            nn.init.zeros_(module.bias)
            labels[module_name + ".weight"] = "zeros (zero-init residual)" if is_last else "ones"
            labels[module_name + ".bias"] = "zeros"

    if prior_prob > 0:
        set_prior_bias(model, prior_prob, labels)

    return [
        ParamInit(name, list(param.shape), component_of(name) or "other", labels.get(name, "as built"),
                  float(param.detach().float().std()) if param.numel() > 1 else float(param.detach().abs().sum()))
        for name, param in model.named_parameters()
    ]


def set_prior_bias(model: nn.Module, prior_prob: float, labels: dict) -> None:
    """Focal-style prior (Lin et al.): classifiers start predicting foreground with probability p."""
    if not 0 < prior_prob < 1:
        raise MaskinitError(f"MASKINIT.PRIOR_PROB must be in (0, 1), got {prior_prob}")
    logit = -math.log((1 - prior_prob) / prior_prob)
    objectness = getattr(
        getattr(getattr(model, "proposal_generator", None), "rpn_head", None), "objectness_logits", None
    )
    if objectness is not None:
        nn.init.constant_(objectness.bias, logit)
        labels["proposal_generator.rpn_head.objectness_logits.bias"] = f"prior logit({prior_prob})"
    cls_score = getattr(getattr(getattr(model, "roi_heads", None), "box_predictor", None), "cls_score", None)
    if cls_score is not None:
        num_foreground = cls_score.out_features - 1
        nn.init.zeros_(cls_score.bias)
        # softmax over K foreground classes + background (last): P(background) = 1 - p.
        cls_score.bias[-1] = math.log((1 - prior_prob) * num_foreground / prior_prob)
        labels["roi_heads.box_predictor.cls_score.bias"] = f"prior P(fg)={prior_prob}"
