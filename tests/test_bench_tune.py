"""benchmarks/tune.py (the tuning benchmark) at smoke size on a generated set: the study and the default
arms split between two calls (`--arms`), as two processes run them side by side, and the report that
counts every finished arm, with trial 0 the preset's own values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def set_folder(tmp_path: Path) -> Path:
    """A generated COCO set laid out as the benchmark takes it: {train.json, train/, val.json, val/}."""
    from maskinit.data.synthetic import generate_coco_dataset

    folder = tmp_path / "smallset"
    folder.mkdir()
    for split, count, seed, first in (("train", 8, 1, 1), ("val", 3, 2, 100)):
        generated = generate_coco_dataset(tmp_path / "generated" / split, count, seed=seed, first_image_id=first)
        (folder / f"{split}.json").symlink_to(generated.json_file)
        (folder / split).symlink_to(generated.image_root)
    return folder


def bench(folder: Path, tmp_path: Path, *arms: str) -> subprocess.Popen:
    command = [
        sys.executable, str(ROOT / "benchmarks" / "tune.py"), str(folder), "--smoke", "--runs", str(tmp_path / "runs"),
        "--results", str(tmp_path / "results"), "--arms", *arms,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.xdist_group("processes")
def test_two_processes_split_the_arms_and_the_last_report_counts_them_all(tmp_path):
    folder = set_folder(tmp_path)
    report_file = tmp_path / "results" / "tune-smallset-smoke.json"
    # side by side, as on the 2-core machine: the study in one process, the default arms in the other
    processes = [
        bench(folder, tmp_path, "tuned", "tuned_same_budget"),
        bench(folder, tmp_path, "default_same_length", "default_same_budget"),
    ]
    outputs = [process.communicate(timeout=900)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    report = json.loads(report_file.read_text())  # written by whichever ended last: it saw everything finished
    used = report["tuning"][
        "iterations_used"
    ]  # trials of 4 (fewer when pruned) while one more and the final 4 fit in 16
    assert report["tuning"]["trials"] >= 3 and used + 4 <= 16 < used + 4 + 4
    assert "own values" in report["tuning"]["trials_table"][0]["note"]
    # the trials were scored on training images held back from them, never on the validation set
    assert report["trials_scored_on"] == "0.2 of the training images, held back"
    held = json.loads(
        (tmp_path / "runs" / "smallset-smoke" / "study-val0.2" / "split" / "0.2-seed0" / "held-back.json").read_text()
    )
    assert len(held["images"]) == 2 and all(image["id"] < 100 for image in held["images"])
    for arm, iterations in (("tuned", 4), ("default_same_length", 4), ("default_same_budget", 16)):
        run = report["arms"][arm]["per_seed"]["0"]
        assert run["status"] == "finished" and run["iterations"] == iterations, (arm, run)
    # the best config trained for what the trials left of the budget
    assert report["tuned_same_budget_iterations"] == 16 - used
    run = report["arms"]["tuned_same_budget"]["per_seed"]["0"]
    assert run["status"] == "finished" and run["iterations"] == 16 - used, run

    # a third call trains nothing: every run is finished and reused
    summary = tmp_path / "runs" / "smallset-smoke" / "default_same_budget-seed0" / "run_summary.json"
    finished_at = summary.stat().st_mtime_ns
    again = bench(folder, tmp_path, "tuned", "tuned_same_budget", "default_same_length", "default_same_budget")
    output = again.communicate(timeout=900)[0]
    assert again.returncode == 0, output[-3000:]
    assert summary.stat().st_mtime_ns == finished_at and "exit 0" not in output  # no command ran
    assert json.loads(report_file.read_text())["arms"] == report["arms"]


def test_an_interrupted_arm_continues_from_its_checkpoint_and_any_other_unfinished_one_starts_afresh(
    tmp_path, monkeypatch
):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tune as bench

    commands = []
    monkeypatch.setattr(bench, "run", lambda command, log: commands.append(command) or 0)
    out = tmp_path / "arm"
    out.mkdir()
    (out / "run_summary.json").write_text(json.dumps({"status": "interrupted", "iterations": 225}))
    (out / "last_checkpoint").write_text("model_0000225.pth")
    bench.train_run(out, ["--preset", "tiny"], tmp_path / "log")
    assert commands[-1][-1] == "--resume" and "--overwrite" not in commands[-1]
    (out / "last_checkpoint").unlink()  # interrupted before its first checkpoint: nothing to continue
    bench.train_run(out, ["--preset", "tiny"], tmp_path / "log")
    assert commands[-1][-1] == "--overwrite"
    (out / "run_summary.json").write_text(json.dumps({"status": "finished", "eval": {"segm": {"AP": 9.5}}}))
    assert bench.train_run(out, ["--preset", "tiny"], tmp_path / "log")["mask_ap"] == 9.5 and len(commands) == 2
    (out / "run_summary.json").write_text(
        json.dumps(
            {"status": "finished", "seconds": 300.0, "eval": {"segm": {"AP": 9.5}}, "from_scratch": {"start_iter": 226}}
        )
    )
    row = bench.train_run(out, ["--preset", "tiny"], tmp_path / "log")  # resumed: its seconds are the last sitting's
    assert (row["seconds"], row["seconds_last_sitting"], row["resumed_at"]) == (None, 300.0, 226) and len(commands) == 2
