"""A run's output directory: the files a run writes, what marks a directory as holding a run, the
refusals before one is overwritten, the lock that keeps a second training out, and the
leftovers of a killed run.

With several processes (and machines) one of them leads: the first process of machine 0 (`leads_run`)
checks, locks and writes the dir, once per run; the others never lock or refuse it, whether they were
given the same folder (shared storage) or their own, and write only their per-rank log files."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from detectron2.config import CfgNode

from .atomic import write_atomically
from .cfgkeys import get_key
from .checkpoint import checkpoint_iteration, last_checkpoint
from .errors import MaskinitError
from .evaluation import json_safe

if TYPE_CHECKING:
    from .run_options import TrainOptions

SUMMARY_FILE = "run_summary.json"
EVAL_FILE = "eval.json"
CONFIG_FILE = "config.yaml"
# What makes an output dir hold a run that a new one must not overwrite: a checkpoint or an evaluation.
# A run refused or stopped before its first checkpoint leaves only config.yaml and logs: not a run.
RUN_MARKERS = ("last_checkpoint", "model_*.pth", EVAL_FILE)
LOCK_FILE = ".maskinit.lock"
# What a run writes into its dir besides config.yaml: what `--overwrite` removes before the new run starts,
# so that nothing of the replaced run mixes with the new one (Detectron2 appends to metrics.json and
# log.txt, and a longer old run would leave later checkpoints that `last_checkpoint` no longer names).
RUN_OUTPUTS = (
    "model_*.pth",
    "last_checkpoint",
    EVAL_FILE,
    SUMMARY_FILE,
    "metrics.json",
    "log.txt",
    "events.out.tfevents.*",
    "curves.png",
    "inference",
)


def leads_run(options: TrainOptions) -> bool:
    """True in the process that checks, locks and writes the output dir: machine 0's launching process
    (rank 0 under torchrun or srun)."""
    from .ranks import global_rank

    return options.machine_rank == 0 and global_rank() == 0


def holds_run(out: Path) -> bool:
    return out.is_dir() and any(any(out.glob(marker)) for marker in RUN_MARKERS)


def prepare_output_dir(options: TrainOptions) -> Path:
    """The output dir, created and writable; files stay untouched."""
    out = Path(options.output_dir)
    if out.exists() and not out.is_dir():
        raise MaskinitError(f"output dir {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".maskinit-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise MaskinitError(f"output dir {out} is not writable: {error.strerror}") from error
    return out


def check_output_dir(out: Path, options: TrainOptions, max_iter: int) -> None:
    """A dir that holds a run is refused unless resuming or overwriting (by the leading process alone: the
    others may share its folder); `--resume` needs a checkpoint to continue from, before `max_iter`."""
    if leads_run(options) and holds_run(out) and not (options.resume or options.overwrite):
        raise MaskinitError(
            f"output dir {out} already holds a run: pass --resume to continue it or --overwrite to replace it"
        )
    if options.resume:
        checkpoint = last_checkpoint(out)
        if checkpoint is None:
            raise MaskinitError(
                f"--resume but {out} has no checkpoint to resume from (no last_checkpoint naming a file there)"
            )
        start = checkpoint_iteration(out / checkpoint) + 1
        if start >= max_iter:
            raise MaskinitError(
                f"--resume: {checkpoint} in {out} is at iteration {start - 1}, and SOLVER.MAX_ITER is {max_iter}: "
                f"nothing is left to train; pass --max-iter above {start} to train further "
                "(or evaluate it with maskinit eval)"
            )


def remove_stale_files(out: Path) -> None:
    """Temporary files a killed run left (a half-written checkpoint), removed once the dir is locked."""
    for stale in [*out.glob(".*.tmp"), *out.glob(".maskinit-write-test-*")]:
        stale.unlink(missing_ok=True)


def remove_replaced_run(out: Path) -> list[str]:
    """`--overwrite`: the files of the run being replaced (`RUN_OUTPUTS`), removed once the dir is locked
    and every check has passed; anything else in the dir is the user's and stays. Returns the names removed."""
    import shutil

    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(out.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name == "log.txt":  # emptied in place: Detectron2's cached log stream of an earlier
                path.write_text("")  # run in this process keeps appending to the same file
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


@contextlib.contextmanager
def output_dir_lock(out: Path):
    """Hold `out/.maskinit.lock` for the run: a second training into the same dir is refused.

    `filelock`'s lock (an advisory `flock` on Unix), released by the kernel when the process ends however it
    ends, so a killed run never leaves the dir locked. The holder writes its pid into the file, which the
    refusal names. Taken by the run's leading process alone (`leads_run`).
    """
    from filelock import FileLock, Timeout

    path = out / LOCK_FILE
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout as error:
        holder = path.read_text().strip() if path.is_file() else ""
        raise MaskinitError(
            f"output dir {out} is in use by another maskinit train ({holder or 'another process'}): "
            "wait for it to end or choose another --output-dir"
        ) from error
    try:
        path.write_text(f"pid {os.getpid()}")
        yield
    finally:
        lock.release()


def write_json(path: Path, data) -> None:
    write_atomically(path, json.dumps(json_safe(data), indent=2, default=str))


def read_summary(out: Path) -> dict:
    path = out / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# What a resumed run must share with the run it continues: the model's shape, known from the config...
RESUME_MODEL_KEYS = (
    "MODEL.RESNETS.DEPTH",
    "MASKINIT.NORM",
    "MODEL.FPN.OUT_CHANNELS",
    "MODEL.ROI_BOX_HEAD.NUM_CONV",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
)
# ...and its classes, known once the data is read.
RESUME_CLASS_KEYS = ("MODEL.ROI_HEADS.NUM_CLASSES", "MASKINIT.CLASS_NAMES")


def check_resume_config(
    path: Path, cfg: CfgNode, keys: tuple[str, ...] = RESUME_MODEL_KEYS + RESUME_CLASS_KEYS
) -> None:
    """A resumed run must build the same model it saved."""
    from .config import load_config

    saved = load_config(path)
    for key in keys:
        old, new = get_key(saved, key), get_key(cfg, key)
        if isinstance(old, (list, tuple)):
            if not old:  # a run saved before the key existed
                continue
            old, new = list(old), list(new)
        if old != new:
            raise MaskinitError(
                f"--resume: {key} is {new} now but {old} in the saved run ({path}); use a new --output-dir"
            )


def resumed_config(path: Path, given: CfgNode, options: TrainOptions, explicit_keys) -> CfgNode:
    """The config a resumed run continues with: the one the run saved in `path` (fitted to the data when
    it started), with the keys the command sets explicitly (`given`'s values) and its run options on top.

    Not the command's preset or config file: fitted to the data again, or not fitted at all, the run would
    go on with other input sizes, pixel statistics or anchors than its checkpoint was trained with. So
    the command that started a run also resumes it, `--resume` added."""
    from .config import config_value, load_config
    from .run_options import apply_run_options

    cfg = load_config(path)
    cfg.defrost()
    for key in sorted(explicit_keys):
        *parent, last = key.split(".")
        node = config_value(cfg, ".".join(parent)) if parent else cfg
        node[last] = config_value(given, key)
    return apply_run_options(cfg, options, explicit_keys)
