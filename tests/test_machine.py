"""What this machine can run: the default preset for the device, and the memory check before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maskinit import MaskinitError, load_config, machine
from maskinit.machine import check_memory, default_preset, estimate_memory
from maskinit.train import DataOptions, TrainOptions, train

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "memory.json"
GiB = 2**30


def sized(preset, side, batch):
    # as benchmarks/memory.py measured it: Copy-Paste off (its bitmasks are counted on top, not calibrated)
    return load_config(
        preset=preset,
        overrides=[
            "INPUT.MIN_SIZE_TRAIN",
            f"({side},)",
            "INPUT.MAX_SIZE_TRAIN",
            str(side),
            "SOLVER.IMS_PER_BATCH",
            str(batch),
            "MODEL.DEVICE",
            "cpu",
            "MASKINIT.AUGMENT.COPY_PASTE.PROB",
            "0.0",
        ],
    )


def test_the_estimate_matches_every_measured_peak_within_5_percent():
    points = json.loads(RESULTS.read_text())["points"]
    assert {p["preset"] for p in points} == {"tiny", "r50-fpn"} and len(points) >= 6
    for point in points:
        estimate = estimate_memory(sized(point["preset"], point["side"], point["batch"]))
        assert estimate.peak_bytes == pytest.approx(point["peak_bytes"], rel=0.05), point


def test_the_step_estimate_prices_the_mask_heads_pool_and_width_as_measured():
    """Relative to the measured step of the preset's head (7x7 pool, 64 channels) at the same input and RoIs,
    every measured step of benchmarks/step_cost.py's width grid is estimated within 12 %: a 14x14 pool at
    half the width costs a little more than the preset's head, at full width far more."""
    points = json.loads((RESULTS.parent / "step-cost-mask-width.json").read_text())["grid"]

    def estimate(p):
        return machine.step_seconds(p["padded_pixels"], p["rois"], p["mask_rois"], p["mask_pool"], p["mask_dim"] / 64)

    compared = 0
    for point in points:
        reference = next(
            (r for r in points if (r["mask_pool"], r["mask_dim"]) == (7, 64) and r["instances"] == point["instances"]
             and (r["padded_pixels"], r["rois"]) == (point["padded_pixels"], point["rois"])), None)
        if reference is None or reference is point:
            continue
        compared += 1
        measured = point["seconds"] / reference["seconds"]
        assert estimate(point) / estimate(reference) == pytest.approx(measured, rel=0.12), point
    assert compared >= 3
    assert machine.step_seconds(25600, 96, 24, 14, 1.0) > machine.step_seconds(25600, 96, 24, 14, 0.5)
    assert machine.step_seconds(25600, 96, 24, 14, 0.5) > machine.step_seconds(25600, 96, 24, 7, 1.0)


def test_estimate_grows_with_batch_and_input_and_is_shared_between_processes(monkeypatch):
    monkeypatch.setattr(machine, "available_memory", lambda device: 16.0 * GiB)
    small, large = estimate_memory(sized("tiny", 128, 4)), estimate_memory(sized("tiny", 512, 4))
    assert large.peak_bytes > small.peak_bytes and large.input_shape == (512, 512)
    assert estimate_memory(sized("tiny", 128, 8)).peak_bytes > small.peak_bytes
    two = estimate_memory(sized("tiny", 128, 8), processes_here=2)
    assert two.images_per_process == 4 and two.available_bytes == 8.0 * GiB


def test_ema_and_copy_paste_are_counted(monkeypatch):
    """The weight EMA adds a fp32 copy of the parameters to the baseline; Copy-Paste adds its bitmasks
    (a byte per pixel, up to twice MAX_INSTANCES instances) to each image."""
    monkeypatch.setattr(machine, "available_memory", lambda device: 16.0 * GiB)
    plain = estimate_memory(sized("r50-fpn", 512, 4))
    ema = estimate_memory(
        load_config(
            preset="r50-fpn",
            overrides=[
                "INPUT.MIN_SIZE_TRAIN",
                "(512,)",
                "INPUT.MAX_SIZE_TRAIN",
                "512",
                "SOLVER.IMS_PER_BATCH",
                "4",
                "MODEL.DEVICE",
                "cpu",
                "MASKINIT.EMA.ENABLED",
                "True",
            ],
        )
    )
    assert ema.peak_bytes - plain.peak_bytes == pytest.approx(4 * 45.4e6)  # r50-fpn: 45.4 M parameters
    assert ema.per_image_bytes == plain.per_image_bytes
    pasted = estimate_memory(
        load_config(
            preset="r50-fpn",
            overrides=[
                "INPUT.MIN_SIZE_TRAIN",
                "(512,)",
                "INPUT.MAX_SIZE_TRAIN",
                "512",
                "SOLVER.IMS_PER_BATCH",
                "4",
                "MODEL.DEVICE",
                "cpu",
                "MASKINIT.AUGMENT.COPY_PASTE.PROB",
                "0.5",
                "MASKINIT.AUGMENT.COPY_PASTE.MAX_INSTANCES",
                "30",
            ],
        )
    )
    assert pasted.per_image_bytes - plain.per_image_bytes == pytest.approx(2 * 30 * 512 * 512)
    assert pasted.peak_bytes - plain.peak_bytes == pytest.approx(4 * 2 * 30 * 512 * 512)


