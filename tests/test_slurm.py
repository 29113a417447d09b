"""`maskinit train --launcher slurm`: the job submitit gets, the arguments each task runs, the requeued
start that resumes, the refusal where SLURM is absent, and a job on submitit's local executor (real
processes, no SLURM) preempted mid-run: requeued, resumed from its checkpoint, finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskinit import MaskinitError
from maskinit.slurm import SlurmOptions, TrainingJob, executor, submit, train_arguments


def test_the_launch_options_are_taken_off_what_each_task_runs():
    argv = ["--preset", "tiny", "--launcher", "slurm", "--nodes=2", "--gpus-per-node", "8", "--partition", "gpu",
            "--time-limit", "24h", "--output-dir", "runs/a", "SOLVER.MAX_ITER", "10"]
    assert train_arguments(argv) == ["--preset", "tiny", "--output-dir", "runs/a", "SOLVER.MAX_ITER", "10"]


def test_a_requeued_job_resumes_the_run_it_checkpointed(tmp_path):
    out = tmp_path / "run"
    job = TrainingJob(["--output-dir", str(out), "--overwrite"])
    assert job.command()[-3:] == ["--output-dir", str(out), "--overwrite"]  # a first start
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000009.pth")
    command = job.command()
    assert command[:4] == [sys.executable, "-m", "maskinit", "train"]
    assert "--resume" in command and "--overwrite" not in command  # --overwrite would remove the checkpoint


def test_without_sbatch_the_slurm_launcher_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MaskinitError, match="sbatch, which is not on PATH"):
        executor(SlurmOptions(folder=str(tmp_path / "jobs")))
    assert not (tmp_path / "jobs").exists()
    with pytest.raises(MaskinitError, match="--nodes and --gpus-per-node must be at least 1"):
        executor(SlurmOptions(nodes=0, cluster="local", folder=str(tmp_path / "jobs")))


@pytest.mark.slow
def test_the_cli_refuses_the_slurm_launcher_without_sbatch_and_writes_nothing(tmp_path, coco):
    out = tmp_path / "run"
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    done = subprocess.run([sys.executable, "-m", "maskinit", "train", "--preset", "tiny", "--device", "cpu",
                           "--output-dir", str(out), "--launcher", "slurm", "--nodes", "2", "--time-limit", "2h",
                           "--train-json", coco.train_json, "--train-images", coco.train_images,
                           "--val-json", coco.val_json, "--val-images", coco.val_images],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: --launcher slurm submits with SLURM's sbatch")
    assert "Traceback" not in done.stderr
    assert not out.exists()


def task_pids(controller: int) -> list[int]:
    children = Path(f"/proc/{controller}/task/{controller}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_finishes_from_its_checkpoint(tmp_path, coco):
    out = tmp_path / "run"
    arguments = ["--preset", "tiny", "--device", "cpu", "--output-dir", str(out), "--no-progress", "--seed", "0",
                 "--max-iter", "40", "--checkpoint-period", "1000", "--eval-period", "0",
                 "--train-json", coco.train_json, "--train-images", coco.train_images,
                 "--val-json", coco.val_json, "--val-images", coco.val_images, "--fit", "off",
                 "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
                 "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96"]
    job = submit(arguments, SlurmOptions(cluster="local", time_limit_min=30, folder=str(tmp_path / "jobs")))
    log = out / "log.txt"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "iter: " in log.read_text()):  # training has started
        time.sleep(0.5)
    assert "iter: " in log.read_text(), job.stderr()
    (task,) = task_pids(job._process.pid)  # submitit's local controller runs the one task
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before a preemption or the time limit
    deadline = time.time() + 600
    while time.time() < deadline and job.state not in ("FINISHED", "INTERRUPTED"):
        time.sleep(0.5)
    assert job.result() == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["iterations"] == 40
    assert "interrupted by SIGTERM at iteration" in job.stderr() and "saved; resume with" in job.stderr()
    assert "resumed own checkpoint at iteration" in log.read_text()  # the requeued start continued the run


def test_without_submitit_the_slurm_launcher_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # an environment without submitit: its import fails
    with pytest.raises(MaskinitError, match=r"--launcher slurm needs submitit: pip install submitit"):
        executor(SlurmOptions(folder=str(tmp_path / "jobs")))
    assert not (tmp_path / "jobs").exists()


def test_an_unknown_launcher_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from maskinit.cli import app

    out = tmp_path / "run"
    outcome = CliRunner().invoke(app, ["train", "--preset", "tiny", "--device", "cpu", "--output-dir", str(out),
                                       "--launcher", "pbs"])
    assert outcome.exit_code == 2 and "--launcher pbs: expected slurm or none" in outcome.output
    assert not out.exists()
