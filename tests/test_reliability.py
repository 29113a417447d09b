"""Runs survive kills: atomic checkpoints, SIGINT/SIGTERM stop with a checkpoint, SIGKILL then
resume, a full disk while saving, and no finished run overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskinit import MaskinitError, load_config
from maskinit.train import DataOptions, TrainOptions, train

pytestmark = pytest.mark.slow

MASKINIT = str(Path(sys.executable).with_name("maskinit"))


def data_flags(coco):
    return [
        "--train-json", coco.train_json, "--train-images", coco.train_images, "--val-json", coco.val_json,
        "--val-images", coco.val_images,
    ]


def start_training(out, coco, *extra):
    command = [MASKINIT, "train", "--preset", "tiny", "--output-dir", str(out), "--no-progress", "--seed", "0",
               *data_flags(coco), *extra, "SOLVER.WARMUP_ITERS", "2"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def training_started(out):
    log = out / "log.txt"
    return log.is_file() and "Starting training from iteration" in log.read_text()


def test_full_disk_during_training_stops_cleanly(tmp_path, coco, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def fail_second(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError(
                "[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/0: "
                "file write failed: No space left on device"
            )
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_second)
    out = tmp_path / "full"
    options = TrainOptions(
        output_dir=str(out), data=DataOptions(**vars(coco)), max_iter=6, checkpoint_period=2, progress=False
    )
    with pytest.raises(MaskinitError, match="disk full") as error:
        train(load_config(preset="tiny", overrides=["SOLVER.WARMUP_ITERS", "1"]), options)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(torch, "save", real_save)
    kept = (out / "last_checkpoint").read_text().strip()
    assert kept == "model_0000001.pth"
    torch.load(out / kept, weights_only=False)


def ending(stderr: str) -> list[str]:
    """What a run said after training started: the plan it printed before (the data fit's keys and cost)
    is left out, so these are the lines its ending wrote (one, with no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    plan = [index for index, line in enumerate(lines) if line.startswith(("data fit ", "--fit full would"))]
    return lines[plan[-1] + 1:] if plan else lines


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, coco, signum):
    out = tmp_path / "sig"
    process = start_training(out, coco, "--max-iter", "400", "--checkpoint-period", "1000")
    assert wait_for(lambda: training_started(out)), process.communicate()
    time.sleep(2)
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=180)
    assert time.monotonic() - sent < 30
    assert process.returncode == 128 + signum, stderr  # 130 for SIGINT, 143 for SIGTERM (errors.EXIT_CODES)
    assert "Traceback" not in stderr
    lines = ending(stderr)
    assert len(lines) == 1 and "resume with: maskinit train" in lines[0], stderr
    assert signal.Signals(signum).name in lines[0]
    kept = (out / "last_checkpoint").read_text().strip()
    assert (out / kept).is_file()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert kept == summary["checkpoint"]
    assert f"--output-dir {out}" in lines[0] and "--resume" in lines[0] and coco.train_json in lines[0]


def test_sigkill_then_resume_finishes_the_run(tmp_path, coco):
    out = tmp_path / "kill"
    process = start_training(out, coco, "--max-iter", "400", "--checkpoint-period", "2")
    assert wait_for(lambda: (out / "model_0000003.pth").is_file()), process.communicate()
    process.kill()
    process.wait()
    kept = (out / "last_checkpoint").read_text().strip()
    torch.load(out / kept, weights_only=False)  # loadable whatever moment the kill hit
    # the kill may land between a checkpoint's file and its tag: the run continues from the one the tag names
    kept_iteration = int(kept.removeprefix("model_").removesuffix(".pth"))
    options = TrainOptions(
        output_dir=str(out),
        data=DataOptions(**vars(coco)),
        resume=True,
        max_iter=10,
        checkpoint_period=2,
        progress=False,
    )
    summary = train(load_config(out / "config.yaml"), options)
    assert summary["status"] == "finished"
    assert summary["from_scratch"]["start_iter"] == kept_iteration + 1 >= 2
    assert summary["iterations"] == 10
    assert (out / "model_final.pth").is_file()