def test_the_full_scale_preset_on_this_cpu_is_refused_with_what_to_change(monkeypatch):
    monkeypatch.setattr(machine, "available_memory", lambda device: 22.0 * GiB)
    cfg = load_config(preset="r50-fpn", overrides=["MODEL.DEVICE", "cpu"])
    with pytest.raises(MaskinitError) as error:
        check_memory(cfg)
    message = str(error.value)
    assert "would not fit in memory" in message and "22.0 GiB available" in message
    assert "16 images of up to 800x1344 pixels" in message
    assert "--ims-per-batch 12" in message and "--preset tiny" in message and "MASKINIT.MEMORY_CHECK" in message
    fitting = load_config(preset="r50-fpn", overrides=["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "12"])
    assert check_memory(fitting).fits


@pytest.mark.slow
def test_training_is_refused_before_anything_is_written_unless_the_check_is_off(tmp_path, coco, monkeypatch):
    monkeypatch.setattr(machine, "available_memory", lambda device: 0.5 * GiB)
    out = tmp_path / "oom"
    options = dict(data=DataOptions(**vars(coco)), max_iter=1, progress=False)
    with pytest.raises(MaskinitError, match="would not fit in memory"):
        train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), **options))
    assert not out.exists()
    summary = train(
        load_config(preset="tiny", overrides=["MASKINIT.MEMORY_CHECK", "False"]),
        TrainOptions(output_dir=str(out), **options),
    )
    assert summary["status"] == "finished"


def test_default_preset_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    preset, why = default_preset(None)
    assert preset == "tiny" and "no CUDA GPU here" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_preset(None)[0] == "r50-fpn"
    preset, why = default_preset("cpu")
    assert preset == "tiny" and "--device cpu" in why


@pytest.mark.slow
def test_bare_train_picks_the_cpu_scale_here_and_says_why(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("MASKINIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bare"
    maskinit = str(Path(sys.executable).with_name("maskinit"))
    process = subprocess.run(
        [
            maskinit,
            "train",
            "--from-scratch",
            "--output-dir",
            str(out),
            "--max-iter",
            "1",
            "--no-progress",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.9",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert "preset tiny" in process.stderr and "no CUDA GPU here" in process.stderr
    cfg = load_config(out / "config.yaml")
    assert cfg.MASKINIT.PRESET == "tiny" and cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.DEVICE == "cpu"
    assert "memory: estimated peak" in (out / "log.txt").read_text()  # the estimate, logged by the run


@pytest.mark.slow
def test_train_fits_the_config_to_the_users_data_and_records_it(tmp_path, coco):
    from maskinit.data.analysis import analyze_coco

    out = tmp_path / "fitted"
    stated_std = ["MODEL.PIXEL_STD", "[50.0, 50.0, 50.0]"]
    summary = train(
        load_config(preset="tiny", overrides=stated_std),
        TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), max_iter=1, progress=False),
        explicit_keys={"MODEL.PIXEL_STD"},
    )
    fitted = {row["key"]: row for row in summary["fitted_to_data"]}
    measured = analyze_coco(coco.train_json, coco.train_images)
    assert "MODEL.PIXEL_MEAN" in fitted and "MODEL.PIXEL_STD" not in fitted  # the override wins
    cfg = load_config(out / "config.yaml")
    assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(list(measured.pixel_mean), rel=1e-4)
    assert list(cfg.MODEL.PIXEL_STD) == [50.0, 50.0, 50.0]
    assert "fitted to the data: MODEL.PIXEL_MEAN" in (out / "log.txt").read_text()
    assert all(row["from"] for row in summary["fitted_to_data"])


@pytest.mark.slow
def test_no_fit_when_turned_off_or_resuming(tmp_path, coco):
    out = tmp_path / "plain"
    options = dict(data=DataOptions(**vars(coco)), progress=False, checkpoint_period=1)
    summary = train(
        load_config(preset="tiny", overrides=["MASKINIT.FIT_TO_DATA", "False"]),
        TrainOptions(output_dir=str(out), max_iter=1, **options),
    )
    assert summary["fitted_to_data"] == []
    assert list(load_config(out / "config.yaml").MODEL.PIXEL_MEAN) == list(load_config(preset="tiny").MODEL.PIXEL_MEAN)
    fitted = tmp_path / "fitted"
    train(load_config(preset="tiny"), TrainOptions(output_dir=str(fitted), max_iter=1, **options))
    resumed = train(
        load_config(fitted / "config.yaml"), TrainOptions(output_dir=str(fitted), max_iter=2, resume=True, **options)
    )
    assert resumed["fitted_to_data"] == []
