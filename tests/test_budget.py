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
    assert "re-planned every 5% of them from the run's own steps" in line
    # the line prints the measured s/iter to 3 decimals: the iterations follow from the unrounded one
    assert summary["time_budget"]["planned_iter"] == iterations
    assert max(1, int(10 / (speed + 0.0005))) <= iterations <= max(1, int(10 / (speed - 0.0005)))
    assert summary["max_iter"] == summary["iterations"]  # the length the run ended with, re-planned or not
    assert summary["fit"]["mode"] == "safe" and "keys fitted to the training data (--fit safe)" in result.stderr
    assert "data fit safe: estimated" in result.stderr
    trained = summary["time_budget"]["trained_seconds"]
    ending = next(line for line in result.stdout.splitlines() if line.startswith("--time 10s: training took"))
    assert f"({round((trained / 10 - 1) * 100):+d}% of the time given), {summary['iterations']} iterations" in ending


@pytest.mark.slow
def test_epochs_keep_the_warmup_given_with_warmup_iters(tmp_path, coco):
    """--warmup-iters is kept as given when --epochs (or --time) sets the run's length, as with --max-iter."""
    import yaml
    from conftest import train_options

    from maskinit.config import load_config
    from maskinit.train import train

    out = tmp_path / "warmup"
    options = train_options(out, coco, max_iter=None, checkpoint_period=1000, epochs=1.0, warmup_iters=5)
    summary = train(load_config(preset="tiny"), options)
    saved = yaml.safe_load((out / "config.yaml").read_text())["SOLVER"]
    assert summary["iterations"] == saved["MAX_ITER"] == 2 and saved["WARMUP_ITERS"] == 5


def test_the_time_budgets_account_says_how_the_run_went():
    from maskinit.cli.training import time_budget_line

    assert time_budget_line(169, 164, 400, 400) == (
        "--time 2m49s: training took 2m44s (-3% of the time given), 400 iterations"
    )
    assert time_budget_line(169, 171, 400, 352) == (
        "--time 2m49s: training took 2m51s (+1% of the time given), 352 iterations (planned 400 before the run, "
        "re-planned from its own steps)"
    )
    assert "(+0% of the time given)" in time_budget_line(258, 257.9, 470, 402)  # never "-0%"
    assert time_budget_line(169, 204, 400, 352).endswith(
        "; its last steps ran slower than the ones it was re-planned from"
    )


def test_a_replanned_length_is_what_the_time_left_holds():
    from maskinit.time_budget import replanned_iterations

    assert replanned_iterations(100, done=50, spent=40, seconds_per_iter=0.5, bound=400) == 170
    assert replanned_iterations(100, done=50, spent=10, seconds_per_iter=0.1, bound=400) == 400  # the loop's end
    assert replanned_iterations(100, done=50, spent=110, seconds_per_iter=0.5, bound=400) == 50  # time up: ends now
    assert replanned_iterations(100, done=50, spent=99.9, seconds_per_iter=0.5, bound=400) == 50


def test_a_replanned_schedule_never_goes_back_up():
    from maskinit.config import load_config
    from maskinit.time_budget import TimeBudget, replanned_config

    planned = load_config(preset="tiny")  # 400 iterations, warmup 80, LR step at 320
    budget = TimeBudget(100.0)
    longer = replanned_config(planned, planned, budget, 500, done=100)
    assert (longer.SOLVER.MAX_ITER, longer.SOLVER.STEPS, longer.SOLVER.WARMUP_ITERS) == (500, (400,), 80)  # warmup over
    early = replanned_config(planned, planned, budget, 200, done=50)
    assert (early.SOLVER.STEPS, early.SOLVER.WARMUP_ITERS) == ((160,), 40)  # all ahead: rescaled
    assert replanned_config(planned, longer, budget, 300, done=420).SOLVER.STEPS == (400,)  # passed: stays
    # the step would now be behind the run: it comes at once, never before
    assert replanned_config(planned, planned, budget, 200, done=170).SOLVER.STEPS == (170,)
    kept = replanned_config(planned, planned, TimeBudget(100.0, keep_steps=True, keep_warmup=True), 360, done=100)
    assert (kept.SOLVER.STEPS, kept.SOLVER.WARMUP_ITERS) == ((320,), 80)
    assert planned.SOLVER.MAX_ITER == 400 and planned.SOLVER.STEPS == (320,)  # not changed
    assert TimeBudget.of(60, {"SOLVER.STEPS"}) == TimeBudget(60.0, keep_steps=True)
    assert TimeBudget.of(None) is None


