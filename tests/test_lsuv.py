"""LSUV (`--init lsuv`): specs and refusals, unit output variance per layer on the batch, head priors,
component-only use, determinism and RNG isolation, the batch sources, statuses, inspect-init, a short run."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from detectron2.layers import Conv2d
from detectron2.utils.events import EventStorage
from torch import nn

from maskinit import MaskinitError, export_config, load_config
from maskinit.batches import generated_batch
from maskinit.initializers import HEAD_PRIOR_STDS, INITIALIZER_REGISTRY, build_initializer, is_data_dependent
from maskinit.lsuv import lsuv_batch, run_lsuv
from maskinit.model import build_model

SEED = 0


def tiny_cfg(*overrides, init="lsuv", norm=None):
    return load_config(preset="tiny", init=init, norm=norm, overrides=list(overrides))


def build(cfg, batch=None, seed=SEED):
    torch.manual_seed(seed)
    return build_model(cfg, lsuv_batch=batch)


def raw_output_variances(model, batch, names, seed=SEED):
    """Each layer's output variance before its norm, measured independently of maskinit.lsuv (train mode,
    the sampling LSUV's passes use)."""
    modules = dict(model.named_modules())
    values = {name: [] for name in names}
    handles = []
    for name in names:
        module = modules[name]
        if isinstance(module, Conv2d) and module.norm is not None:
            handles.append(module.norm.register_forward_pre_hook(lambda m, i, name=name: values[name].append(i[0])))
        else:
            assert getattr(module, "activation", None) is None, name
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: values[name].append(o)))
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad(), EventStorage():
        model(batch)
    for handle in handles:
        handle.remove()
    return {name: float(torch.cat([v.flatten() for v in vs]).var(unbiased=False)) for name, vs in values.items() if vs}


@pytest.fixture(scope="module")
def batch():
    return generated_batch(tiny_cfg(), 2, seed=3)


@pytest.fixture(scope="module")
def lsuv_model(batch):
    return build(tiny_cfg(), batch)


# ------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "spec,params",
    [
        ("lsuv", {}),
        ("lsuv:tol=0.05,iters=3", {"tol": 0.05, "iters": 3}),
        ("lsuv:base=c2", {"base": "c2"}),
        ("lsuv:base=kaiming_normal:mode=fan_in,tol=1e-2", {"base": "kaiming_normal:mode=fan_in", "tol": 0.01}),
    ],
)
def test_specs_parse(spec, params):
    fn, parsed, _ = build_initializer(spec)
    assert fn is INITIALIZER_REGISTRY.get("lsuv") and parsed == params
    assert is_data_dependent(spec) and not is_data_dependent("orthogonal")
    assert load_config(preset="tiny", init=spec).MASKINIT.INIT == spec


@pytest.mark.parametrize(
    "spec,message",
    [
        ("lsuv:tol=0", "tol must be a number in \\(0, 1\\)"),
        ("lsuv:tol=1.5", "tol must be"),
        ("lsuv:tol=nan", "tol must be"),
        ("lsuv:iters=0", "iters must be an integer"),
        ("lsuv:iters=2.5", "iters must be an integer"),
        ("lsuv:iters=true", "iters must be an integer"),
        ("lsuv:base=magic", "base: unknown initializer 'magic'"),
        ("lsuv:base=lsuv", "base must be a data-independent initializer"),
        ("lsuv:base=normal:std=-1", "bad parameters for initializer lsuv: std must be a positive"),
        ("lsuv:base=normal:sd=1", "base: bad parameters for initializer normal"),
        ("lsuv:speed=9", "bad parameters for initializer lsuv"),
    ],
)
def test_bad_specs_are_refused_in_one_line(spec, message):
    for attempt in (
        lambda: build_initializer(spec),
        lambda: load_config(preset="tiny", init=spec),
        lambda: load_config(preset="tiny", overrides=["MASKINIT.COMPONENT_INIT.BACKBONE", spec]),
        lambda: export_config(preset="tiny", init=spec),
    ):
        with pytest.raises(MaskinitError, match=message) as caught:
            attempt()
        assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------- what LSUV does


