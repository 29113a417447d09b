"""Published recipes: each loads through `--recipe`, obeys the from-scratch rules, carries the
transcribed numbers, and builds (at a tiny scale) on CPU; the CLI's --recipe and `list`."""

from __future__ import annotations

import pytest
import yaml
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from typer.testing import CliRunner

from maskinit import MaskinitError, load_config
from maskinit.cli import app
from maskinit.config import build_config
from maskinit.recipes import RECIPES, RECIPES_DIR, list_recipes, recipe_file

NORM_KEYS = ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")
LSJ = ("d2-lsj-100ep", "d2-lsj-200ep", "d2-lsj-400ep")
IMAGENET_STD_BGR = [57.375, 57.12, 58.395]
TINY = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.DEVICE", "cpu",
]
runner = CliRunner()


@pytest.fixture(scope="module")
def recipes():
    return {name: load_config(recipe=name) for name in list_recipes()}


def test_table_and_files_agree():
    assert set(list_recipes()) == {p.stem for p in RECIPES_DIR.glob("*.yaml")}
    for name, recipe in RECIPES.items():
        assert recipe_file(name).is_file()
        text = recipe_file(name).read_text()
        header = "\n".join(text.splitlines()[:5])
        assert f"box AP {recipe.box_ap}" in text and f"mask AP {recipe.mask_ap}" in text, name
        assert recipe.source.split(" ", 1)[1].rsplit("/", 1)[-1] in header, name
        assert 0 < recipe.mask_ap < recipe.box_ap < 60 and recipe.description


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(MaskinitError, match="unknown recipe 'nope'.*d2-lsj-100ep.*mmdet-gn-all-scratch-6x"):
        recipe_file("nope")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_obeys_from_scratch_rules(recipes, name):
    cfg = recipes[name]
    assert cfg.MASKINIT.RECIPE == name and cfg.MASKINIT.PRESET == ""
    assert cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.MASK_ON
    for key in NORM_KEYS:
        assert cfg.MODEL[key].NORM not in ("", "FrozenBN"), key
        assert cfg.MODEL[key].NORM == cfg.MASKINIT.NORM
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert (cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (256, 1024)
    assert list(cfg.MODEL.PIXEL_MEAN) == [103.53, 116.28, 123.675]


def test_d2_scratch_values(recipes):
    gn3 = recipes["d2-scratch-gn-3x"]
    assert gn3.MASKINIT.NORM == "GN" and gn3.MASKINIT.INIT == "c2"
    assert list(gn3.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]  # faithful: the source keeps C2's std of 1
    assert "no difference" in recipe_file("d2-scratch-gn-3x").read_text()
    assert (gn3.SOLVER.IMS_PER_BATCH, gn3.SOLVER.BASE_LR, gn3.SOLVER.MAX_ITER) == (16, 0.02, 270000)
    assert tuple(gn3.SOLVER.STEPS) == (210000, 250000)
    assert tuple(gn3.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)
    for name, norm in (("d2-scratch-gn-9x", "GN"), ("d2-scratch-syncbn-9x", "SyncBN")):
        cfg = recipes[name]
        assert cfg.MASKINIT.NORM == norm
        assert list(cfg.MODEL.PIXEL_STD) == IMAGENET_STD_BGR
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (64, 0.08, 202500)
        assert tuple(cfg.SOLVER.STEPS) == (187500, 197500)
        assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WEIGHT_DECAY) == (1000, 0.0001)
        assert cfg.TEST.EVAL_PERIOD == 2500
        assert cfg.MASKINIT.AUGMENT.NAME == "default"
    assert recipes["d2-scratch-syncbn-9x"].TEST.PRECISE_BN.ENABLED
    assert not recipes["d2-scratch-gn-9x"].TEST.PRECISE_BN.ENABLED


@pytest.mark.parametrize(
    "name,factor,warmup", [("d2-lsj-100ep", 1, 500), ("d2-lsj-200ep", 2, 1000), ("d2-lsj-400ep", 4, 2000)]
)
def test_lsj_values(recipes, name, factor, warmup):
    cfg = recipes[name]
    assert cfg.MASKINIT.NORM == "SyncBN" and cfg.MASKINIT.INIT == "c2"
    assert list(cfg.MODEL.RPN.CONV_DIMS) == [-1, -1]
    assert (cfg.MODEL.ROI_MASK_HEAD.NUM_CONV, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM) == (4, 256)
    assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]  # common/data/constants.py imagenet_bgr256_std
    aug = cfg.MASKINIT.AUGMENT
    assert (aug.NAME, aug.LSJ_MIN_SCALE, aug.LSJ_MAX_SCALE, aug.LSJ_IMAGE_SIZE) == ("lsj", 0.1, 2.0, 1024)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM, s.MOMENTUM) == (64, 0.1, 4e-5, 0.0, 0.9)
    assert s.MAX_ITER == 184375 * factor
    assert tuple(s.STEPS) == (163889 * factor, 177546 * factor)
    # warmup_length = 500 / 184375 of training, kept as a fraction by the 200ep/400ep configs
    assert (s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WARMUP_METHOD) == (warmup, 0.067, "linear")
    assert s.WARMUP_ITERS / s.MAX_ITER == pytest.approx(500 / 184375)
    assert s.AMP.ENABLED and cfg.MASKINIT.AMP_DTYPE == "float16"
    assert cfg.TEST.EVAL_PERIOD == 5000
    assert "fp16_compression" in recipe_file("d2-lsj-100ep").read_text()