def test_overwrite_replaces_a_run_only_when_asked(tmp_path, coco):
    out = tmp_path / "done"
    options = dict(data=DataOptions(**vars(coco)), max_iter=2, checkpoint_period=100, progress=False)
    train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), **options))
    final = (out / "model_final.pth").read_bytes()
    with pytest.raises(MaskinitError, match="already holds a run"):
        train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), **options))
    assert (out / "model_final.pth").read_bytes() == final
    (out / "notes.md").write_text("the user's own file")
    stale = out / "model_0009999.pth"  # a checkpoint of a longer replaced run: last_checkpoint would not name it
    stale.write_bytes(b"old")
    old_metrics = len((out / "metrics.json").read_text().splitlines())
    summary = train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), overwrite=True, **options))
    assert summary["status"] == "finished"
    assert not stale.exists()
    assert (out / "notes.md").read_text() == "the user's own file"
    # the new run's metrics and curve start afresh rather than following the replaced run's
    assert len((out / "metrics.json").read_text().splitlines()) == old_metrics
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    assert iterations == sorted(iterations)
    assert (out / "log.txt").read_text().count("Starting training") == 1


def test_bad_annotation_refused_before_training_unless_skip_bad(tmp_path, coco):
    broken = json.loads(Path(coco.train_json).read_text())
    broken["annotations"][0]["bbox"] = [5.0, 5.0, 0.0, 10.0]  # zero width
    bad_json = tmp_path / "broken.json"
    bad_json.write_text(json.dumps(broken))
    bad = DataOptions(str(bad_json), coco.train_images, coco.val_json, coco.val_images)
    out = tmp_path / "bad"
    with pytest.raises(MaskinitError, match="--skip-bad") as error:
        train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), data=bad, max_iter=2, progress=False))
    assert "\n" not in str(error.value)
    assert not (out / "config.yaml").exists()  # refused before anything was written
    summary = train(
        load_config(preset="tiny"),
        TrainOptions(output_dir=str(out), data=DataOptions(**vars(bad)), max_iter=2, progress=False, skip_bad=True),
    )
    assert summary["status"] == "finished"
    assert "dropped" in (out / "log.txt").read_text() or "skip" in (out / "log.txt").read_text().lower()


def test_interrupt_prints_no_traceback_anywhere(tmp_path, coco):
    out = tmp_path / "quiet"
    process = start_training(out, coco, "--max-iter", "400", "--checkpoint-period", "1000")
    assert wait_for(lambda: training_started(out)), process.communicate()
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 130
    assert "Traceback" not in stdout + stderr and "Exception during training" not in stdout + stderr
    assert "resume with" in stderr


def test_two_quick_interrupts_save_a_checkpoint_or_offer_no_resume(tmp_path, coco):
    out = tmp_path / "twice"
    process = start_training(out, coco, "--max-iter", "400", "--checkpoint-period", "1000")
    assert wait_for(lambda: training_started(out)), process.communicate()
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 130
    assert "Traceback" not in stdout + stderr
    lines = ending(stderr)
    assert len(lines) == 1 and "SIGINT" in lines[0], stderr
    if "resume with" in lines[0]:
        kept = (out / "last_checkpoint").read_text().strip()
        torch.load(out / kept, weights_only=False)
    else:
        assert "nothing to resume" in lines[0]
        assert not list(out.glob("model_*.pth"))
    assert not list(out.glob(".*.tmp"))


def test_interrupt_during_the_final_evaluation_stops_it(tmp_path, coco):
    from maskinit.data.synthetic import generate_coco_dataset

    val = generate_coco_dataset(tmp_path / "bigval", 60, seed=3, first_image_id=500)
    out = tmp_path / "evalstop"
    command = [MASKINIT, "train", "--preset", "tiny", "--output-dir", str(out), "--no-progress", "--seed", "0",
               "--train-json", coco.train_json, "--train-images", coco.train_images,
               "--val-json", str(val.json_file), "--val-images", str(val.image_root), "--max-iter", "2",
               "TEST.DETECTIONS_PER_IMAGE", "100", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.txt"
    assert wait_for(lambda: log.is_file() and "Start inference" in log.read_text()), process.communicate()
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert time.monotonic() - sent < 20
    assert process.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    assert "during the final evaluation" in stderr and "maskinit eval" in stderr
    assert (out / "model_final.pth").is_file()
    assert not (out / "eval.json").exists()
    assert json.loads((out / "run_summary.json").read_text())["status"] == "interrupted"


def test_sigterm_before_training_exits_cleanly_and_leaves_the_dir_usable(tmp_path, coco):
    out = tmp_path / "early"
    process = start_training(out, coco, "--max-iter", "2")
    # The output dir is made after the config and the data checks, seconds before the first iteration (the
    # model and the loader are built after it); a fixed sleep raced the CLI's start on a loaded machine.
    assert wait_for(lambda: out.is_dir(), timeout=300), process.communicate()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stdout + stderr
    assert "SIGTERM" in stderr and len(ending(stderr)) == 1, stderr
    process = start_training(out, coco, "--max-iter", "2")  # the same command again is not refused
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert (out / "model_final.pth").is_file()


def test_a_run_stopped_before_its_first_checkpoint_does_not_block_the_dir(tmp_path, coco):
    out = tmp_path / "stale"
    out.mkdir()
    (out / "config.yaml").write_text("stale: true\n")  # what a refused or killed run leaves
    (out / "log.txt").write_text("")
    (out / ".model_0000003.pth.tmp").write_bytes(b"torn")  # a kill in the middle of a save
    summary = train(
        load_config(preset="tiny"),
        TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), max_iter=2, progress=False),
    )
    assert summary["status"] == "finished"
    assert not list(out.glob(".*.tmp"))