@pytest.mark.slow
def test_every_rescaled_layer_has_unit_output_variance_on_the_batch(lsuv_model, batch):
    result = lsuv_model.maskinit_lsuv
    assert result.source == "the given batch" and result.images == 2
    assert {layer.status for layer in result.layers} <= {"rescaled", "within tol"}
    assert sum(layer.status == "rescaled" for layer in result.layers) >= 30
    names = [layer.name for layer in result.layers]
    assert not set(names) & set(HEAD_PRIOR_STDS)
    measured = raw_output_variances(lsuv_model, batch, names)
    assert set(measured) == set(names)
    for layer in result.layers:
        assert abs(measured[layer.name] - 1) < 0.1, layer.name
        assert measured[layer.name] == pytest.approx(layer.var_after, rel=1e-3), layer.name
        if layer.status == "rescaled":  # exact before the RPN; the ROI heads' proposals move with float rounding
            rel = 1e-3 if layer.name.startswith("backbone.") else 1e-2
            assert layer.var_before * layer.scale**2 == pytest.approx(layer.var_after, rel=rel), layer.name
    # a GN model: layers followed by a norm are rescaled together, a few passes in all
    assert result.passes <= 6


@pytest.mark.slow
def test_report_names_lsuv_and_its_effect(lsuv_model):
    report = {line.name: line for line in lsuv_model.maskinit_init_report}
    line = report["backbone.bottom_up.res3.0.conv1.weight"]
    assert line.init == "lsuv(orthogonal)"
    assert set(line.lsuv) >= {"scale", "var_before", "var_after", "status", "rescalings", "base"}
    weight = dict(lsuv_model.named_parameters())[line.name]
    assert line.std == pytest.approx(float(weight.detach().std()), rel=1e-5)
    assert report["backbone.bottom_up.res3.0.conv1.norm.weight"].lsuv is None


@pytest.mark.slow
def test_head_priors_are_kept(lsuv_model):
    modules = dict(lsuv_model.named_modules())
    report = {line.name: line for line in lsuv_model.maskinit_init_report}
    for name, std in HEAD_PRIOR_STDS.items():
        weight = modules[name].weight
        assert weight.std().item() == pytest.approx(std, rel=3 / math.sqrt(2 * weight.numel())), name
        assert report[name + ".weight"].init == f"prior normal(std={std})"


@pytest.mark.slow
def test_without_head_priors_the_predictors_are_rescaled_too(batch):
    model = build(tiny_cfg("MASKINIT.HEAD_PRIORS", "False", "MASKINIT.COMPONENT_INIT.BOX_HEAD", "c2",
                           "MASKINIT.COMPONENT_INIT.MASK_HEAD", "c2", "MASKINIT.COMPONENT_INIT.BACKBONE", "c2",
                           "MASKINIT.COMPONENT_INIT.FPN", "c2"), batch)
    layers = {layer.name: layer for layer in model.maskinit_lsuv.layers}
    assert set(layers) == {"proposal_generator.rpn_head.conv", "proposal_generator.rpn_head.objectness_logits",
                           "proposal_generator.rpn_head.anchor_deltas"}
    for layer in layers.values():
        assert layer.status in ("rescaled", "within tol") and abs(layer.var_after - 1) < 0.1, layer


@pytest.mark.slow
def test_component_only_lsuv_leaves_the_others_as_their_init(batch):
    """Backbone lsuv, the rest orthogonal: every other weight is bit-identical to a plain orthogonal
    build, every backbone weight is its orthogonal init times one scale, and the RNG streams after
    build_model are those of the plain build (LSUV's seeded passes are isolated)."""
    with_lsuv = tiny_cfg("MASKINIT.COMPONENT_INIT.BACKBONE", "lsuv", init="orthogonal")
    without = tiny_cfg(init="orthogonal")  # configs first: checking a config dry-runs its initializers
    torch.manual_seed(SEED)
    np.random.seed(5)
    random.seed(5)
    model = build_model(with_lsuv, lsuv_batch=batch)
    after_lsuv = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(SEED)
    np.random.seed(5)
    random.seed(5)
    plain = build_model(without)
    after_plain = (torch.rand(3), np.random.rand(3), random.random())
    assert plain.maskinit_lsuv is None
    torch.testing.assert_close(after_lsuv[0], after_plain[0], rtol=0, atol=0)
    assert np.array_equal(after_lsuv[1], after_plain[1]) and after_lsuv[2] == after_plain[2]

    scales = {layer.name + ".weight": layer.scale for layer in model.maskinit_lsuv.layers}
    assert scales and all(name.startswith("backbone.bottom_up.") for name in scales)
    report = {line.name: line for line in model.maskinit_init_report}
    reference = dict(plain.named_parameters())
    for name, param in model.named_parameters():
        if name in scales:
            torch.testing.assert_close(param, reference[name] * scales[name])
            assert report[name].init == "lsuv(orthogonal)"
        else:
            torch.testing.assert_close(param, reference[name], rtol=0, atol=0)
            assert not report[name].init.startswith("lsuv"), name
    assert all(m.training for m in model.modules())  # the mode it was built in