def test_mmdet_values(recipes):
    cfg = recipes["mmdet-gn-all-scratch-6x"]
    assert cfg.MASKINIT.NORM == "GN"
    assert cfg.MASKINIT.INIT == "kaiming_normal" and not cfg.MASKINIT.ZERO_INIT_RESIDUAL
    assert cfg.MASKINIT.COMPONENT_INIT.FPN == "xavier_uniform"
    assert cfg.MASKINIT.COMPONENT_INIT.RPN == "normal:std=0.01"
    assert list(cfg.MODEL.PIXEL_STD) == IMAGENET_STD_BGR  # mmdet's RGB std [58.395, 57.12, 57.375], reversed
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM) == (16, 0.02, 0.9, 0.0001, 0.0)
    per_epoch = 117266 / 16
    assert s.MAX_ITER == round(73 * per_epoch)
    assert tuple(s.STEPS) == (round(65 * per_epoch), round(71 * per_epoch))
    assert (s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WARMUP_METHOD) == (500, 0.1, "linear")
    assert not s.AMP.ENABLED and not s.CLIP_GRADIENTS.ENABLED
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,) and cfg.INPUT.MAX_SIZE_TRAIN == 1333
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 2000 and cfg.MODEL.RPN.BOUNDARY_THRESH == 0
    assert cfg.MODEL.RPN.SMOOTH_L1_BETA == pytest.approx(1 / 9)
    assert cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA == 1.0
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO == cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_model_builds_at_tiny_scale_on_cpu(name):
    from maskinit.model import build_model

    cfg = load_config(recipe=name, overrides=TINY)
    model = build_model(cfg)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    box_convs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, Conv2d)]
    assert len(box_convs) == 4 and all(conv.norm is not None for conv in box_convs)
    rpn_convs = [m for m in model.proposal_generator.rpn_head.conv.modules() if isinstance(m, nn.Conv2d)]
    assert len(rpn_convs) == (2 if name in LSJ else 1)
    norm_type = nn.GroupNorm if cfg.MASKINIT.NORM == "GN" else nn.BatchNorm2d  # SyncBN: plain BN in one process
    assert isinstance(model.backbone.bottom_up.stem.conv1.norm, norm_type)
    assert isinstance(box_convs[0].norm, norm_type)
    from maskinit.checkpoint import weights_fingerprint

    assert len(weights_fingerprint(model)) == 64  # BN's 0-dim num_batches_tracked included


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        ({"preset": "tiny"}, "--preset"),
        ({"path": "x.yaml"}, "--config"),
        ({"base": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"}, "--base"),
    ],
)
def test_recipe_refuses_preset_config_and_base(kwargs, flag):
    with pytest.raises(MaskinitError, match=f"--recipe .* {flag}"):
        build_config(recipe="d2-lsj-100ep", **kwargs)


def test_recipe_flags_and_overrides_apply_after_it():
    cfg = load_config(recipe="d2-scratch-gn-9x", ims_per_batch=16, overrides=["TEST.EVAL_PERIOD", "0"])
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (16, 0.02, 810000)
    assert cfg.TEST.EVAL_PERIOD == 0 and cfg.MASKINIT.RECIPE == "d2-scratch-gn-9x"


def test_exported_recipe_reloads_as_config(tmp_path):
    from maskinit import export_config

    out = tmp_path / "lsj.yaml"
    export_config(out, recipe="d2-lsj-200ep")
    cfg = load_config(out)
    assert cfg.MASKINIT.RECIPE == "d2-lsj-200ep" and cfg.MASKINIT.AUGMENT.NAME == "lsj"
    assert cfg.SOLVER.MAX_ITER == 368750


def test_cli_export_config_recipe(tmp_path):
    result = runner.invoke(app, ["export-config", "--recipe", "mmdet-gn-all-scratch-6x"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["MASKINIT"]["RECIPE"] == "mmdet-gn-all-scratch-6x"
    assert cfg["MODEL"]["WEIGHTS"] == "" and cfg["SOLVER"]["WEIGHT_DECAY_NORM"] == 0.0


@pytest.mark.parametrize(
    "args,message",
    [(["--recipe", "d2-gn-99x"], "unknown recipe"), (["--recipe", "d2-lsj-100ep", "--preset", "tiny"], "--preset")],
)
def test_cli_recipe_refusals_exit_2_with_one_line(args, message):
    for command in ("export-config", "train"):
        result = runner.invoke(app, [command, *args])
        assert result.exit_code == 2, (command, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (command, result.stderr)
        assert "Traceback" not in result.output


def test_cli_list_shows_recipes_with_ap():
    result = runner.invoke(app, ["list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "recipes" in result.output
    for name, recipe in RECIPES.items():
        line = next(line for line in result.output.splitlines() if name in line)
        assert f"{recipe.box_ap:.1f}" in line and f"{recipe.mask_ap:.1f}" in line, line
