"""maskinit.run_dir: what marks a folder as holding a run, the refusals before one is overwritten or resumed,
what --overwrite removes, the lock that keeps a second training out, and the config a resumed run continues
with. Unit tests on files written here; whole trainings into a run folder are in test_train.py and
test_reliability.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from maskinit import MaskinitError, load_config
from maskinit.run_dir import (
    LOCK_FILE,
    check_output_dir,
    check_resume_config,
    holds_run,
    leads_run,
    output_dir_lock,
    prepare_output_dir,
    read_summary,
    remove_replaced_run,
    remove_stale_files,
    resumed_config,
    write_json,
)
from maskinit.run_options import TrainOptions


def options(out, **kwargs) -> TrainOptions:
    return TrainOptions(output_dir=str(out), **kwargs)


def test_a_folder_holds_a_run_once_it_has_a_checkpoint_or_an_evaluation(tmp_path):
    assert not holds_run(tmp_path / "missing")
    assert not holds_run(tmp_path)
    (tmp_path / "config.yaml").write_text("")
    (tmp_path / "log.txt").write_text("")
    assert not holds_run(tmp_path)  # a refused or stopped run before its first checkpoint
    for marker in ("last_checkpoint", "model_0000009.pth", "eval.json"):
        folder = tmp_path / marker.replace(".", "_")
        folder.mkdir()
        (folder / marker).write_text("")
        assert holds_run(folder), marker


def test_the_leading_process_is_rank_0_of_machine_0(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert leads_run(options(tmp_path))
    assert not leads_run(options(tmp_path, machine_rank=1))
    monkeypatch.setenv("RANK", "3")  # a process that torchrun started
    assert not leads_run(options(tmp_path))


def test_the_output_dir_is_created_and_a_file_in_its_place_is_refused(tmp_path):
    out = prepare_output_dir(options(tmp_path / "a" / "b"))
    assert out.is_dir() and not list(out.iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(MaskinitError, match="exists and is not a directory"):
        prepare_output_dir(options(tmp_path / "file"))


def test_an_output_dir_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MaskinitError, match="is not writable"):
        prepare_output_dir(options(tmp_path / "file" / "run"))


def test_a_run_is_refused_unless_resumed_or_overwritten(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("RANK", raising=False)
    (tmp_path / "eval.json").write_text("{}")
    with pytest.raises(MaskinitError, match="already holds a run: pass --resume .* or --overwrite"):
        check_output_dir(tmp_path, options(tmp_path), max_iter=10)
    check_output_dir(tmp_path, options(tmp_path, overwrite=True), max_iter=10)
    check_output_dir(tmp_path, options(tmp_path, machine_rank=1), max_iter=10)  # not the leading process
    with pytest.raises(MaskinitError, match="no checkpoint to resume from"):
        check_output_dir(tmp_path, options(tmp_path, resume=True), max_iter=10)
    torch.save({"iteration": 4}, tmp_path / "model_0000004.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    check_output_dir(tmp_path, options(tmp_path, resume=True), max_iter=10)
    with pytest.raises(MaskinitError, match="at iteration 4, and SOLVER.MAX_ITER is 5: nothing is left to train"):
        check_output_dir(tmp_path, options(tmp_path, resume=True), max_iter=5)


def test_overwrite_removes_the_runs_files_and_keeps_the_users(tmp_path):
    for name in ("model_0000004.pth", "model_final.pth", "last_checkpoint", "eval.json", "run_summary.json",
                 "metrics.json", "curves.png", "events.out.tfevents.1.host", "notes.md", "config.yaml"):
        (tmp_path / name).write_text("old")
    (tmp_path / "log.txt").write_text("old log")
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "coco_instances_results.json").write_text("[]")
    removed = remove_replaced_run(tmp_path)
    assert set(removed) == {"model_0000004.pth", "model_final.pth", "last_checkpoint", "eval.json",
                            "run_summary.json", "metrics.json", "curves.png", "events.out.tfevents.1.host",
                            "log.txt", "inference"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "log.txt", "notes.md"]
    assert (tmp_path / "log.txt").read_text() == ""  # emptied in place, not removed


def test_a_killed_runs_temporary_files_are_removed(tmp_path):
    (tmp_path / ".model_0000003.pth.tmp").write_bytes(b"torn")
    (tmp_path / ".maskinit-write-test-99").write_text("")
    (tmp_path / "model_0000002.pth").write_bytes(b"kept")
    remove_stale_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model_0000002.pth"]


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with output_dir_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"pid {os.getpid()}"
        with pytest.raises(MaskinitError, match=rf"in use by another maskinit train \(pid {os.getpid()}\)"):
            with output_dir_lock(tmp_path):
                pass
    with output_dir_lock(tmp_path):  # released on leaving
        pass


@pytest.mark.slow
def test_the_lock_of_a_killed_process_is_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path; from maskinit.run_dir import output_dir_lock\n"
            "with output_dir_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)"),
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MaskinitError, match=rf"\(pid {holder.pid}\)"):
            with output_dir_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_dir_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"pid {os.getpid()}"


def test_the_summary_is_written_whole_and_read_back(tmp_path):
    assert read_summary(tmp_path) == {}
    write_json(tmp_path / "run_summary.json", {"status": "finished", "loss": float("nan"), "path": tmp_path})
    summary = read_summary(tmp_path)
    assert summary["status"] == "finished" and summary["loss"] is None and summary["path"] == str(tmp_path)


def test_a_resume_that_would_build_another_model_is_refused(tmp_path):
    saved = tmp_path / "config.yaml"
    cfg = load_config(preset="tiny", overrides=["MODEL.ROI_HEADS.NUM_CLASSES", "1"])
    saved.write_text(cfg.dump())
    check_resume_config(saved, cfg)
    other = load_config(preset="tiny", overrides=["MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    with pytest.raises(MaskinitError, match=r"--resume: MODEL.ROI_HEADS.NUM_CLASSES is 2 now but 1 in the saved run"):
        check_resume_config(saved, other)
    deeper = load_config(preset="tiny", overrides=["MODEL.FPN.OUT_CHANNELS", "32"])
    with pytest.raises(MaskinitError, match="MODEL.FPN.OUT_CHANNELS"):
        check_resume_config(saved, deeper, keys=("MODEL.FPN.OUT_CHANNELS",))


def test_a_resumed_run_keeps_its_saved_config_under_the_keys_set_explicitly(tmp_path):
    saved = tmp_path / "config.yaml"
    fitted = load_config(preset="tiny", overrides=["INPUT.MIN_SIZE_TEST", "160", "SOLVER.BASE_LR", "0.001"])
    saved.write_text(fitted.dump())
    given = load_config(preset="tiny", overrides=["SOLVER.BASE_LR", "0.0005"])
    cfg = resumed_config(saved, given, options(tmp_path, resume=True, max_iter=20), {"SOLVER.BASE_LR"})
    assert cfg.INPUT.MIN_SIZE_TEST == 160  # the saved (fitted) value, not the preset's
    assert cfg.SOLVER.BASE_LR == 0.0005  # set explicitly by the resuming command
    assert cfg.SOLVER.MAX_ITER == 20  # a run option on top
