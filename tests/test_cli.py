"""The CLI shell: help, version, doctor, export-config and its refusals, one option vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from maskinit import __version__, load_config
from maskinit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("doctor", "export-config", "list"):
        assert command in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.slow
def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "maskinit", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert __version__ in out.stdout


def test_doctor_reports_a_good_install():
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    for component in ("torch", "torchvision", "detectron2", "pycocotools"):
        assert component in result.output


def test_export_config_tiny_to_stdout():
    result = invoke("export-config", "--preset", "tiny")
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["MODEL"]["WEIGHTS"] == ""
    assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 18
    assert cfg["MASKINIT"]["NORM"] == "GN"


def test_export_config_to_file_with_options(tmp_path):
    out = tmp_path / "sub" / "cfg.yaml"
    result = invoke(
        "export-config",
        "--preset",
        "tiny",
        "--norm",
        "SyncBN",
        "--init",
        "xavier_uniform",
        "--num-classes",
        "5",
        "-o",
        str(out),
        "SOLVER.BASE_LR",
        "0.01",
    )
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(out.read_text())
    assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 5
    assert cfg["SOLVER"]["BASE_LR"] == 0.01
    assert cfg["MODEL"]["FPN"]["NORM"] == "SyncBN"
    assert cfg["MASKINIT"]["INIT"] == "xavier_uniform"


@pytest.mark.slow
def test_export_config_plain_and_explain():
    result = invoke("export-config", "--preset", "tiny", "--plain", "--explain")
    assert result.exit_code == 0, result.output
    assert "MASKINIT" not in yaml.safe_load(result.stdout)
    assert "FREEZE_AT" in result.stderr and "FrozenBN" in result.stderr


def test_schedule_option():
    result = invoke("export-config", "--schedule", "9x", "--ims-per-batch", "64")
    cfg = yaml.safe_load(result.stdout)
    assert cfg["SOLVER"]["MAX_ITER"] == 202500
    assert cfg["SOLVER"]["STEPS"] == [187500, 197500]


def test_list_shows_registries():
    result = invoke("list")
    assert result.exit_code == 0
    for name in ("GN", "GNWS", "SyncBN", "kaiming_normal", "xavier_uniform", "tiny"):
        assert name in result.output


BAD = [
    (["--norm", "FrozenBN"], "FrozenBN"),
    (["MODEL.WEIGHTS", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"], "MODEL.WEIGHTS"),
    (["MODEL.BACKBONE.FREEZE_AT", "2"], "FREEZE_AT"),
    (["--preset", "huge"], "unknown preset"),
    (["--norm", "XN"], "unknown norm"),
    (["--init", "magic"], "unknown initializer"),
    (["--init", "kaiming_normal:mode=sideways"], "kaiming_normal"),
    (["MODEL.NOPE", "1"], "unknown config key"),
    (["SOLVER.MAX_ITER", "many"], "SOLVER.MAX_ITER"),
    (["--schedule", "5x"], "unknown schedule"),
    (["--config", "/nonexistent.yaml"], "not found"),
]


@pytest.mark.slow
def test_bad_options_exit_2_with_one_line():
    for args, message in BAD:
        result = invoke("export-config", *args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.stderr)
        assert message in lines[0], (args, lines)
        assert "Traceback" not in result.output


def test_output_path_is_a_directory(tmp_path):
    result = invoke("export-config", "--preset", "tiny", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "directory" in result.stderr


def test_doctor_exits_1_with_the_fix_when_something_needed_is_broken(monkeypatch):
    from maskinit import doctor

    broken = doctor.Check("torchvision", False, "ops broken: operator torchvision::nms does not exist", "make setup")
    monkeypatch.setattr(doctor, "check_torchvision", lambda: broken)
    result = invoke("doctor")
    assert result.exit_code == 1
    assert "torchvision" in result.stderr and "fix: make setup" in result.stderr


# ------------------------------------------------------------------------------ one vocabulary
# An output folder is --output-dir, a JSON report --json-out, a command's one dataset its JSON argument;
# the old names stay as hidden aliases.


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from maskinit.data.synthetic import generate_coco_dataset

    return generate_coco_dataset(tmp_path_factory.mktemp("vocabulary"), 2, seed=4)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """config.yaml and an untrained model_final.pth of the tiny preset."""
    from conftest import save_untrained_checkpoint

    from maskinit.config import export_config

    folder = tmp_path_factory.mktemp("run")
    export_config(folder / "config.yaml", preset="tiny", overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    save_untrained_checkpoint(load_config(folder / "config.yaml"), folder)
    return folder


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output)
    return lines[0]


def shown_options(*command) -> str:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("command", ["check-data", "analyze-data"])
def test_dataset_json_is_the_argument_and_json_a_hidden_alias(command, small_set, tmp_path):
    reports = {}
    for form in ("argument", "option"):
        where = [str(small_set.json_file)] if form == "argument" else ["--json", str(small_set.json_file)]
        out = tmp_path / f"{form}.json"
        result = invoke(command, *where, "--images", str(small_set.image_root), "--json-out", str(out))
        assert result.exit_code == 0, result.output
        reports[form] = json.loads(out.read_text())
    assert reports["argument"] == reports["option"]
    assert "--json " not in shown_options(command) and "JSON" in shown_options(command)
    assert "argument" in error_line(invoke(command, "--images", str(small_set.image_root)))
    other = tmp_path / "other.json"
    both = invoke(command, str(small_set.json_file), "--json", str(other), "--images", str(small_set.image_root))
    assert "old name" in error_line(both)


@pytest.mark.slow
def test_predict_writes_to_output_dir_and_output_is_a_hidden_alias(trained_run, small_set, tmp_path):
    image = sorted(small_set.image_root.iterdir())[0]
    run = [
        "predict",
        "--config",
        str(trained_run / "config.yaml"),
        "--weights",
        str(trained_run / "model_final.pth"),
        "--input",
        str(image),
        "--device",
        "cpu",
    ]
    written = {}
    for flag in ("--output-dir", "--output"):
        out = tmp_path / flag.strip("-")
        result = invoke(*run, flag, str(out))
        assert result.exit_code == 0, result.output
        written[flag] = json.loads((out / "predictions.json").read_text())
    assert written["--output-dir"] == written["--output"]
    help_text = shown_options("predict")
    assert "--output-dir" in help_text and "--output " not in help_text
    assert "--output-dir is required" in error_line(invoke(*run))
    assert "old name" in error_line(invoke(*run, "--output-dir", str(tmp_path / "a"), "--output", str(tmp_path / "b")))


@pytest.mark.slow
def test_inspect_init_writes_json_out_and_json_is_a_hidden_alias(tmp_path):
    out = tmp_path / "init.json"
    result = invoke("inspect-init", "--preset", "tiny", "--json-out", str(out))
    assert result.exit_code in (0, 1), result.output
    assert json.loads(out.read_text())["verdict"]
    help_text = shown_options("inspect-init")
    assert "--json-out" in help_text and "--json " not in help_text
    assert "old name" in error_line(
        invoke("inspect-init", "--preset", "tiny", "--json-out", str(out), "--json", str(tmp_path / "x.json"))
    )


@pytest.mark.slow
def test_every_command_names_outputs_one_way():
    """No visible option of any command uses an old name: --output only on export-config and export (one file)."""
    for command in (
        "export-config",
        "export",
        "train",
        "eval",
        "predict",
        "inspect-init",
        "check-data",
        "analyze-data",
    ):
        text = shown_options(command)
        assert "--json " not in text, command
        if command not in ("export-config", "export"):  # both write one file: -o/--output
            assert "--output " not in text, command
