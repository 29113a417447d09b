"""Norm variants: module types in the built model, refusals, weight standardization, SyncBN over gloo."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, NaiveSyncBatchNorm, get_norm
from torch import nn
from typer.testing import CliRunner

from maskinit import MaskinitError, build_model, load_config
from maskinit.cli import app
from maskinit.norms import NORM_REGISTRY, SyncBatchNormVariant, WSConv2d, build_norm_variant

NORMALIZED = ("backbone.bottom_up", "backbone", "roi_heads.box_head", "roi_heads.mask_head")
NORM_TYPES = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, FrozenBatchNorm2d)


def tiny_model(norm, *overrides):
    return build_model(load_config(preset="tiny", norm=norm, overrides=list(overrides)))


def norms_in(module):
    return [m for m in module.modules() if isinstance(m, NORM_TYPES)]


@pytest.mark.parametrize(
    "norm,expected_type,groups",
    [
        ("GN", nn.GroupNorm, 32),
        ("GN:groups=16", nn.GroupNorm, 16),
        ("GNWS", nn.GroupNorm, 32),
        ("SyncBN", nn.BatchNorm2d, None),  # one process: plain BatchNorm over the process's batch
        ("BN", nn.BatchNorm2d, None),
        ("naiveSyncBN", NaiveSyncBatchNorm, None),
    ],
)
@pytest.mark.slow
def test_variant_module_types(norm, expected_type, groups):
    model = tiny_model(norm)
    modules = dict(model.named_modules())
    for component in NORMALIZED:
        found = norms_in(modules[component])
        assert found, component
        assert all(type(m) is expected_type for m in found), (component, {type(m) for m in found})
        if groups is not None:
            assert {m.num_groups for m in found} == {groups}
    rpn_norms = norms_in(model.proposal_generator)  # the default recipe sets MASKINIT.RPN_NORM
    assert len(rpn_norms) == 1 and type(rpn_norms[0]) is expected_type
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.SyncBatchNorm)) for m in model.modules())


@pytest.mark.slow
def test_gnws_standardizes_exactly_the_convs_feeding_a_groupnorm():
    model = tiny_model("GNWS")
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    with_gn = [m for m in convs if isinstance(m.norm, nn.GroupNorm)]
    assert with_gn and all(type(m) is WSConv2d for m in with_gn)
    assert all(type(m) is Conv2d for m in convs if m.norm is None)


@pytest.mark.slow
def test_no_norm_variant_builds_no_norm_modules():
    model = tiny_model("none")
    assert norms_in(model) == []


@pytest.mark.slow
def test_rpn_head_without_rpn_norm_has_no_norm():
    assert not norms_in(tiny_model("GN", "MASKINIT.RPN_NORM", "False").proposal_generator)


@pytest.mark.slow
@pytest.mark.parametrize("norm,expected_type", [("GN", nn.GroupNorm), ("BN", nn.BatchNorm2d)])
def test_rpn_norm_adds_a_norm_to_the_rpn_conv(norm, expected_type):
    model = tiny_model(norm, "MASKINIT.RPN_NORM", "True")
    conv = model.proposal_generator.rpn_head.conv
    assert type(conv.norm) is expected_type
    channels = conv.norm.num_channels if expected_type is nn.GroupNorm else conv.norm.num_features
    assert channels == conv.out_channels


def test_frozen_bn_refused_everywhere():
    with pytest.raises(MaskinitError, match="FrozenBN"):
        build_norm_variant("FrozenBN")
    with pytest.raises(MaskinitError, match="FrozenBN"):
        load_config(preset="tiny", norm="FrozenBN")
    with pytest.raises(MaskinitError, match="FrozenBN"):
        load_config(preset="tiny", overrides=["MODEL.RESNETS.NORM", "FrozenBN"])
    result = CliRunner().invoke(app, ["export-config", "--preset", "tiny", "--norm", "FrozenBN"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "FrozenBN" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "spec,message",
    [("XN", "unknown norm 'XN'"), ("GN:groups=0", "positive integer"), ("BN:momentum=0.1", "takes no parameters")],
)
def test_bad_norm_specs(spec, message):
    with pytest.raises(MaskinitError, match=message):
        build_norm_variant(spec)


def test_every_registered_variant_builds_a_detectron2_name():
    for name, cls in NORM_REGISTRY:
        variant = build_norm_variant(name)
        assert isinstance(variant.detectron2_name, str), name
        assert cls.description, name


def test_ws_conv_standardizes_its_weight():
    torch.manual_seed(0)
    conv = WSConv2d(8, 16, kernel_size=3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.5)  # far from standardized on purpose
        conv.bias.normal_()
    weight = conv.standardized_weight().flatten(1)
    torch.testing.assert_close(weight.mean(dim=1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(weight.std(dim=1), torch.ones(16), atol=1e-3, rtol=0)
    x = torch.randn(2, 8, 10, 10)
    expected = F.conv2d(x, conv.standardized_weight(), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    raw = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert not torch.allclose(conv(x), raw)


def test_ws_conv_applies_its_norm_and_activation():
    torch.manual_seed(0)
    conv = WSConv2d(4, 8, kernel_size=1, bias=False, norm=nn.GroupNorm(2, 8), activation=F.relu)
    x = torch.randn(2, 4, 5, 5)
    expected = F.relu(conv.norm(F.conv2d(x, conv.standardized_weight())))
    torch.testing.assert_close(conv(x), expected)


# --------------------------------------------------------------------------------- SyncBN over gloo

WORLD = 2


def full_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2 * WORLD, 3, 6, 6, generator=generator) * 2 + 1


def output_weights(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def small_module(norm: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Conv2d(3, 8, kernel_size=3, padding=1, bias=False, norm=get_norm(norm, 8)))


def _syncbn_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = small_module("SyncBN")
        assert isinstance(model[0].norm, nn.SyncBatchNorm)
        SyncBatchNormVariant().convert(model, device="cpu")
        norm = model[0].norm
        x = full_batch().chunk(WORLD)[rank]
        y = model(x)
        (y * output_weights(y.shape[1:])).sum().backward()
        torch.save(
            {
                "type": type(norm).__name__,
                "output": y.detach(),
                "running_mean": norm.running_mean.clone(),
                "running_var": norm.running_var.clone(),
                "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_syncbn_over_two_gloo_processes_equals_bn_on_the_whole_batch(tmp_path):
    # Forked like DataLoader workers (one intra-op thread each): spawn would re-import detectron2 per rank.
    context = torch.multiprocessing.start_processes(
        _syncbn_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("SyncBN workers did not finish within 120 s")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    assert {r["type"] for r in ranks} == {"NaiveSyncBatchNorm"}

    reference = small_module("BN")
    assert type(reference[0].norm) is nn.BatchNorm2d
    x = full_batch()
    y = reference(x)
    (y * output_weights(y.shape[1:])).sum().backward()

    torch.testing.assert_close(torch.cat([r["output"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-4)
    for name, param in reference.named_parameters():  # each rank holds its share of the full-batch gradient
        torch.testing.assert_close(sum(r["grads"][name] for r in ranks), param.grad, atol=1e-4, rtol=1e-4)
    bn = reference[0].norm
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean, atol=1e-6, rtol=1e-5)
        # NaiveSyncBatchNorm tracks the biased variance; nn.BatchNorm2d the unbiased one.
        features = F.conv2d(x, reference[0].weight, padding=1).detach()
        biased = features.var(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(r["running_var"], (1 - bn.momentum) + bn.momentum * biased, atol=1e-5, rtol=1e-5)
