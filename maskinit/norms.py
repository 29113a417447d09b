"""Norm variants that train from random weights, as a registry open to plugins.

Detectron2 builds the model from the stock norm name a variant writes into the config
(`detectron2_name`, the value of `MODEL.{RESNETS,FPN,ROI_BOX_HEAD,ROI_MASK_HEAD}.NORM`); the
variant's `convert` then adjusts the built modules where Detectron2's config cannot say it
(GroupNorm group count, weight standardization, the SyncBN implementation that fits the runtime).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, NaiveSyncBatchNorm
from detectron2.utils import comm
from detectron2.utils.registry import Registry
from torch import nn

from .errors import MaskinitError
from .specs import parse_spec

logger = logging.getLogger(__name__)

NORM_REGISTRY = Registry("MASKINIT_NORM")
NORM_REGISTRY.__doc__ = """
Registry of norm variants. An entry is a `NormVariant` subclass, called as `cls(**params)` with the
parameters of a `NAME:key=value` spec. The instance provides:

* `detectron2_name: str`: the stock norm Detectron2 builds (written to the config's NORM keys);
* `make(channels: int) -> nn.Module | None`: a fresh norm layer (used to add a norm to the RPN head);
* `convert(model: nn.Module, device: str) -> None`: adjusts the built model in place.
"""

# Config keys that carry the norm of each normalized component.
NORM_KEYS = (
    "MODEL.RESNETS.NORM",
    "MODEL.FPN.NORM",
    "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.NORM",
)
REFUSED_NORMS = {
    "FrozenBN": "FrozenBN is refused for training from scratch: its statistics and affine "
    "parameters stay at their random start (use GN, GNWS or SyncBN)",
}


def register_norm(name: str):
    """Decorator: `@register_norm("MyNorm") class MyNorm(NormVariant): ...`."""

    def decorator(cls):
        NORM_REGISTRY._do_register(name, cls)  # fvcore's private method: see internals.py
        cls.registered_name = name
        return cls

    return decorator


class NormVariant:
    """Base class: a stock Detectron2 norm, built as is."""

    detectron2_name = "BN"
    # True when `detectron2_name` alone builds this variant (so `export-config --plain` can carry it).
    plain_equivalent = True
    description = ""

    def __init__(self, **params):
        if params:
            raise MaskinitError(f"norm {self.registered_name} takes no parameters, got {sorted(params)}")

    def make(self, channels: int) -> nn.Module | None:
        from detectron2.layers import get_norm

        return get_norm(self.detectron2_name, channels)

    def convert(self, model: nn.Module, device: str) -> None:
        """Nothing to change by default: Detectron2 built it."""


def replace_modules(model: nn.Module, should_replace, make_replacement) -> int:
    """Swap every submodule for which `should_replace(module)` holds; return how many were swapped."""
    count = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if should_replace(child):
                setattr(parent, child_name, make_replacement(child))
                count += 1
    return count


def copy_batchnorm(old: nn.modules.batchnorm._BatchNorm, new_type, **kwargs) -> nn.Module:
    """A BatchNorm of another implementation carrying the same statistics and affine parameters."""
    new = new_type(old.num_features, eps=old.eps, momentum=old.momentum, affine=old.affine, **kwargs)
    new.load_state_dict(old.state_dict())
    return new.to(next(old.parameters(), torch.empty(0)).device)


@register_norm("GN")
class GroupNormVariant(NormVariant):
    detectron2_name = "GN"
    description = "GroupNorm, 32 groups (GN:groups=N to change); batch-size independent"

    def __init__(self, groups: int = 32):
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:  # YAML reads `true` as a bool
            raise MaskinitError(f"GN groups must be a positive integer, got {groups!r}")
        self.groups = groups
        self.plain_equivalent = groups == 32

    def make(self, channels: int) -> nn.Module:
        if channels % self.groups:
            raise MaskinitError(f"GN groups={self.groups} does not divide {channels} channels")
        return nn.GroupNorm(self.groups, channels)

    def convert(self, model: nn.Module, device: str) -> None:
        if self.groups != 32:
            replace_modules(model, lambda m: isinstance(m, nn.GroupNorm), lambda m: self.make(m.num_channels))


class WSConv2d(Conv2d):
    """Detectron2's Conv2d with weight standardization (Qiao et al.), as mmcv's ConvWS does."""

    eps = 1e-5

    def standardized_weight(self) -> torch.Tensor:
        flat = self.weight.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).view(-1, 1, 1, 1)
        return (self.weight - mean) / (std + self.eps)

    def forward(self, x):
        x = F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


@register_norm("GNWS")
class GroupNormWSVariant(GroupNormVariant):
    description = "GroupNorm + weight-standardized convolutions feeding it (Qiao et al., mmcv ConvWS)"
    plain_equivalent = False

    def __init__(self, groups: int = 32):
        super().__init__(groups)
        self.plain_equivalent = False

    def convert(self, model: nn.Module, device: str) -> None:
        super().convert(model, device)
        for module in model.modules():
            if type(module) is Conv2d and isinstance(module.norm, nn.GroupNorm):
                module.__class__ = WSConv2d


@register_norm("SyncBN")
class SyncBatchNormVariant(NormVariant):
    detectron2_name = "SyncBN"
    description = "BatchNorm synchronized across processes (torch SyncBatchNorm on CUDA, naive on CPU/gloo)"

    def convert(self, model: nn.Module, device: str) -> None:
        is_sync = lambda m: isinstance(m, nn.SyncBatchNorm)  # noqa: E731
        if comm.get_world_size() == 1:
            replaced = replace_modules(model, is_sync, lambda m: copy_batchnorm(m, nn.BatchNorm2d))
            if replaced:
                logger.info("SyncBN in a single process: plain BatchNorm over the per-process batch")
            return
        if str(device).startswith("cuda"):
            # torch's SyncBatchNorm rejects empty inputs, which ROI heads get; Detectron2's LSJ recipe
            # uses NaiveSyncBatchNorm(stats_mode="N") there for the same reason.
            heads = getattr(model, "roi_heads", None)
            if heads is not None:
                replace_modules(
                    heads, is_sync, lambda m: copy_batchnorm(m, NaiveSyncBatchNorm, stats_mode="N")
                )
            return
        # torch's SyncBatchNorm needs CUDA; Detectron2's NaiveSyncBatchNorm all-reduces over gloo.
        replace_modules(model, is_sync, lambda m: copy_batchnorm(m, NaiveSyncBatchNorm))


@register_norm("BN")
class BatchNormVariant(NormVariant):
    detectron2_name = "BN"
    description = "BatchNorm over each process's own batch"


@register_norm("naiveSyncBN")
class NaiveSyncBatchNormVariant(NormVariant):
    detectron2_name = "naiveSyncBN"
    description = "Detectron2's NaiveSyncBatchNorm (all-reduce of statistics; works on gloo)"


@register_norm("none")
class NoNormVariant(NormVariant):
    detectron2_name = ""
    description = "no normalization (research on norm-free initialization; expect instability)"

    def make(self, channels: int) -> None:
        return None


def build_norm_variant(spec: str) -> NormVariant:
    """The variant instance named by a `NAME:key=value` spec, or a MaskinitError naming the problem."""
    name, params = parse_spec(spec, "norm")
    if name in REFUSED_NORMS:
        raise MaskinitError(REFUSED_NORMS[name])
    if name not in NORM_REGISTRY:
        known = ", ".join(sorted(name for name, _ in NORM_REGISTRY))
        raise MaskinitError(f"unknown norm {name!r} (known: {known})")
    cls = NORM_REGISTRY.get(name)
    try:
        return cls(**params)
    except TypeError as error:
        raise MaskinitError(f"bad parameters for norm {name}: {error}") from error


def apply_norm_variant(model: nn.Module, spec: str, device: str, rpn_norm: bool = False) -> NormVariant:
    """Convert the built model to the variant; optionally add the variant's norm to the RPN head convs."""
    variant = build_norm_variant(spec)
    if rpn_norm:
        add_rpn_norm(model, variant)
    variant.convert(model, device)
    if variant.detectron2_name == "":
        logger.warning("norm 'none': no normalization anywhere; from-scratch training may diverge")
    return variant


def add_rpn_norm(model: nn.Module, variant: NormVariant) -> None:
    """Detectron2's RPN head has no norm key; its Conv2d wrapper applies `.norm` when set."""
    head = getattr(getattr(model, "proposal_generator", None), "rpn_head", None)
    conv = getattr(head, "conv", None)
    if conv is None:
        return
    convs = [conv] if isinstance(conv, Conv2d) else [m for m in conv.modules() if isinstance(m, Conv2d)]
    for layer in convs:
        norm = variant.make(layer.out_channels)
        if norm is not None:
            layer.norm = norm.to(layer.weight.device)