@pytest.mark.slow
def test_same_seed_same_weights_and_the_generated_batch_path():
    """Without a batch or a readable training set (the tiny preset names coco_2017_train, absent here):
    generated images, deterministically."""
    cfg = tiny_cfg("MASKINIT.COMPONENT_INIT.FPN", "c2", "MASKINIT.COMPONENT_INIT.RPN", "c2",
                   "MASKINIT.COMPONENT_INIT.BOX_HEAD", "c2", "MASKINIT.COMPONENT_INIT.MASK_HEAD", "c2")
    first, second = build(cfg), build(cfg)
    assert first.maskinit_lsuv.source == "generated images"
    assert first.maskinit_lsuv.images == cfg.SOLVER.IMS_PER_BATCH
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [layer.scale for layer in first.maskinit_lsuv.layers] == [
        layer.scale for layer in second.maskinit_lsuv.layers
    ]


@pytest.mark.slow
def test_registered_training_set_gives_the_batch(coco):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from maskinit.data.coco import apply_dataset_to_cfg, register_coco_dataset

    cfg = tiny_cfg()
    cfg.defrost()
    name = "maskinit_test_lsuv_train"
    try:
        apply_dataset_to_cfg(cfg, register_coco_dataset(name, coco.train_json, coco.train_images))
        first, source = lsuv_batch(cfg, seed=0)
        second, _ = lsuv_batch(cfg, seed=0)
        # a config with fewer classes than the registered data: one line, not an IndexError in the loss
        highest = max(int(item["instances"].gt_classes.max()) for item in first)
        assert highest >= 1
        fewer = cfg.clone()
        fewer.MODEL.ROI_HEADS.NUM_CLASSES = highest
        with pytest.raises(
            MaskinitError, match=f"class index {highest}, but the config has MODEL.ROI_HEADS.NUM_CLASSES {highest}"
        ):
            build_model(fewer)
    finally:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)
    assert source == f"training set {name}" and len(first) == cfg.SOLVER.IMS_PER_BATCH
    for a, b in zip(first, second):
        assert a["file_name"] == b["file_name"] and torch.equal(a["image"], b["image"])
        assert len(a["instances"]) > 0


# ------------------------------------------------------------------- statuses on a toy model


class Toy(nn.Module):
    """A list of dicts in, like Detectron2's models; module names inside the backbone component."""

    def __init__(self, fc_bias: float = 0.0, fc_gain: float = 1.0):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = nn.Module()
        parts = self.backbone.bottom_up
        parts.conv = Conv2d(3, 8, 8, bias=False, norm=nn.GroupNorm(2, 8))  # 8x8 images -> 1x1, normalized
        parts.fc = nn.Linear(8, 16)
        parts.zero = nn.Linear(16, 16)
        parts.unused = nn.Linear(16, 16)
        with torch.no_grad():
            nn.init.orthogonal_(parts.fc.weight, gain=fc_gain)
            parts.fc.bias.copy_(torch.tensor([fc_bias, -fc_bias] * 8))  # a per-channel offset no rescaling removes
            parts.zero.weight.zero_()
            parts.zero.bias.zero_()

    def forward(self, batch):
        parts = self.backbone.bottom_up
        x = torch.stack([item["image"] for item in batch])
        return parts.zero(torch.relu(parts.fc(parts.conv(x).flatten(1))))


def toy_batch():
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(3, 8, 8, generator=generator) * 5} for _ in range(16)]


def test_statuses_zero_output_not_reached_and_iters_exhausted():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    result = run_lsuv(Toy(fc_bias=1.5), cfg, {"backbone": "lsuv:iters=1,tol=0.01"}, batch=toy_batch())
    status = {layer.name.rsplit(".", 1)[1]: layer.status for layer in result.layers}
    assert status == {"conv": "rescaled", "fc": "iters exhausted", "zero": "zero output", "unused": "not reached"}
    labels = {layer.name.rsplit(".", 1)[1]: layer.label for layer in result.layers}
    assert labels["conv"] == "lsuv(orthogonal)" and labels["fc"] == "lsuv(orthogonal): iters exhausted"
    # a smaller offset: more rescalings converge
    model = Toy(fc_bias=0.5, fc_gain=3.0)
    result = run_lsuv(model, cfg, {"backbone": "lsuv:iters=20,tol=0.01"}, batch=toy_batch())
    fc = next(layer for layer in result.layers if layer.name.endswith(".fc"))
    assert fc.status == "rescaled" and abs(fc.var_after - 1) < 0.01 and fc.rescalings > 1, fc
    assert torch.count_nonzero(model.backbone.bottom_up.zero.weight) == 0