def slower_steps(more: float):
    """A training hook whose steps take `more` seconds longer each iteration (as a run's steps get slower
    as it learns, more)."""
    import time

    from detectron2.engine import HookBase

    class Slower(HookBase):
        def after_step(self):
            time.sleep(more * self.trainer.iter)

    return Slower()


def lr_history(out):
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    return [(row["iteration"], row["lr"]) for row in rows if "lr" in row]


@pytest.mark.slow
def test_time_replans_a_run_whose_steps_get_slower(tmp_path, coco):
    """Each step 0.05 s slower than the one before: the length planned before the run would take twice
    the time given or more; re-planned as it goes, the run ends within a few percent of it, with its LR step at
    the same share of its new length, and its config.yaml says the length it ran."""
    import yaml
    from conftest import train_options

    from maskinit.config import load_config
    from maskinit.train import train

    out = tmp_path / "slower"
    options = train_options(out, coco, max_iter=None, checkpoint_period=1000, time_budget=15.0)
    summary = train(load_config(preset="tiny"), options, hooks=[slower_steps(0.05)])
    budget = summary["time_budget"]
    assert summary["status"] == "finished" and budget["seconds"] == 15.0
    assert summary["iterations"] == summary["max_iter"] < budget["planned_iter"]
    assert budget["replans"] and all(done < length for done, length in budget["replans"][:-1])
    assert 0.85 * 15 <= budget["trained_seconds"] <= 1.1 * 15
    saved = yaml.safe_load((out / "config.yaml").read_text())["SOLVER"]
    assert saved["MAX_ITER"] == summary["iterations"]
    assert (out / "model_final.pth").is_file() and summary["eval"]["segm"]
    (step,) = saved["STEPS"]
    lrs = dict(lr_history(out))
    base = load_config(preset="tiny").SOLVER.BASE_LR
    assert lrs[summary["iterations"] - 1] == pytest.approx(base * 0.1)  # the step came, once
    assert all(lr <= base * 1.0001 for lr in lrs.values())
    assert 0.6 * summary["iterations"] <= step <= 0.9 * summary["iterations"]


@pytest.mark.slow
def test_time_grows_a_run_whose_steps_are_faster_than_timed(tmp_path, coco, monkeypatch):
    """The steps timed before the run were slow (here: said to be 3x the real ones): the run grows to
    fill the time given, up to twice the planned length."""
    import yaml
    from conftest import train_options

    import maskinit.budget
    from maskinit.config import load_config
    from maskinit.run_options import rescale_to_max_iter
    from maskinit.train import train

    real = maskinit.budget.measure_seconds_per_iter
    monkeypatch.setattr(maskinit.budget, "measure_seconds_per_iter", lambda cfg: 3 * real(cfg))
    out = tmp_path / "faster"
    options = train_options(out, coco, max_iter=None, checkpoint_period=1000, time_budget=8.0)
    cfg = load_config(preset="tiny", overrides=["MASKINIT.EMA.ENABLED", "True"])  # its window follows the length
    summary = train(cfg, options)
    budget = summary["time_budget"]
    assert summary["status"] == "finished"
    assert budget["planned_iter"] < summary["iterations"] <= 2 * budget["planned_iter"]
    assert budget["trained_seconds"] <= 1.08 * 8
    planned = cfg.clone()
    rescale_to_max_iter(planned, budget["planned_iter"], keep_steps=False, keep_warmup=False)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["SOLVER"]["MAX_ITER"] == summary["iterations"]
    assert saved["MASKINIT"]["EMA"]["DECAY"] > planned.MASKINIT.EMA.DECAY  # a longer run, a longer window


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
