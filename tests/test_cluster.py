"""Training on several machines, each a process group of its own on this host (gloo, `--device cpu`):
maskinit's `--num-machines` and torchrun's `--nnodes`, with a shared output folder and with one folder each;
a signal to one machine ends every machine with a checkpoint; a process failing on its own ends every process
at once with its error; a missing machine or a bad rendezvous ends with one line; the memory check counts each
process's share of the batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskinit import MaskinitError, load_config, machine
from maskinit.errors import EXIT_CODES
from maskinit.machine import check_memory, estimate_memory

# several training processes each: one such test at a time under `pytest -n 2 --dist loadgroup` (make test)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]

GiB = 2**30
# one torch thread per process: two ranks share this host's cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# small and quick: no fit to the data, 96-pixel inputs, one image per process
QUICK = ["--preset", "tiny", "--device", "cpu", "--no-progress", "--seed", "0", "--fit", "off", "--ims-per-batch", "2",
         "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "96",
         "INPUT.MAX_SIZE_TEST", "96", "SOLVER.WARMUP_ITERS", "1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def data_flags(coco, validate: bool = False) -> list[str]:
    flags = ["--train-json", coco.train_json, "--train-images", coco.train_images]
    return flags + ["--val-json", coco.val_json, "--val-images", coco.val_images] if validate else flags


def machine_command(out, rank, port, coco, *extra, validate=False) -> list[str]:
    return [sys.executable, "-m", "maskinit", "train", *QUICK, "--output-dir", str(out), "--num-machines", "2",
            "--machine-rank", str(rank), "--dist-url", f"tcp://127.0.0.1:{port}", *data_flags(coco, validate), *extra]


def start(command) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(processes, timeout=150) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append((process.returncode, stdout, stderr))
    return results


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def story(out: Path, results) -> str:
    """What every machine printed and the end of each rank's log: the message of a failed signal test."""
    parts = [f"machine {rank}: exit {code}\n{stderr[-2000:]}" for rank, (code, _, stderr) in enumerate(results)]
    for log in sorted(out.glob("log.txt*")):
        parts.append(f"{log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n\n".join(parts)


def wait_for(predicate, timeout=120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_two_machines_sharing_one_folder_train_one_run_and_resume_it(tmp_path, coco):
    out, port = tmp_path / "shared", free_port()
    runs = [start(machine_command(out, rank, port, coco, "--max-iter", "2", validate=True)) for rank in (0, 1)]
    for code, stdout, stderr in finish(runs):
        assert code == 0, stderr[-3000:]
        assert "trained 2 iterations" in stdout and "COCO AP" in stdout and not error_lines(stderr)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    written = {path.name for path in out.iterdir()}
    assert {"config.yaml", "model_final.pth", "eval.json", "log.txt", "log.txt.rank1"} <= written
    # both machines resume the run from the folder they share
    port = free_port()
    runs = [start(machine_command(out, rank, port, coco, "--resume", "--max-iter", "3")) for rank in (0, 1)]
    for code, stdout, stderr in finish(runs):
        assert code == 0 and "trained 3 iterations" in stdout, stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["from_scratch"]["start_iter"] == 2
    assert summary["from_scratch"]["resumed_from_own_checkpoint"]


def test_two_machines_with_their_own_folders_end_alike(tmp_path, coco):
    first, second, port = tmp_path / "machine0", tmp_path / "machine1", free_port()
    runs = [start(machine_command(folder, rank, port, coco, "--max-iter", "2"))
            for rank, folder in ((0, first), (1, second))]
    for code, stdout, stderr in finish(runs):
        assert code == 0, stderr[-3000:]
        assert "trained 2 iterations" in stdout and not error_lines(stderr)
    assert json.loads((first / "run_summary.json").read_text())["status"] == "finished"
    assert (first / "model_final.pth").is_file() and (first / "config.yaml").is_file()
    assert sorted(p.name for p in second.iterdir()) == ["log.txt.rank1"]  # only global rank 0 writes the run


def test_torchrun_on_two_nodes_with_their_own_folders(tmp_path, coco):
    port = free_port()
    runs = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "maskinit", "train", *QUICK, "--output-dir", str(tmp_path / f"node{node}"), "--max-iter", "2",
                   *data_flags(coco)]
        runs.append(start(command))
    for code, stdout, stderr in finish(runs):
        assert code == 0, stderr[-3000:]
        assert "trained 2 iterations" in stdout
    summary = json.loads((tmp_path / "node0" / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "node1").iterdir()) == ["log.txt.rank1"]


def test_sigterm_to_one_machine_ends_every_machine_with_a_checkpoint(tmp_path, coco):
    out, port = tmp_path / "preempted", free_port()
    runs = [start(machine_command(out, rank, port, coco, "--max-iter", "300", "--checkpoint-period", "1000"))
            for rank in (0, 1)]
    log = out / "log.txt"
    started = wait_for(lambda: log.is_file() and "Starting training from iteration" in log.read_text())
    assert started, finish(runs, timeout=5)
    time.sleep(1)
    runs[1].send_signal(signal.SIGTERM)  # machine 1's launcher forwards it to its process
    results = finish(runs, timeout=240)
    for code, _, stderr in results:
        assert code == EXIT_CODES["SIGTERM"] == 143, story(out, results)
        lines = error_lines(stderr)
        assert len(lines) == 1 and "SIGTERM" in lines[0] and "resume with: maskinit train" in lines[0], stderr[-3000:]
        assert "Traceback" not in stderr
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert (out / summary["checkpoint"]).is_file()


def rank_process(launcher: subprocess.Popen) -> int:
    """The PID of the training process a `maskinit train` launcher started (multiprocessing's spawn)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text():
            return int(pid)
    raise AssertionError(f"no training process among {children}")


def test_sigint_to_one_rank_ends_every_machine_with_a_checkpoint(tmp_path, coco):
    out, port = tmp_path / "stopped", free_port()
    runs = [start(machine_command(out, rank, port, coco, "--max-iter", "300", "--checkpoint-period", "1000"))
            for rank in (0, 1)]
    log = out / "log.txt"
    started = wait_for(lambda: log.is_file() and "Starting training from iteration" in log.read_text())
    assert started, finish(runs, timeout=5)
    time.sleep(1)
    os.kill(rank_process(runs[0]), signal.SIGINT)  # global rank 0 itself, not its launcher
    results = finish(runs, timeout=240)
    for code, _, stderr in results:
        lines = error_lines(stderr)
        assert code == EXIT_CODES["SIGINT"] == 130, story(out, results)
        assert len(lines) == 1 and "SIGINT" in lines[0] and "resume with: maskinit train" in lines[0], stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "interrupted" and (out / summary["checkpoint"]).is_file()


def test_sigterm_while_waiting_for_a_missing_machine_ends_at_once(tmp_path, coco):
    out = tmp_path / "alone"
    run = start(machine_command(out, 0, free_port(), coco, "--max-iter", "2"))
    assert wait_for(lambda: (out / "config.yaml").is_file()), finish([run], timeout=5)
    time.sleep(3)  # in the rendezvous, waiting for machine 1
    sent = time.monotonic()
    run.send_signal(signal.SIGTERM)
    [(code, _, stderr)] = finish([run], timeout=120)
    assert time.monotonic() - sent < 20
    assert code == 143 and len(error_lines(stderr)) == 1 and "SIGTERM" in stderr and "Traceback" not in stderr, stderr


def test_bad_rendezvous_inputs_end_with_one_line_and_write_nothing(tmp_path, coco):
    out = tmp_path / "never"
    outside = subprocess.run(machine_command(out, 2, free_port(), coco), capture_output=True, text=True, env=ENV,
                             timeout=120)
    assert outside.returncode == 2 and error_lines(outside.stderr) == [
        "error: --machine-rank must be in [0, 2), got 2"], outside.stderr
    nobody = subprocess.run(machine_command(out, 1, free_port(), coco, "--dist-timeout", "3"), capture_output=True,
                            text=True, env=ENV, timeout=120)
    lines = error_lines(nobody.stderr)
    assert nobody.returncode == EXIT_CODES["failed"] and len(lines) == 1, nobody.stderr[-3000:]
    assert "could not join the run at tcp://127.0.0.1" in lines[0] and "--dist-timeout 3 s" in lines[0]
    assert "Traceback" not in nobody.stderr
    assert not out.exists()


# A plugin whose RoI heads fail in the training step of iteration 1 on the process MASKINIT_TEST_FAIL_RANK names
# (when built, with MASKINIT_TEST_FAIL_AT=build): one process's own failure (a bad image, a full disk, memory),
# the others elsewhere in the step.
FAILING_HEADS = """
import os

import torch.distributed as dist
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.utils.events import get_event_storage


def failing_here() -> bool:
    return dist.is_initialized() and dist.get_rank() == int(os.environ["MASKINIT_TEST_FAIL_RANK"])


class FailingROIHeads(StandardROIHeads):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if os.environ.get("MASKINIT_TEST_FAIL_AT") == "build" and failing_here():
            raise RuntimeError("injected failure of this process")

    def forward(self, images, features, proposals, targets=None):
        if self.training and failing_here():
            try:
                iteration = get_event_storage().iter
            except AssertionError:  # no training loop yet (the data-dependent init)
                iteration = None
            if iteration == 1:
                raise RuntimeError("injected failure of this process")
        return super().forward(images, features, proposals, targets)


if "FailingROIHeads" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(FailingROIHeads)
"""


def failing_run(tmp_path, rank: int) -> tuple[list[str], dict]:
    """The options that make process `rank` fail at iteration 1 (validation data: a final evaluation waits
    after the loop), and the environment that names it."""
    plugin = tmp_path / "failing_heads.py"
    plugin.write_text(FAILING_HEADS)
    return (["--plugin", str(plugin), "--max-iter", "3", "MODEL.ROI_HEADS.NAME", "FailingROIHeads"],
            {**ENV, "MASKINIT_TEST_FAIL_RANK": str(rank)})


def test_a_process_failing_on_its_own_ends_both_machines_with_one_line_each(tmp_path, coco):
    """Machine 1's process fails in a step while machine 0's waits for it: both end at once with machine 1's error
    (machine 0 finds it in the run's rendezvous store, and names the process in run_summary.json); no process
    waits in a collective of its own."""
    out, port = tmp_path / "failing", free_port()
    extra, env = failing_run(tmp_path, 1)
    runs = [subprocess.Popen(machine_command(out, rank, port, coco, *extra, validate=True), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    results = finish(runs, timeout=150)
    (code0, _, stderr0), (code1, _, stderr1) = results
    assert code0 == code1 == EXIT_CODES["failed"], story(out, results)
    own = ("error: training failed at iteration 1: RuntimeError: injected failure of this process "
           f"(traceback in {out / 'log.txt.rank1'})")
    assert error_lines(stderr1) == [own], story(out, results)
    assert error_lines(stderr0) == [own], story(out, results)
    assert "Traceback" not in stderr0 + stderr1
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "failed" and summary["iterations"] == 1 and summary["failed_process"] == 1
    assert summary["error"] == own.removeprefix("error: ")
    assert "injected failure of this process" in (out / "log.txt.rank1").read_text()


@pytest.mark.parametrize("launcher, failing", [("maskinit", 1), ("torchrun", 0), ("torchrun", 1)])
def test_a_process_failing_on_its_own_ends_the_run_with_its_error(tmp_path, coco, launcher, failing):
    """Two processes on one machine, one failing in a step: the run ends at once with that process's error, and
    run_summary.json names the process (rank 0 finds another's error in the run's rendezvous store, also under
    torchrun, whose agent hosts that store; under torchrun each process prints its own ending)."""
    out = tmp_path / launcher
    extra, env = failing_run(tmp_path, failing)
    train = ["train", *QUICK, "--output-dir", str(out), *data_flags(coco, validate=True), *extra]
    if launcher == "maskinit":
        command = [sys.executable, "-m", "maskinit", *train, "--num-gpus", "2"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                   "--master-port", str(free_port()), "-m", "maskinit", *train]
    started = time.monotonic()
    results = finish([subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)])
    [(code, _, stderr)] = results
    assert code != 0 and time.monotonic() - started < 120, story(out, results)
    log = "log.txt" if failing == 0 else "log.txt.rank1"
    own = ("error: training failed at iteration 1: RuntimeError: injected failure of this process "
           f"(traceback in {out / log})")
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "failed" and "injected failure of this process" in summary["error"]
    if launcher == "maskinit":
        assert code == EXIT_CODES["failed"] and error_lines(stderr) == [own], story(out, results)
    else:
        assert own in error_lines(stderr), story(out, results)
    if failing:
        assert summary["failed_process"] == failing and summary["error"] == own.removeprefix("error: "), summary


def test_a_process_failing_before_training_ends_the_run_with_its_error(tmp_path, coco):
    """A process fails while its model is built, the other waits for it in the weights' broadcast: the run
    ends at once with the failing process's error, not the other's lost connection."""
    out = tmp_path / "build"
    extra, env = failing_run(tmp_path, 1)
    command = [sys.executable, "-m", "maskinit", "train", *QUICK, "--output-dir", str(out), *data_flags(coco), *extra,
               "--num-gpus", "2"]
    results = finish([subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env={**env, "MASKINIT_TEST_FAIL_AT": "build"})], timeout=120)
    [(code, _, stderr)] = results
    assert code == EXIT_CODES["failed"], story(out, results)
    assert error_lines(stderr) == ["error: training failed: RuntimeError: injected failure of this process"], stderr


def test_the_memory_check_counts_each_process_share_of_the_batch(monkeypatch):
    monkeypatch.setattr(machine, "available_memory", lambda device: 16.0 * GiB)
    cfg = load_config(preset="tiny", overrides=["SOLVER.IMS_PER_BATCH", "8", "MODEL.DEVICE", "cpu"])
    one = estimate_memory(cfg)
    spread = estimate_memory(cfg, processes_here=1, world=4)  # torchrun: one process here, four in all
    assert (one.images_per_process, spread.images_per_process) == (8, 2)
    assert spread.available_bytes == 16.0 * GiB and spread.peak_bytes < one.peak_bytes
    two_here = estimate_memory(cfg, processes_here=2, world=8)
    assert two_here.images_per_process == 1 and two_here.available_bytes == 8.0 * GiB
    monkeypatch.setattr(machine, "available_memory", lambda device: spread.peak_bytes - 1)
    with pytest.raises(MaskinitError, match=r"--ims-per-batch 4\b"):  # one image per process fits, times 4 processes
        check_memory(cfg, processes_here=1, world=4)


def test_each_process_measures_its_own_gpu(monkeypatch):
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: asked.append(index) or (GiB, 2 * GiB))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert machine.available_memory("cuda") == GiB and asked == [1]
    assert machine.available_memory("cuda:0") == GiB and asked == [1, 0]


def test_only_the_first_process_of_machine_0_leads_the_output_folder(monkeypatch):
    from maskinit.run_dir import leads_run
    from maskinit.run_options import TrainOptions

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert leads_run(TrainOptions(num_machines=2, machine_rank=0))
    assert not leads_run(TrainOptions(num_machines=2, machine_rank=1))
    monkeypatch.setenv("RANK", "1")  # torchrun's second process
    assert not leads_run(TrainOptions())
