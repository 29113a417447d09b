"""A run's length as epochs or wall-clock time (`maskinit/budget.py`), and the fit mode on the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from maskinit.budget import describe_duration, parse_duration
from maskinit.cli import app
from maskinit.errors import MaskinitError


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 90),
        ("45s", 45),
        ("30m", 1800),
        ("30min", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2d", 172800),
        (" 1H 5M ", 3900),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "two hours", "0", "-5m", "5x", "m", "1h30", "inf"])
def test_bad_durations_are_one_line(text):
    with pytest.raises(MaskinitError, match="--time"):
        parse_duration(text)


def test_describe_duration():
    assert [describe_duration(s) for s in (5, 65, 3600, 5430)] == ["5s", "1m05s", "1h00m", "1h30m"]


def data_flags(coco) -> list[str]:
    return [
        "--train-json",
        coco.train_json,
        "--train-images",
        coco.train_images,
        "--val-json",
        coco.val_json,
        "--val-images",
        coco.val_images,
    ]


def run(args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.mark.slow
def test_epochs_set_the_iterations_from_the_training_images(tmp_path, coco):
    out = tmp_path / "epochs"
    result = run(["train", "--preset", "tiny", "--output-dir", out, "--no-progress", "--epochs", "1.5", "--fit", "off",
                  *data_flags(coco)])
    assert result.exit_code == 0, result.stderr[-3000:]
    images = len(json.loads(open(coco.train_json).read())["images"])
    expected = -(-3 * images // (2 * 4))  # ceil(1.5 x images / batch 4)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["max_iter"] == summary["iterations"] == expected
    assert f"--epochs 1.5: {expected} iterations ({images} training images, 4 per iteration)" in result.stderr
    assert summary["fit"]["mode"] == "off" and "data fit off" in result.stderr


@pytest.mark.slow
def test_time_sets_the_iterations_from_a_measured_step(tmp_path, coco):
    out = tmp_path / "timed"
    result = run(["train", "--preset", "tiny", "--output-dir", out, "--no-progress", "--time", "10s",
                  *data_flags(coco)])
    assert result.exit_code == 0, result.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    line = next(line for line in result.stderr.splitlines() if line.startswith("--time 10s:"))
    iterations, speed = int(line.split()[2]), float(line.split(" at ")[1].split()[0])
    # the line prints the measured s/iter to 3 decimals: the iterations follow from the unrounded one
    assert summary["max_iter"] == iterations
    assert max(1, int(10 / (speed + 0.0005))) <= iterations <= max(1, int(10 / (speed - 0.0005)))
    assert summary["fit"]["mode"] == "safe" and "keys fitted to the training data (--fit safe)" in result.stderr
    assert "data fit safe: estimated" in result.stderr
    trained = summary["seconds_per_iter"] * summary["iterations"]
    ending = next(line for line in result.stdout.splitlines() if line.startswith("--time 10s: training took"))
    assert f"({(trained / 10 - 1) * 100:+.0f}% of the time given)" in ending


def test_the_time_budgets_account_says_why_a_run_took_longer():
    from maskinit.cli.training import time_budget_line

    assert time_budget_line(169, 164) == "--time 2m49s: training took 2m44s (-3% of the time given)"
    assert time_budget_line(169, 204) == (
        "--time 2m49s: training took 3m24s (+21% of the time given); its steps ran slower than the 10 timed "
        "before the run, from scratch"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-iter", "5", "--epochs", "1"], "--max-iter and --epochs each set the run's length: give one"),
        (["--time", "1h", "--epochs", "1"], "--epochs and --time each set the run's length: give one"),
        (["--time", "1h", "--resume"], "--time measures this machine before a new run"),
        (["--time", "soon"], "--time 'soon' is not a duration"),
        (["--epochs", "0"], "--epochs must be a positive number"),
        (["--fit", "most"], "unknown fit mode 'most' for MASKINIT.FIT (known: off, safe, full)"),
    ],
)
def test_length_and_fit_refusals_are_one_line(tmp_path, coco, extra, message):
    out = tmp_path / "refused"
    result = run(["train", "--preset", "tiny", "--output-dir", out, "--no-progress", *data_flags(coco), *extra])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (out / "config.yaml").exists()