def test_two_trainings_into_one_dir_are_refused_by_a_lock(tmp_path, coco):
    from maskinit.run_dir import output_dir_lock

    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; h = open(sys.argv[1], 'a+'); fcntl.flock(h, fcntl.LOCK_EX); h.write('pid 4242'); "
        "h.flush(); print('locked', flush=True); time.sleep(60)"), str(out / ".maskinit.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MaskinitError, match=r"in use by another maskinit train \(pid 4242\)"):
            train(
                load_config(preset="tiny"),
                TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), max_iter=2, progress=False),
            )
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    with output_dir_lock(out):  # released by the kernel when its holder died
        assert (out / ".maskinit.lock").read_text() == f"pid {os.getpid()}"


def test_resume_below_the_checkpoint_iteration_is_refused_before_anything_changes(tmp_path, coco):
    out = tmp_path / "short"
    options = dict(data=DataOptions(**vars(coco)), checkpoint_period=2, progress=False)
    train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), max_iter=4, **options))
    config_before = (out / "config.yaml").read_text()
    for max_iter in (2, 4):
        with pytest.raises(MaskinitError, match=r"model_final.pth .* is at iteration 3.*nothing is left to train"):
            train(
                load_config(out / "config.yaml"),
                TrainOptions(output_dir=str(out), max_iter=max_iter, resume=True, **options),
            )
    assert (out / "config.yaml").read_text() == config_before
    (out / "last_checkpoint").write_text("model_0000099.pth")  # names a file that is gone
    with pytest.raises(MaskinitError, match="no checkpoint to resume from"):
        train(load_config(out / "config.yaml"), TrainOptions(output_dir=str(out), max_iter=6, resume=True, **options))


def test_divergence_keeps_only_a_finite_checkpoint_that_resumes(tmp_path, coco):
    out = tmp_path / "nan"
    cfg = load_config(preset="tiny", norm="none", init="normal:std=1.0", overrides=["SOLVER.WARMUP_ITERS", "0"])
    options = dict(data=DataOptions(**vars(coco)), checkpoint_period=1, progress=False, seed=0)
    with pytest.raises(MaskinitError, match=r"training diverged at iteration \d+") as error:
        train(cfg, TrainOptions(output_dir=str(out), max_iter=30, lr=5.0, **options))
    assert error.value.exit_code == 3  # a diverged run (errors.EXIT_CODES)
    summary = json.loads((out / "run_summary.json").read_text())
    for checkpoint in out.glob("model_*.pth"):
        state = torch.load(checkpoint, weights_only=False)["model"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), checkpoint.name
    if summary["checkpoint"]:
        assert f"last finite checkpoint kept: {summary['checkpoint']}" in str(error.value)


def test_num_classes_override_disagreeing_with_the_data_is_refused(tmp_path, coco):
    out = tmp_path / "classes"
    with pytest.raises(MaskinitError, match=r"NUM_CLASSES 7 was given, but the training data has 5 categories"):
        train(load_config(preset="tiny", overrides=["MODEL.ROI_HEADS.NUM_CLASSES", "7"]),
              TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), max_iter=2, progress=False),
              explicit_keys={"MODEL.ROI_HEADS.NUM_CLASSES"})
    assert not (out / "config.yaml").exists()
