"""The from-scratch config: presets, rules, refusals, schedule arithmetic, plain export."""

from __future__ import annotations

import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model as stock_build_model
from torch import nn

from maskinit import MaskinitError, export_config, load_config
from maskinit.config import build_config, dump_yaml, list_presets

NORM_KEYS = ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")


def assert_from_scratch(cfg):
    assert cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert list(cfg.MODEL.PIXEL_STD) != [1.0, 1.0, 1.0]
    for key in NORM_KEYS:
        assert cfg.MODEL[key].NORM not in ("", "FrozenBN"), key


@pytest.mark.parametrize("preset", ["r50-fpn", "tiny"])
def test_presets_obey_from_scratch_rules(preset):
    assert_from_scratch(load_config(preset=preset))


def test_default_is_r50_fpn_with_4conv1fc_box_head():
    cfg = load_config()
    assert cfg.MASKINIT.PRESET == "r50-fpn"
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert cfg.MODEL.MASK_ON


def test_tiny_preset_exact_values():
    cfg = load_config(preset="tiny")
    m = cfg.MODEL
    assert (m.RESNETS.DEPTH, m.RESNETS.RES2_OUT_CHANNELS, m.FPN.OUT_CHANNELS) == (18, 64, 64)
    assert (m.ROI_MASK_HEAD.CONV_DIM, m.ROI_BOX_HEAD.CONV_DIM, m.ROI_BOX_HEAD.FC_DIM) == (64, 64, 256)
    assert (m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN) == (400, 200)
    assert (m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST) == (200, 100)
    assert (m.ROI_HEADS.BATCH_SIZE_PER_IMAGE, m.ROI_MASK_HEAD.POOLER_RESOLUTION) == (96, 7)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 50
    assert cfg.SOLVER.IMS_PER_BATCH == 4
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (128,)
    assert (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (128, 128, 128)


def test_presets_listed():
    assert {"r50-fpn", "tiny"} <= set(list_presets())


@pytest.mark.parametrize(
    "base",
    [
        "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
        "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    ],
)
def test_zoo_bases_are_made_from_scratch(base):
    cfg = load_config(base=base)
    assert_from_scratch(cfg)
    assert cfg.MODEL.RESNETS.DEPTH == 101  # a stated base keeps its backbone (tests/test_refusals.py)
    raw = load_config(base=base, overrides=["MODEL.RESNETS.DEPTH", "50"])
    assert raw.MODEL.RESNETS.DEPTH == 50


def test_local_yaml_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "MODEL:\n  WEIGHTS: 'detectron2://x.pkl'\n  RESNETS:\n    NORM: FrozenBN\n  BACKBONE:\n    FREEZE_AT: 2\n"
    )
    assert_from_scratch(load_config(base=str(base)))


@pytest.mark.parametrize("norm,expected", [("GN", "GN"), ("GNWS", "GN"), ("SyncBN", "SyncBN"), ("BN", "BN")])
def test_norm_flag_sets_every_component(norm, expected):
    cfg = load_config(preset="tiny", norm=norm)
    assert cfg.MASKINIT.NORM == norm
    assert {cfg.MODEL[key].NORM for key in NORM_KEYS} == {expected}


def test_init_flag_stored():
    cfg = load_config(preset="tiny", init="kaiming_normal:mode=fan_in")
    assert cfg.MASKINIT.INIT == "kaiming_normal:mode=fan_in"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(norm="FrozenBN"), "FrozenBN"),
        (dict(overrides=["MODEL.RESNETS.NORM", "FrozenBN"]), "FrozenBN"),
        (dict(overrides=["MODEL.WEIGHTS", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"]), "MODEL.WEIGHTS"),
        (dict(overrides=["MODEL.BACKBONE.FREEZE_AT", "2"]), "FREEZE_AT"),
        (dict(preset="nope"), "unknown preset"),
        (dict(norm="LayerNormish"), "unknown norm"),
        (dict(init="magic"), "unknown initializer"),
        (dict(init="normal:std=0.1,oops"), "malformed"),
        (dict(overrides=["MODEL.NOT_A_KEY", "1"]), "unknown config key MODEL.NOT_A_KEY"),
        (dict(overrides=["SOLVER.BASE_LR", "fast"]), "SOLVER.BASE_LR"),
        (dict(overrides=["SOLVER.BASE_LR"]), "KEY VALUE"),
        (dict(base="nowhere/at_all.yaml"), "unknown base config"),
        (dict(schedule="2x"), "unknown schedule"),
        (dict(ims_per_batch=0), "--ims-per-batch"),
        (dict(num_classes=0), "--num-classes"),
    ],
)
def test_refusals_name_the_problem(kwargs, message):
    with pytest.raises(MaskinitError, match=message):
        load_config(**kwargs)


def test_config_file_with_pretrained_weights_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(load_config(preset="tiny").dump().replace("WEIGHTS: ''", "WEIGHTS: model.pkl"))
    with pytest.raises(MaskinitError, match="MODEL.WEIGHTS"):
        load_config(path)


def test_malformed_config_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL: [unclosed\n")
    with pytest.raises(MaskinitError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(MaskinitError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "schedule,max_iter,steps",
    [
        ("1x", 90000, (60000, 80000)),
        ("3x", 270000, (210000, 250000)),
        ("6x", 540000, (480000, 520000)),
        ("9x", 810000, (750000, 790000)),
    ],
)
def test_schedule_arithmetic_at_batch_16(schedule, max_iter, steps):
    cfg = load_config(schedule=schedule)
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert tuple(cfg.SOLVER.STEPS) == steps


def test_schedule_at_batch_64_matches_detectron2_9x_recipe():
    # Detectron2's scratch_mask_rcnn_R_50_FPN_9x_gn: batch 64, MAX_ITER 202500, STEPS (187500, 197500)
    cfg = load_config(overrides=["SOLVER.IMS_PER_BATCH", "64"])
    cfg2 = load_config(schedule="9x", ims_per_batch=64)
    assert cfg2.SOLVER.MAX_ITER == 202500
    assert tuple(cfg2.SOLVER.STEPS) == (187500, 197500)
    assert cfg2.SOLVER.BASE_LR == pytest.approx(0.0002 * 2)  # AdamW: square-root rule, 4x the batch
    assert cfg.SOLVER.IMS_PER_BATCH == 64
    sgd = load_config(recipe="d2-scratch-gn-3x", schedule="9x", ims_per_batch=64)
    assert (sgd.SOLVER.BASE_LR, sgd.SOLVER.MAX_ITER) == (pytest.approx(0.08), 202500)  # SGD: linear rule


def test_ims_per_batch_scaling():
    base = load_config(preset="tiny")
    cfg = load_config(preset="tiny", ims_per_batch=8)
    assert cfg.SOLVER.IMS_PER_BATCH == 8
    assert base.MASKINIT.OPTIMIZER == "adamw"
    assert cfg.SOLVER.BASE_LR == pytest.approx(base.SOLVER.BASE_LR * 2**0.5)
    assert cfg.SOLVER.MAX_ITER == base.SOLVER.MAX_ITER // 2
    assert tuple(cfg.SOLVER.STEPS) == tuple(s // 2 for s in base.SOLVER.STEPS)
    assert cfg.SOLVER.WARMUP_ITERS == base.SOLVER.WARMUP_ITERS // 2
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == base.SOLVER.REFERENCE_WORLD_SIZE


def test_num_classes_and_overrides():
    cfg = load_config(preset="tiny", num_classes=3, overrides=["SOLVER.BASE_LR", "0.05"])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.SOLVER.BASE_LR == 0.05


@pytest.mark.slow
def test_export_round_trip(tmp_path):
    out = tmp_path / "cfg.yaml"
    text = export_config(out, preset="tiny", norm="GNWS", init="xavier_uniform")
    assert out.read_text() == text
    again = load_config(out)
    assert again.MASKINIT.NORM == "GNWS"
    assert again.MASKINIT.INIT == "xavier_uniform"
    assert dump_yaml(again) == dump_yaml(load_config(preset="tiny", norm="GNWS", init="xavier_uniform"))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["GN", "SyncBN"])
def test_plain_export_loads_into_stock_detectron2_and_builds_without_frozen_bn(tmp_path, norm):
    path = tmp_path / "plain.yaml"
    export_config(path, plain=True, preset="tiny", norm=norm)
    assert "MASKINIT" not in yaml.safe_load(path.read_text())
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    model = stock_build_model(cfg)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    norm_type = nn.GroupNorm if norm == "GN" else nn.modules.batchnorm._BatchNorm
    assert isinstance(model.backbone.bottom_up.stem.conv1.norm, norm_type)
    assert all(p.requires_grad for p in model.parameters())
    # a plain export read back by maskinit keeps the variant
    assert load_config(path).MASKINIT.NORM == norm


def test_plain_export_names_the_maskinit_only_settings_it_drops(tmp_path):
    text = export_config(tmp_path / "plain.yaml", plain=True, preset="tiny")
    dropped = next(line for line in text.splitlines() if line.startswith("# Dropped"))
    for setting in ("MASKINIT.OPTIMIZER=adamw", "MASKINIT.RPN_NORM=True", "MASKINIT.PRIOR_PROB=0.01"):
        assert setting in dropped
    stock = export_config(tmp_path / "stock.yaml", plain=True, recipe="d2-scratch-gn-3x")
    assert "# Dropped" not in stock  # a stock recipe has nothing maskinit-only


def test_plain_export_names_the_weight_average_and_copy_paste(tmp_path):
    text = export_config(tmp_path / "plain.yaml", plain=True, preset="tiny",
                         overrides=["MASKINIT.EMA.ENABLED", "True", "MASKINIT.AUGMENT.COPY_PASTE.PROB", "0.5"])
    dropped = next(line for line in text.splitlines() if line.startswith("# Dropped"))
    assert "MASKINIT.EMA.ENABLED=True" in dropped and "MASKINIT.AUGMENT.COPY_PASTE.PROB=0.5" in dropped


def test_plain_refuses_variants_stock_detectron2_cannot_build():
    with pytest.raises(MaskinitError, match="--plain"):
        export_config(plain=True, preset="tiny", norm="GNWS")


def test_explain_gives_a_reason_for_every_rule():
    rows = {
        key: reason
        for key, _, _, reason in build_config(preset="tiny", overrides=["SOLVER.BASE_LR", "0.01"]).differences()
    }
    for key in (
        "MODEL.WEIGHTS", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.NORM", "MODEL.RESNETS.STRIDE_IN_1X1",
        "MODEL.PIXEL_STD",
    ):
        assert key in rows and "preset" not in rows[key]
    assert rows["SOLVER.BASE_LR"] == "override"
    assert rows["MODEL.RESNETS.DEPTH"] == "preset tiny"


def test_building_a_config_leaves_the_random_stream_alone():
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_config(preset="tiny", init="kaiming_normal")  # check_config dry-runs the initializer
    assert torch.equal(torch.rand(3), expected)


def test_ims_per_batch_keeps_the_keys_the_user_set():
    from maskinit.run_options import TrainOptions, apply_run_options

    cfg = load_config(preset="r50-fpn", overrides=["SOLVER.STEPS", "(3,)"])
    run = apply_run_options(cfg, TrainOptions(output_dir="out", device="cpu", ims_per_batch=4, max_iter=4),
                            explicit_keys={"SOLVER.STEPS"})
    assert tuple(run.SOLVER.STEPS) == (3,) and run.SOLVER.MAX_ITER == 4 and run.SOLVER.IMS_PER_BATCH == 4
    unset = apply_run_options(
        load_config(preset="r50-fpn"), TrainOptions(output_dir="out", device="cpu", ims_per_batch=4)
    )
    assert unset.SOLVER.MAX_ITER > cfg.SOLVER.MAX_ITER and tuple(unset.SOLVER.STEPS) != tuple(cfg.SOLVER.STEPS)


def test_every_maskinit_key_has_its_comment():
    """`add_maskinit_config` declares each key under a comment saying what it does (Detectron2's defaults.py style)."""
    import inspect

    from maskinit.config import add_maskinit_config

    lines = [line.strip() for line in inspect.getsource(add_maskinit_config).splitlines()]
    keys = [index for index, line in enumerate(lines) if line.startswith("_C.MASKINIT.") and "CfgNode()" not in line]
    assert len(keys) > 40
    for index in keys:
        above = index - 1
        while not lines[above].startswith(("#", "_C.")):  # a comment may run over several lines
            above -= 1
        assert lines[above].startswith("#"), f"{lines[index]} has no comment"
