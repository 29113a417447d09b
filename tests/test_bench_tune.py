"""benchmarks/tune.py (issue 16's benchmark) at smoke size on a generated set: the study and the default
arms split between two calls (`--arms`), as two processes run them side by side, and the report that
counts every finished arm, with trial 0 the preset's own values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def bench(folder: Path, tmp_path: Path, *arms: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "tune.py"), str(folder), "--smoke", "--runs", str(tmp_path / "runs"),
               "--results", str(tmp_path / "results"), "--arms", *arms]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_tuning_benchmark_splits_its_arms_and_reports_them_all(tmp_path):
    folder = set_folder(tmp_path)
    report_file = tmp_path / "results" / "tune-smallset-smoke.json"
    defaults = bench(folder, tmp_path, "default_same_length", "default_same_budget")
    assert defaults.returncode == 0, defaults.stdout[-3000:] + defaults.stderr[-3000:]
    early = json.loads(report_file.read_text())
    assert early["arms"]["tuned"]["per_seed"]["0"]["status"] is None  # not run by this process: left out
    assert early["arms"]["default_same_budget"]["per_seed"]["0"]["iterations"] == 16
    assert not (tmp_path / "runs" / "smallset-smoke" / "study").exists()

    summary = tmp_path / "runs" / "smallset-smoke" / "default_same_length-seed0" / "run_summary.json"
    finished_at = summary.stat().st_mtime_ns
    tuned = bench(folder, tmp_path, "tuned")
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    report = json.loads(report_file.read_text())
    used = report["tuning"]["iterations_used"]  # trials of 4 (fewer when pruned) while one more and the final 4 fit in 16
    assert report["tuning"]["trials"] >= 3 and used + 4 <= 16 < used + 4 + 4
    assert "own values" in report["tuning"]["trials_table"][0]["note"]
    for arm, iterations in (("tuned", 4), ("default_same_length", 4), ("default_same_budget", 16)):
        run = report["arms"][arm]["per_seed"]["0"]
        assert run["status"] == "finished" and run["iterations"] == iterations, (arm, run)
    assert summary.stat().st_mtime_ns == finished_at  # the other process's run is counted, not trained again
