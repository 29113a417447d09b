"""The CLI shell: help, version, doctor, export-config and its refusals."""

from __future__ import annotations

import subprocess
import sys

import yaml
from typer.testing import CliRunner

from maskinit import __version__
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
        "export-config", "--preset", "tiny", "--norm", "SyncBN", "--init", "xavier_uniform",
        "--num-classes", "5", "-o", str(out), "SOLVER.BASE_LR", "0.01",
    )
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(out.read_text())
    assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 5
    assert cfg["SOLVER"]["BASE_LR"] == 0.01
    assert cfg["MODEL"]["FPN"]["NORM"] == "SyncBN"
    assert cfg["MASKINIT"]["INIT"] == "xavier_uniform"


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
