"""`--workers N`: worker processes on this machine sharing one study, each placed on its GPU or its
share of the CPU cores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import MaskinitError
from .storage import GRACE_PERIOD, STUDY_FILE, open_storage


def allocated_gpus(environ: dict, gpus: int = 0) -> list[str]:
    """The GPUs this machine's workers may use: the entries of CUDA_VISIBLE_DEVICES where it is set (a
    scheduler's allocation, "2,3", or GPU UUIDs), else 0..gpus-1."""
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [entry.strip() for entry in given.split(",") if entry.strip()]
    return [str(index) for index in range(gpus)]


def worker_env(index: int, count: int, device: str | None, environ: dict, gpus: int = 0) -> dict:
    """Worker `index` of `count`'s environment. On CUDA: one GPU, CUDA_VISIBLE_DEVICES = the index-th of
    the allocated GPUs (allocated_gpus: with CUDA_VISIBLE_DEVICES=2,3 worker 0 gets 2 and worker 1 gets 3;
    more workers than GPUs share them in turn). Without a GPU torch can use (`gpus` 0), and on CPU: an
    equal share of this machine's cores as OMP/MKL threads, unless the user set OMP_NUM_THREADS (then
    theirs, in every worker)."""
    env = dict(environ)
    allocated = allocated_gpus(environ, gpus)
    on_cuda = (device or "cuda").startswith("cuda")
    if on_cuda and allocated:
        env["CUDA_VISIBLE_DEVICES"] = allocated[index % len(allocated)]
    if (not on_cuda or not gpus) and "OMP_NUM_THREADS" not in environ:
        threads = str(max(1, (os.cpu_count() or 1) // count))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def worker_place(env: dict, device: str | None = None) -> str:
    """Where a worker runs, in words: its GPU or its CPU threads."""
    if "CUDA_VISIBLE_DEVICES" in env and not (device or "cuda").startswith("cpu"):
        return f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    return f"CPU, {env.get('OMP_NUM_THREADS', 'all')} thread(s)"


def run_workers(count: int, argv: Sequence[str], output_dir: Path, url: str, name: str, *, resume: bool,
                default_storage: bool, device: str | None, gpus: int = 0, grace_period: int = GRACE_PERIOD,
                on_start=None) -> None:
    """`count` copies of the `maskinit tune` command line `argv` (sys.argv[1:]) working on one study
    (`url`, `name`), each placed by `worker_env`, its output in worker-N.log in the output dir.
    `on_start(index, pid, place, log)` is called as each starts. Returns when all have ended; a worker
    that failed (exit other than 0, or 1: no trial of its own completed) is a MaskinitError."""
    import subprocess
    import sys

    if count < 1:
        raise MaskinitError(f"--workers {count}: needs at least 1")
    if "tune" not in argv:
        raise MaskinitError("--workers needs the `maskinit tune` command line "
                            "(use the library's tune() per process otherwise)")
    if default_storage and (Path(output_dir) / STUDY_FILE).is_file() and not resume:
        raise MaskinitError(f"{output_dir} already holds a study ({STUDY_FILE}): pass --resume to continue it, "
                            "or choose another --output-dir")
    # the database's tables made once, before the workers start (https://github.com/optuna/optuna/issues/1092);
    # a shared storage is opened first: a missing driver or an unreachable server leaves nothing written
    if not default_storage:
        open_storage(url, grace_period)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if default_storage:
        open_storage(url, grace_period)
    # --resume, --workers, --storage and --study-name are the launcher's; each worker gets its own values
    argv = _without_options(argv, flags=("--resume",), valued=("--workers", "--storage", "--study-name"))
    processes = []
    try:
        for index in range(count):
            env = worker_env(index, count, device, os.environ, gpus)
            log_path = Path(output_dir) / f"worker-{index}.log"
            log = open(log_path, "ab")
            command = [sys.executable, "-m", "maskinit", *argv, "--workers", "1", "--storage", url,
                       "--study-name", name]
            processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
            if on_start:
                on_start(index, processes[-1][0].pid, worker_place(env, device), log_path)
        codes = [process.wait() for process, _ in processes]
    finally:  # interrupted: the workers stop too (their running trials are queued again on --resume)
        for process, log in processes:
            if process.poll() is None:
                process.terminate()
                process.wait()
            log.close()
    failed = [index for index, code in enumerate(codes) if code not in (0, 1)]
    if failed:
        raise MaskinitError(f"worker(s) {', '.join(map(str, failed))} failed: see {output_dir}/worker-N.log")


def _without_options(argv: Sequence[str], flags: Sequence[str], valued: Sequence[str]) -> list[str]:
    """argv without the given flags and valued options (`--opt value` and `--opt=value`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags or any(arg.startswith(option + "=") for option in valued):
            continue
        elif arg in valued:
            skip = True
        else:
            kept.append(arg)
    return kept

