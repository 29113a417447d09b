"""Config and option checks: every refusal is one line naming the key (or option) and its value, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from maskinit import MaskinitError, load_config
from maskinit.cli import app
from maskinit.config import build_config, check_config, export_config
from maskinit.devices import with_device
from maskinit.diagnostics import compare, inspect_init
from maskinit.initializers import build_initializer
from maskinit.norms import build_norm_variant

runner = CliRunner()
X101 = "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml"
R101 = "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ------------------------------------------------------------------------- check_config, by override

BAD_OVERRIDES = [
    (["SOLVER.BASE_LR", "0"], "SOLVER.BASE_LR must be a positive finite number, got 0.0"),
    (["SOLVER.BASE_LR", "-1e-3"], "SOLVER.BASE_LR must be a positive finite number, got -0.001"),
    (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD must be at least 1, got 0"),
    (["SOLVER.MAX_ITER", "-1"], "SOLVER.MAX_ITER must be at least 1, got -1"),
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be at least 1"),
    (["SOLVER.WARMUP_ITERS", "-5"], "SOLVER.WARMUP_ITERS must be at least 0"),
    (["SOLVER.STEPS", "(300, 200)"], "SOLVER.STEPS must be increasing iterations"),
    (["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0"], "SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be a positive finite number"),
    (["SOLVER.LR_SCHEDULER_NAME", "Wavy"], "unknown LR scheduler 'Wavy' for SOLVER.LR_SCHEDULER_NAME"),
    (["MODEL.PIXEL_STD", "[0.0, 57.1, 58.4]"], "MODEL.PIXEL_STD must be positive finite numbers"),
    (["MODEL.PIXEL_STD", "[57.4, 57.1]"], "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need one value per channel"),
    (["MODEL.RESNETS.DEPTH", "77"], "unknown ResNet depth 77 for MODEL.RESNETS.DEPTH (known: 18, 34, 50, 101, 152)"),
    (["MODEL.RESNETS.NUM_GROUPS", "32"], "MODEL.RESNETS.DEPTH 18 needs RES2_OUT_CHANNELS 64 and NUM_GROUPS 1"),
    (["MODEL.ROI_HEADS.NUM_CLASSES", "0"], "MODEL.ROI_HEADS.NUM_CLASSES must be at least 1"),
    (["TEST.EVAL_PERIOD", "-1"], "TEST.EVAL_PERIOD must be at least 0"),
    (["TEST.DETECTIONS_PER_IMAGE", "-1"], "TEST.DETECTIONS_PER_IMAGE must be at least 1, got -1"),
    (["MASKINIT.OPTIMIZER", "bogus"], "unknown optimizer 'bogus' for MASKINIT.OPTIMIZER (known: sgd, adam, adamw)"),
    (["MASKINIT.LR_SCHEDULE", "wavy"], "unknown LR schedule 'wavy' for MASKINIT.LR_SCHEDULE"),
    (["MASKINIT.AMP_DTYPE", "fp8"], "unknown AMP dtype 'fp8' for MASKINIT.AMP_DTYPE"),
    (["MASKINIT.PRIOR_PROB", "1.0"], "MASKINIT.PRIOR_PROB must be in [0, 1)"),
    (["MASKINIT.PLATEAU.FACTOR", "1.5"], "MASKINIT.PLATEAU.FACTOR must be in (0, 1)"),
    (["MASKINIT.PLATEAU.PERIOD", "0"], "MASKINIT.PLATEAU.PERIOD must be at least 1"),
    (["MASKINIT.PLATEAU.THRESHOLD", "1.0"], "MASKINIT.PLATEAU.THRESHOLD must be in [0, 1)"),
    (["MASKINIT.PLATEAU.COOLDOWN", "-1"], "MASKINIT.PLATEAU.COOLDOWN must be at least 0"),
    (["MASKINIT.PLATEAU.METRIC", "''"], "MASKINIT.PLATEAU.METRIC must name a metric"),
    (["MASKINIT.AUGMENT.NAME", "mosaic"], "unknown MASKINIT.AUGMENT.NAME 'mosaic'"),
    (["MASKINIT.COMPONENT_INIT.FPN", "bogus"], "MASKINIT.COMPONENT_INIT.FPN: unknown initializer 'bogus'"),
    (["MASKINIT.CLASS_NAMES", "['a', 'b']"], "MASKINIT.CLASS_NAMES and MASKINIT.CLASS_IDS differ in length"),
]


@pytest.mark.parametrize("overrides,message", BAD_OVERRIDES, ids=[o[0] for o, _ in BAD_OVERRIDES])
def test_overrides_pass_the_same_checks_as_options(overrides, message):
    with pytest.raises(MaskinitError) as error:
        load_config(preset="tiny", overrides=overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_export_config_refuses_a_bogus_maskinit_key_instead_of_writing_it(tmp_path):
    out = tmp_path / "cfg.yaml"
    line = one_error_line(invoke("export-config", "--preset", "tiny", "-o", out, "MASKINIT.OPTIMIZER", "bogus"))
    assert "MASKINIT.OPTIMIZER" in line and "bogus" in line
    assert not out.exists()


def test_an_int_for_a_float_key_is_the_float():
    cfg = load_config(preset="tiny", overrides=["SOLVER.BASE_LR", "1", "SOLVER.WEIGHT_DECAY", "0"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.SOLVER.WEIGHT_DECAY == 0.0


@pytest.mark.slow
def test_every_preset_and_recipe_passes_the_checks():
    from maskinit.config import list_presets
    from maskinit.recipes import list_recipes

    for preset in list_presets():
        check_config(load_config(preset=preset))
    for recipe in list_recipes():
        check_config(load_config(recipe=recipe))


def test_check_config_catches_values_no_override_can_write():
    cfg = load_config(preset="tiny")
    cfg.defrost()
    cfg.MODEL.PIXEL_STD = [57.0, float("nan"), 58.0]
    with pytest.raises(MaskinitError, match="MODEL.PIXEL_STD must be positive finite numbers"):
        check_config(cfg)
    cfg = load_config(preset="tiny")
    cfg.defrost()
    cfg.SOLVER.BASE_LR = float("inf")
    with pytest.raises(MaskinitError, match="SOLVER.BASE_LR"):
        check_config(cfg)


def test_a_zero_pixel_std_in_a_config_file_is_refused_when_loaded(tmp_path):
    path = tmp_path / "cfg.yaml"
    text = export_config(preset="tiny").replace("- 57.375", "- 0.0")
    path.write_text(text)
    with pytest.raises(MaskinitError, match="MODEL.PIXEL_STD"):
        load_config(path)


# --------------------------------------------------------------------------------- YAML files

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unusable_yaml_files_are_one_line_refusals(tmp_path):
    empty = write(tmp_path / "empty.yaml", "# nothing but a comment\n")
    listed = write(tmp_path / "list.yaml", "- MODEL\n- SOLVER\n")
    write(tmp_path / "a.yaml", '_BASE_: "b.yaml"\n')
    write(tmp_path / "b.yaml", '_BASE_: "a.yaml"\n')
    numbered = write(tmp_path / "n.yaml", "_BASE_: 5\n")
    missing_base = write(tmp_path / "m.yaml", '_BASE_: "nowhere.yaml"\n')
    cases = [
        (empty, "is empty"),
        (listed, "is a YAML list, not a mapping of config keys"),
        (tmp_path / "a.yaml", "_BASE_ cycle a.yaml -> b.yaml -> a.yaml"),
        (numbered, "_BASE_ must name a YAML file, got 5"),
        (missing_base, "nowhere.yaml not found"),
    ]
    for path, message in cases:
        for options in (dict(path=path), dict(base=str(path))):
            with pytest.raises(MaskinitError) as error:
                load_config(**options)
            assert message in str(error.value), (options, str(error.value))
            assert str(path) in str(error.value)


def test_cli_base_cycle_is_one_line_not_a_recursion_error(tmp_path):
    write(tmp_path / "a.yaml", '_BASE_: "b.yaml"\n')
    write(tmp_path / "b.yaml", '_BASE_: "a.yaml"\n')
    line = one_error_line(invoke("export-config", "--base", tmp_path / "a.yaml"))
    assert "_BASE_ cycle" in line


def test_a_base_chain_that_is_fine_still_loads(tmp_path):
    write(tmp_path / "parent.yaml", "SOLVER:\n  BASE_LR: 0.005\n")
    child = write(tmp_path / "child.yaml", '_BASE_: "parent.yaml"\nSOLVER:\n  MAX_ITER: 10\n')
    cfg = load_config(base=str(child), preset="tiny")
    assert cfg.SOLVER.MAX_ITER == 400  # the preset sets it over the base
    assert build_config(base=str(child), preset="tiny").base.SOLVER.BASE_LR == 0.005


# ----------------------------------------------------------------------- norm and initializer specs

def test_gn_groups_must_be_an_integer_not_a_bool():
    with pytest.raises(MaskinitError, match="GN groups must be a positive integer, got True"):
        build_norm_variant("GN:groups=true")
    line = one_error_line(invoke("export-config", "--preset", "tiny", "--norm", "GN:groups=true"))
    assert "GN groups" in line


@pytest.mark.parametrize(
    "spec,message",
    [
        ("normal:std=-1", "std must be a positive finite number, got -1"),
        ("normal:std=nan", "std must be a positive finite number, got nan"),
        ("normal:std=0", "std must be a positive finite number, got 0"),
        ("trunc_normal:std=0", "std must be a positive finite number, got 0"),
        ("trunc_normal:std=inf", "std must be a positive finite number, got inf"),
        ("normal:std=0.01,mean=inf", "mean must be a finite number, got inf"),
        ("orthogonal:gain=nan", "non-finite weights"),
    ],
)
def test_bad_initializer_values_are_refused_at_build_time(spec, message):
    with pytest.raises(MaskinitError) as error:
        build_initializer(spec)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(MaskinitError, match="MASKINIT.INIT"):
        load_config(preset="tiny", init=spec)


def test_good_initializer_values_still_build():
    for spec in ("normal:std=1e-2", "trunc_normal:std=0.02,mean=0", "xavier_uniform:gain=2"):
        build_initializer(spec)


# ----------------------------------------------------------------------------------- inspect-init

@pytest.mark.parametrize(
    "args,message",
    [
        (["--init", "normal:std=-1"], "std must be a positive finite number"),
        (["--init", "normal:std=nan"], "std must be a positive finite number"),
        (["--init", "trunc_normal:std=0"], "std must be a positive finite number"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--seed", "-1", "--compare", "c2,xavier_uniform"], "--seed must be a non-negative integer"),
        (["SOLVER.BASE_LR", "-1"], "SOLVER.BASE_LR must be a positive finite number"),
    ],
)
def test_inspect_init_refuses_bad_input_with_exit_2_not_1(args, message):
    assert message in one_error_line(invoke("inspect-init", "--preset", "tiny", *args))


def test_inspect_init_library_refuses_a_negative_seed_before_building():
    cfg = load_config(preset="tiny")
    with pytest.raises(MaskinitError, match="--seed"):
        inspect_init(cfg, seed=-1)
    with pytest.raises(MaskinitError, match="--seed"):
        compare(cfg, "c2", seed=-3)


# --------------------------------------------------------------------- negative values, unknown options

def test_a_negative_value_after_an_override_key_parses():
    result = invoke("export-config", "--preset", "tiny", "SEED", "-7", "SOLVER.BASE_LR", "0.002")
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["SEED"] == -7 and cfg["SOLVER"]["BASE_LR"] == 0.002


@pytest.mark.parametrize("command", [["export-config"], ["inspect-init"], ["train", "--output-dir", "{tmp}"]])
def test_negative_override_values_are_checked_not_read_as_options(command, tmp_path):
    command = [str(tmp_path / "run") if arg == "{tmp}" else arg for arg in command]
    line = one_error_line(invoke(*command, "--preset", "tiny", "SOLVER.MAX_ITER", "-1"))
    assert "SOLVER.MAX_ITER must be at least 1, got -1" in line
    line = one_error_line(invoke(*command, "--preset", "tiny", "TEST.DETECTIONS_PER_IMAGE", "-1"))
    assert "TEST.DETECTIONS_PER_IMAGE" in line
    assert not (tmp_path / "run").exists()


def test_an_unknown_option_is_one_line():
    assert one_error_line(invoke("export-config", "--preset", "tiny", "--nrom", "GN")).endswith(
        "no such option: --nrom"
    )


# ---------------------------------------------------------------------------------------- train

def test_train_checks_the_config_with_the_run_options_applied(tmp_path):
    line = one_error_line(invoke("train", "--preset", "tiny", "--output-dir", tmp_path / "o", "--clip-grad", "inf"))
    assert "SOLVER.CLIP_GRADIENTS.CLIP_VALUE" in line and "inf" in line
    assert not (tmp_path / "o").exists()


def test_from_scratch_is_always_on_and_cannot_be_turned_off(tmp_path):
    command = typer.main.get_command(app).commands["train"]
    option = next(p for p in command.params if p.name == "from_scratch")
    assert option.opts == ["--from-scratch"] and not option.secondary_opts
    assert option.help.startswith("Always on")
    line = one_error_line(invoke("train", "--preset", "tiny", "--output-dir", tmp_path / "o", "--no-from-scratch"))
    assert "no such option: --no-from-scratch" in line


@pytest.mark.parametrize("name", ["export-config", "train"])
def test_ims_per_batch_help_names_both_scaling_rules(name):
    command = typer.main.get_command(app).commands[name]
    help_text = next(p for p in command.params if p.name == "ims_per_batch").help
    assert "linearly for SGD" in help_text and "square root for Adam/AdamW" in help_text


# -------------------------------------------------------------------------------------- --base

@pytest.mark.parametrize("base,depth,groups,width", [(X101, 101, 32, 8), (R101, 101, 1, 64)])
def test_an_explicit_base_keeps_its_backbone(base, depth, groups, width):
    cfg = load_config(base=base)
    r = cfg.MODEL.RESNETS
    assert (r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.RES2_OUT_CHANNELS) == (depth, groups, width, 256)
    assert r.STRIDE_IN_1X1 is False and r.NORM == "GN" and cfg.MODEL.WEIGHTS == ""
    assert load_config().MODEL.RESNETS.DEPTH == 50  # no --base: the preset's ResNet-50


def test_readme_x101_example_builds_a_resnext_101():
    result = invoke("export-config", "--base", X101, "--schedule", "9x", "--ims-per-batch", "64")
    assert result.exit_code == 0, result.output
    resnets = yaml.safe_load(result.stdout)["MODEL"]["RESNETS"]
    assert (resnets["DEPTH"], resnets["NUM_GROUPS"], resnets["WIDTH_PER_GROUP"]) == (101, 32, 8)
    assert resnets["STRIDE_IN_1X1"] is False


# ------------------------------------------------------------------------------------- --explain

def test_explain_to_a_file_is_whole_lines():
    result = invoke("export-config", "--base", X101, "--explain", "SOLVER.BASE_LR", "0.0003")
    assert result.exit_code == 0, result.output
    rows = build_config(base=X101, overrides=["SOLVER.BASE_LR", "0.0003"]).differences()
    lines = result.stderr.splitlines()
    assert len(lines) == len(rows)
    assert (
        "MODEL.WEIGHTS: detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl -> ''  "
        "(from scratch: nothing pretrained is loaded)"
        in lines
    )
    assert "SOLVER.BASE_LR: 0.02 -> 0.0003  (override)" in lines
    assert not any("…" in line or "│" in line for line in lines)


# ------------------------------------------------------------------------------------ eval, predict

@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    export_config(path, preset="tiny")
    return path


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize(
    "device,message", [("tpu", "--device must be cpu or cuda, got 'tpu'"), ("cuda", "CUDA is not available")]
)
def test_eval_and_predict_refuse_a_device_in_one_line(command, device, message, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = ["--input", tmp_path, "--output", tmp_path / "out"] if command == "predict" else []
    line = one_error_line(
        invoke(command, "--config", tiny_config, "--weights", tmp_path / "w.pth", "--device", device, *extra)
    )
    assert message in line


def test_a_config_on_cuda_without_cuda_names_its_key(tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(tiny_config, overrides=["MODEL.DEVICE", "cuda"])
    with pytest.raises(MaskinitError, match="MODEL.DEVICE cuda but CUDA is not available here"):
        with_device(cfg, None)
    assert with_device(cfg, "cpu").MODEL.DEVICE == "cpu" and cfg.MODEL.DEVICE == "cuda"  # a copy


# ----------------------------------------------------------------------------------- test caches

def test_the_tests_write_no_cache_into_the_home_folder():
    from maskinit.data.synthetic import default_cache_root

    home = Path.home().resolve()
    for path in (default_cache_root(), Path(matplotlib.get_cachedir()), Path(matplotlib.get_configdir()),
                 Path(os.environ["XDG_CACHE_HOME"]), Path(os.environ["FVCORE_CACHE"]), Path(os.environ["TORCH_HOME"])):
        assert home not in path.resolve().parents, path