def test_a_conv_with_only_an_activation_is_measured_before_it():
    """Detectron2's Conv2d applies its activation inside forward: LSUV measures the convolution alone."""
    model = Toy()
    parts = model.backbone.bottom_up
    parts.conv = Conv2d(3, 8, 8, bias=False, activation=torch.relu)
    run_lsuv(model, tiny_cfg(), {"backbone": "lsuv:tol=0.01"}, batch=toy_batch())
    x = torch.stack([item["image"] for item in toy_batch()])
    with torch.no_grad():
        raw = nn.functional.conv2d(x, parts.conv.weight)
    assert float(raw.var(unbiased=False)) == pytest.approx(1, abs=0.01)
    assert float(torch.relu(raw).var(unbiased=False)) < 0.5  # what a hook on the output would have seen


def test_weight_standardized_convolutions_are_left_as_built():
    from maskinit.norms import WSConv2d

    model = Toy()
    model.backbone.bottom_up.conv.__class__ = WSConv2d
    before = model.backbone.bottom_up.conv.weight.detach().clone()
    result = run_lsuv(model, tiny_cfg(), {"backbone": "lsuv"}, batch=toy_batch())
    conv = next(layer for layer in result.layers if layer.name.endswith(".conv"))
    assert conv.status == "no effect" and conv.scale == 1.0
    torch.testing.assert_close(model.backbone.bottom_up.conv.weight, before, rtol=0, atol=0)


# ----------------------------------------------------------------------------- inspect-init


@pytest.mark.slow
def test_inspect_init_compare_shows_lsuv(tmp_path):
    from maskinit.diagnostics import compare, write_json

    results = compare(tiny_cfg(init="c2"), "lsuv,c2", seed=0)
    lsuv, c2 = results
    assert lsuv.init == "lsuv" and lsuv.lsuv["source"] == "the given batch"
    assert c2.lsuv is None and not any("lsuv" in p for p in c2.params)
    measured = [p["lsuv"] for p in lsuv.params if "lsuv" in p]
    assert len(measured) == len(lsuv.lsuv["layers"]) >= 30
    assert all(abs(m["var_after"] - 1) < 0.1 for m in measured)
    # GN cancels the rescaling of the layers before it; the box head's fc1 has none, so its output moves to unit scale
    before = {row.name: row for row in c2.stages}
    after = {row.name: row for row in lsuv.stages}
    assert after["res3"].activation_std == pytest.approx(before["res3"].activation_std, rel=0.2)
    assert after["box_head"].activation_std != pytest.approx(before["box_head"].activation_std, rel=0.05)
    payload = json.loads(write_json(results, tmp_path / "compare.json").read_text())
    assert payload["results"][0]["lsuv"]["layers"][0]["status"] in ("rescaled", "within tol")


# -------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_short_training_run_with_lsuv_on_the_training_batch(coco, tmp_path):
    from maskinit.train import DataOptions, TrainOptions, train

    out = tmp_path / "out"
    options = TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), seed=0, progress=False,
                           max_iter=3, checkpoint_period=3)
    summary = train(load_config(preset="tiny", init="lsuv", overrides=["SOLVER.WARMUP_ITERS", "1"]), options)
    assert summary["status"] == "finished" and summary["iterations"] == 3
    log = (out / "log.txt").read_text()
    assert "LSUV on 4 images (training set" in log
    assert "lsuv(orthogonal):" in log  # the trainer's count of initializers


@pytest.mark.slow
def test_a_resumed_run_skips_the_lsuv_pass(coco, tmp_path):
    """The checkpoint replaces every weight at once on --resume: no LSUV pass (it would be wasted work)."""
    from dataclasses import replace

    from maskinit.train import DataOptions, TrainOptions, train

    out = tmp_path / "out"
    options = TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), seed=0, progress=False,
                           max_iter=2, checkpoint_period=2)
    cfg = load_config(preset="tiny", init="lsuv", overrides=["SOLVER.WARMUP_ITERS", "1"])
    assert train(cfg, options)["status"] == "finished"
    assert (out / "log.txt").read_text().count("LSUV on ") == 1
    resumed = train(cfg, replace(options, resume=True, max_iter=4))
    assert resumed["status"] == "finished" and resumed["from_scratch"]["start_iter"] == 2
    log = (out / "log.txt").read_text()
    assert log.count("Starting training from iteration 2") == 1
    assert log.count("LSUV on ") == 1  # the first run's only
