"""`train`: end to end on a generated set, resume, 2-process CPU DDP, refusals, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import train_options
from typer.testing import CliRunner

from maskinit import MaskinitError, load_config
from maskinit.cli import app
from maskinit.config import config_value
from maskinit.run_options import warn_optimizer_mismatch
from maskinit.train import TrainOptions, train

# The module-scoped fixtures train once per test process: under `make test` (pytest-xdist) this module's tests
# run in one of them, except those marked for the "processes" group.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train")]

# A short warmup so that these few iterations train at the real LR.
FAST_EVAL = ["SOLVER.WARMUP_ITERS", "2"]


options = train_options


@pytest.fixture(scope="module")
def finished_run(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    summary = train(load_config(preset="tiny", overrides=FAST_EVAL), options(out, coco))
    return out, summary


def test_outputs_of_a_finished_run(finished_run):
    out, summary = finished_run
    assert summary["status"] == "finished"
    assert summary["iterations"] == 6
    for name in (
        "config.yaml",
        "metrics.json",
        "last_checkpoint",
        "model_final.pth",
        "eval.json",
        "curves.png",
        "log.txt",
    ):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "model_0000002.pth").is_file()  # periodic checkpoint (iteration 3)
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_config_yaml_is_exact_and_reloadable(finished_run):
    out, _ = finished_run
    cfg = load_config(out / "config.yaml")
    assert cfg.SOLVER.MAX_ITER == 6
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5  # from the data
    assert cfg.INPUT.MASK_FORMAT == "polygon"
    assert cfg.MODEL.WEIGHTS == ""


def test_eval_json_holds_box_and_mask_ap(finished_run):
    out, summary = finished_run
    results = json.loads((out / "eval.json").read_text())
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert key in results[task]
        if (
            results[task]["AP"] is not None
        ):  # per-category AP exists when there are predictions (NaN is written as null)
            assert "AP-circle" in results[task]
    assert summary["eval"]["segm"].keys() == {k for k in results["segm"] if "-" not in k}


def test_run_records_that_nothing_was_loaded(finished_run):
    out, _ = finished_run
    audit = json.loads((out / "run_summary.json").read_text())["from_scratch"]
    assert audit["pretrained_tensors_loaded"] == 0
    assert audit["checkpoint_files_read"] == []
    assert audit["weights_unchanged_by_load"] is True
    assert audit["resumed_from_own_checkpoint"] is False
    assert "no tensor loaded from any checkpoint" in (out / "log.txt").read_text()


def test_lr_steps_rescale_with_max_iter(finished_run):
    out, _ = finished_run
    cfg = load_config(out / "config.yaml")
    tiny = load_config(preset="tiny")
    assert tuple(cfg.SOLVER.STEPS) == tuple(round(s * 6 / tiny.SOLVER.MAX_ITER) for s in tiny.SOLVER.STEPS)


def test_existing_run_is_refused_and_untouched(finished_run, coco):
    out, _ = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(MaskinitError, match="already holds a run"):
        train(load_config(preset="tiny"), options(out, coco))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# What the fit to the data writes into the config: a resumed run must keep it.
# (On this set of 128 px images the input size stays the preset's, so it is not among them here.)
FITTED_KEYS = ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")


def test_resume_continues_from_the_saved_iteration(coco, tmp_path):
    out = tmp_path / "resume"
    train(load_config(preset="tiny", overrides=FAST_EVAL), options(out, coco, max_iter=4, checkpoint_period=2))
    started = load_config(out / "config.yaml")
    # the same command that started the run, --resume added (and a longer run, and one key set)
    summary = train(
        load_config(preset="tiny", overrides=FAST_EVAL + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"]),
        options(out, coco, max_iter=8, checkpoint_period=2, resume=True),
        explicit_keys={"SOLVER.WARMUP_ITERS", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"},
    )
    resumed = load_config(out / "config.yaml")
    preset = load_config(preset="tiny")
    for key in FITTED_KEYS:  # the run goes on fitted as it started, not with the preset's values
        assert config_value(started, key) != config_value(preset, key), key  # the fit changed it on this data
        assert config_value(resumed, key) == config_value(started, key), key
    assert resumed.SOLVER.MAX_ITER == 8 and resumed.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3
    assert resumed.SOLVER.WARMUP_ITERS == 2  # kept as set, not rescaled with the longer run
    audit = summary["from_scratch"]
    assert audit["resumed_from_own_checkpoint"] is True
    assert audit["start_iter"] == 4
    assert audit["pretrained_tensors_loaded"] == 0
    assert [Path(f["file"]).name for f in audit["checkpoint_files_read"]] == ["model_final.pth"]
    iterations = [json.loads(line).get("iteration") for line in (out / "metrics.json").read_text().splitlines()]
    assert max(i for i in iterations if i is not None) >= 7
    assert summary["iterations"] == 8


def test_embedded_default_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKINIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "default"
    summary = train(
        load_config(preset="tiny", overrides=FAST_EVAL + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.9"]),
        TrainOptions(output_dir=str(out), max_iter=2, seed=0, progress=False),
    )
    assert summary["status"] == "finished"
    assert list((tmp_path / "cache").glob("synthetic-*/train/annotations.json"))
    cfg = load_config(out / "config.yaml")
    assert cfg.DATASETS.TRAIN == ("maskinit_train",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5


def test_divergence_stops_with_one_line_and_keeps_the_checkpoint(coco, tmp_path):
    out = tmp_path / "diverge"
    cfg = load_config(preset="tiny", norm="none", init="normal:std=1.0", overrides=["SOLVER.WARMUP_ITERS", "0"])
    with pytest.raises(MaskinitError, match=r"training diverged at iteration \d+: non-finite") as error:
        train(cfg, options(out, coco, max_iter=30, checkpoint_period=1, lr=5.0))
    message = str(error.value)
    assert "\n" not in message and "--lr" in message
    assert error.value.exit_code == 3  # the CLI's exit code for a diverged run (errors.EXIT_CODES)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "diverged"
    if summary["checkpoint"]:
        assert (out / summary["checkpoint"]).is_file()
    assert not (out / "model_final.pth").exists()


runner = CliRunner()


def test_cli_refuses_pretrained_weights(tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--output-dir",
            str(tmp_path / "x"),
            "MODEL.WEIGHTS",
            "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        ],
    )
    assert result.exit_code == 2
    assert "MODEL.WEIGHTS" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-iter", "0"], "--max-iter"),
        (["--lr", "-1"], "--lr"),
        (["--ims-per-batch", "0"], "--ims-per-batch"),
        (["--device", "cuda"], "CUDA"),
        (["--device", "tpu"], "--device"),
        (["--optimizer", "lion"], "optimizer"),
        (["--lr-schedule", "wavy"], "LR schedule"),
        (["--resume", "--overwrite"], "contradict"),
        (["--train-json", "/nonexistent.json", "--train-images", "/tmp"], "/nonexistent.json"),
    ],
)
def test_cli_bad_run_options(tmp_path, args, message):
    result = runner.invoke(app, ["train", "--preset", "tiny", "--output-dir", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.xdist_group("processes")
def test_torchrun_two_cpu_processes(coco, tmp_path):
    """torchrun starts the ranks itself; maskinit joins its process group instead of launching."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    out = tmp_path / "torchrun"
    command = [
        str(bin_dir / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(bin_dir / "maskinit"),
        "train",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--max-iter",
        "2",
        "--no-progress",
        "--train-json",
        coco.train_json,
        "--train-images",
        coco.train_images,
        "--val-json",
        coco.val_json,
        "--val-images",
        coco.val_images,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2


def test_resume_with_a_config_that_no_longer_matches_is_refused(finished_run, coco):
    out, _ = finished_run
    with pytest.raises(MaskinitError, match=r"--resume: MASKINIT.NORM is BN now but GN in the saved run"):
        train(load_config(preset="tiny", norm="BN", overrides=FAST_EVAL), options(out, coco, resume=True, max_iter=8))


def test_output_path_that_is_a_file_is_refused(tmp_path, coco):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    with pytest.raises(MaskinitError, match="is not a directory"):
        train(load_config(preset="tiny"), options(target, coco))
    assert target.read_text() == "keep me"


def test_eval_cli_refuses_missing_and_truncated_weights(finished_run, tmp_path):
    out, _ = finished_run
    truncated = tmp_path / "half.pth"
    truncated.write_bytes((out / "model_final.pth").read_bytes()[:1000])
    for weights, message in ((tmp_path / "none.pth", "not found"), (truncated, "cannot read weights")):
        result = runner.invoke(app, ["eval", "--config", str(out / "config.yaml"), "--weights", str(weights)])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize(
    "overrides,warning",
    [
        (["MASKINIT.OPTIMIZER", "sgd"], "weight decay 0.05 is an AdamW value"),
        (["MASKINIT.OPTIMIZER", "sgd"], "LR 0.001 is an AdamW value"),
        (["SOLVER.BASE_LR", "0.02"], "LR 0.02 is an SGD value"),
    ],
)
def test_switching_optimizer_alone_warns(caplog, overrides, warning):
    cfg = load_config(preset="tiny", overrides=overrides)
    with caplog.at_level("WARNING", logger="maskinit"):
        warn_optimizer_mismatch(cfg)
    assert warning in caplog.text


def test_default_recipe_raises_no_optimizer_warning(caplog):
    with caplog.at_level("WARNING", logger="maskinit"):
        warn_optimizer_mismatch(load_config(preset="tiny"))
        warn_optimizer_mismatch(load_config(recipe="d2-scratch-gn-3x"))
    assert caplog.text == ""


def test_periodic_evaluations_do_not_change_what_the_run_trains(coco, tmp_path):
    # each evaluation builds a test loader, which draws its seed from torch's random stream; the training
    # after it (RoI sampling, ...) must not see the difference
    import torch

    finals = []
    for period in (2, 0):
        out = tmp_path / f"eval-every-{period}"
        summary = train(
            load_config(preset="tiny"), train_options(out, coco, max_iter=5, checkpoint_period=100, eval_period=period)
        )
        assert summary["status"] == "finished"
        finals.append(torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"])
    assert (Path(tmp_path / "eval-every-2" / "metrics.json").read_text().count("segm/AP")) >= 2  # evaluated on the way
    assert finals[0].keys() == finals[1].keys()
    assert [name for name in finals[0] if not torch.equal(finals[0][name], finals[1][name])] == []
