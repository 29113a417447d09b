"""A training run submitted to SLURM through submitit: `maskinit train ... --launcher slurm`.

`submit` hands submitit one `TrainingJob` (a `submitit.helpers.Checkpointable`) for `--nodes` x
`--gpus-per-node` tasks. Each task exports torch's distributed variables from SLURM's
(`TorchDistributedEnvironment`: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...) and runs the same
`maskinit train` arguments in a child process, which joins the run as it does under torchrun.

Preemption and the time limit: SLURM (or submitit's local executor) sends the job USR2 before it
stops it. submitit calls `TrainingJob.checkpoint` on the first task, which passes the signal on as
SIGTERM to its training process and waits: the run stops at the end of an iteration on every rank and
saves a checkpoint (exit 143). submitit then requeues the job, and the requeued tasks find the run's
`last_checkpoint` and add `--resume`. The child process is what makes this safe: submitit's handler
exits the task right after `checkpoint` returns, which would otherwise cut the training loop short
before its checkpoint is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import MaskinitError

try:
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # refused in one line by `executor`
    Checkpointable, DelayedSubmission = object, None

# `maskinit train` options that choose and shape the SLURM job: taken off the arguments each task runs
LAUNCH_OPTIONS = ("--launcher", "--nodes", "--gpus-per-node", "--partition", "--time-limit")
# seconds the first task waits for its training process to save and stop after the preemption signal
STOP_TIMEOUT = 600.0
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class SlurmOptions:
    """The job: nodes, tasks (one per GPU, or one CPU process) per node, partition, time limit in
    minutes, and `cluster` "slurm" (sbatch) or "local" (submitit's local executor: real processes on
    this machine, for a test or a dry run)."""

    nodes: int = 1
    gpus_per_node: int = 1
    partition: str | None = None
    time_limit_min: int = 60
    cluster: str = "slurm"
    folder: str = "submitit"


def train_arguments(argv: list[str]) -> list[str]:
    """The `maskinit train` arguments a task runs: `argv` without the launch options and their values."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def output_dir(arguments: list[str]) -> Path:
    """The `--output-dir` of `maskinit train` arguments (train's default: output)."""
    for i, arg in enumerate(arguments):
        if arg == "--output-dir" and i + 1 < len(arguments):
            return Path(arguments[i + 1])
        if arg.startswith("--output-dir="):
            return Path(arg.split("=", 1)[1])
    return Path("output")


class TrainingJob(Checkpointable):
    """One task of the job: `maskinit train ARGUMENTS` as this task's rank; requeued after preemption."""

    def __init__(self, arguments: list[str]):
        self.arguments = list(arguments)
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The training command of this start: with `--resume` once the run has a checkpoint to continue
        (a requeued job), and without `--overwrite` then (it would remove that checkpoint)."""
        arguments = self.arguments
        if (output_dir(arguments) / "last_checkpoint").is_file():
            arguments = [arg for arg in arguments if arg != "--overwrite"]
            if "--resume" not in arguments:
                arguments = [*arguments, "--resume"]
        return [sys.executable, "-m", "maskinit", "train", *arguments]

    def __call__(self) -> int:
        import submitit.helpers

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        self.process = subprocess.Popen(self.command())
        # polled, not waited on: Popen.wait holds a lock that `checkpoint` (run by the preemption signal's
        # handler in this thread) needs to see the process end
        while (code := self.process.poll()) is None:
            time.sleep(POLL_SECONDS)
        self.process = None
        if code:
            raise MaskinitError(f"maskinit train exited with {code} (its output is in the job's log)")
        return code

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: stop the training process with a checkpoint, then requeue this job."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.process.poll() is None and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            if self.process.poll() is None:
                self.process.kill()
        return DelayedSubmission(TrainingJob(self.arguments))

    def __getstate__(self):  # the child process stays with the task that started it
        return {"arguments": self.arguments, "process": None}


def executor(options: SlurmOptions):
    """submitit's executor for the job (AutoExecutor: SLURM's sbatch, or the local executor)."""
    try:
        import submitit
    except ImportError as error:
        raise MaskinitError("--launcher slurm needs submitit: pip install submitit (or maskinit[slurm])") from error
    if options.nodes < 1 or options.gpus_per_node < 1:
        raise MaskinitError("--nodes and --gpus-per-node must be at least 1")
    if options.time_limit_min < 1:
        raise MaskinitError(f"--time-limit must be at least a minute, got {options.time_limit_min} min")
    if options.cluster == "slurm" and not any(
        (Path(folder) / "sbatch").is_file() for folder in os.environ.get("PATH", "").split(os.pathsep) if folder
    ):
        raise MaskinitError("--launcher slurm submits with SLURM's sbatch, which is not on PATH here: "
                            "run on a SLURM login node, or see docs/cluster.md for torchrun")
    found = submitit.AutoExecutor(folder=options.folder, cluster=options.cluster)
    parameters = {"nodes": options.nodes, "tasks_per_node": options.gpus_per_node,
                  "timeout_min": options.time_limit_min}
    if options.cluster == "slurm":
        parameters["gpus_per_node"] = options.gpus_per_node
        parameters["slurm_signal_delay_s"] = 180
        if options.partition:
            parameters["slurm_partition"] = options.partition
    found.update_parameters(**parameters)
    return found


def submit(argv: list[str], options: SlurmOptions):
    """Submit `maskinit train ARGV` (launch options left out) as one job of `options`; the submitit job."""
    arguments = train_arguments(argv)
    world = options.nodes * options.gpus_per_node
    if world > 1 and "--device" not in arguments and not any(arg.startswith("--device=") for arg in arguments):
        arguments += ["--device", "cuda"]
    return executor(options).submit(TrainingJob(arguments))
