"""Runs survive kills: atomic checkpoints, SIGINT/SIGTERM stop with a checkpoint, SIGKILL then
resume, a full disk while saving, and no finished run overwritten."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskinit import MaskinitError, load_config
from maskinit.train import AuditedCheckpointer, DataOptions, TrainOptions, train

MASKINIT = str(Path(sys.executable).with_name("maskinit"))


def data_flags(coco):
    return ["--train-json", coco.train_json, "--train-images", coco.train_images, "--val-json", coco.val_json, "--val-images", coco.val_images]


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


def test_checkpoint_writes_are_atomic_and_a_full_disk_keeps_the_previous(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpointer = AuditedCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    good = {k: v.clone() for k, v in model.state_dict().items()}
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")  # half a file reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(MaskinitError, match=r"disk full.*model_0000001.pth.*intact"):
        checkpointer.save("model_0000002")
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000002.pth").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["model"]
    assert all(torch.equal(loaded[k], good[k]) for k in good)


def test_full_disk_during_training_stops_cleanly(tmp_path, coco, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def fail_second(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/0: file write failed: No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_second)
    out = tmp_path / "full"
    options = TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), max_iter=6, checkpoint_period=2, progress=False)
    with pytest.raises(MaskinitError, match="disk full") as error:
        train(load_config(preset="tiny", overrides=["SOLVER.WARMUP_ITERS", "1"]), options)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(torch, "save", real_save)
    kept = (out / "last_checkpoint").read_text().strip()
    assert kept == "model_0000001.pth"
    torch.load(out / kept, weights_only=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, coco, signum):
    out = tmp_path / "sig"
    process = start_training(out, coco, "--max-iter", "400", "--checkpoint-period", "1000")
    assert wait_for(lambda: training_started(out)), process.communicate()
    time.sleep(2)
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 30
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
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
    options = TrainOptions(output_dir=str(out), data=DataOptions(**vars(coco)), resume=True, max_iter=10, checkpoint_period=2, progress=False)
    summary = train(load_config(out / "config.yaml"), options)
    assert summary["status"] == "finished"
    assert summary["from_scratch"]["start_iter"] >= 4
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
    summary = train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), overwrite=True, **options))
    assert summary["status"] == "finished"


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
    summary = train(load_config(preset="tiny"), TrainOptions(output_dir=str(out), data=DataOptions(**vars(bad)), max_iter=2, progress=False, skip_bad=True))
    assert summary["status"] == "finished"
    assert "dropped" in (out / "log.txt").read_text() or "skip" in (out / "log.txt").read_text().lower()
