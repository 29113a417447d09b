"""The process entry of a training run: `launch_workers` starts `worker` in this process, under torchrun
(or srun), or in `--num-gpus` processes on each of `--num-machines` machines (`launcher`); each `worker`
(one rank) trains the config of rank 0, sets up logging and seeds, audits that nothing pretrained is
loaded, trains, evaluates and records how the run ended in `run_summary.json` (rank 0 alone), whatever
the ending (finished, diverged, interrupted, failed), and returns that ending on every rank."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpoint import last_checkpoint, weights_fingerprint, write_failure
from .data.fit import FitReport
from .devices import configure_backends
from .errors import MaskinitError, one_line, signal_name
from .hooks import StopRequested, TrainingInterrupted
from .launcher import (
    FAILURE_POST_WAIT_SECONDS,
    PEER_GONE,
    GroupPlan,
    free_port,
    join_group,
    launch,
    peer_gone,
    post_failure,
    posted_failure,
)
from .machine import estimate_memory
from .ranks import under_torchrun
from .run_dir import EVAL_FILE, SUMMARY_FILE, write_json
from .run_options import TrainOptions
from .trainer import Trainer

logger = logging.getLogger("maskinit")


DIVERGED = re.compile(r"Loss became infinite or NaN at iteration=(\d+)")
# numpy 2 prints the loss dict's values as np.float64(nan)
BAD_TERM = re.compile(r"'(\w+)': (?:np\.float(?:32|64)\()?(nan|inf|-inf)")
BAD_WEIGHTS = re.compile(r"weights became non-finite at iteration (\d+): (\d+ of \d+)")
# With several processes, the same signal again within this many seconds is the first one delivered twice
# (to a launcher that forwards it and to its processes), not a second signal that stops at once.
REPEATED_SIGNAL_SECONDS = 1.0


def divergence_message(error: FloatingPointError, output_dir: str, iteration: int) -> dict:
    """Where and in which loss terms training diverged, and which checkpoint is left."""
    text = str(error)
    match = DIVERGED.search(text)
    iteration = int(match.group(1)) if match else iteration
    terms = sorted({name for name, _ in BAD_TERM.findall(text) if name != "total_loss"})
    weights = BAD_WEIGHTS.search(text)
    if weights:  # the checkpointer refused to save a diverged model
        iteration, terms = int(weights.group(1)), [f"weights ({weights.group(2)} tensors)"]
    if not terms:  # raised elsewhere (e.g. Detectron2's box inference): quote its first line
        terms = [f"values ({text.strip().splitlines()[0][:120]})"]
    return {"iteration": iteration, "terms": terms, "checkpoint": last_checkpoint(output_dir)}


def worker(
    cfg: CfgNode,
    options: TrainOptions,
    fit: FitReport | None = None,
    data_notes: Sequence[str] = (),
    hooks: Sequence = (),
    time_budget=None,
) -> dict:
    """One training process (rank): set up logging and seeds, train, evaluate, record the summary (rank 0);
    returns rank 0's summary on every rank. `cfg`: rank 0's is trained (each rank keeps its own OUTPUT_DIR);
    `fit`: the data fit (its keys as (key, preset value, fitted value, reason) rows, its mode and cost);
    `data_notes`: what the data check dropped or cleaned (logged, and kept in the summary);
    `hooks`: extra Detectron2 hooks, after maskinit's own; `time_budget` (`time_budget.TimeBudget`): `--time`,
    the run's length re-planned as it goes."""
    from detectron2.utils.env import seed_all_rng

    from .data.sources import register_from_options

    cfg = config_of_rank_0(cfg)
    rank = comm.get_rank()
    quiet_third_party_notices()
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="detectron2", abbrev_name="d2")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="maskinit")
    if options.progress or (options.progress is None and os.isatty(1)):
        # the progress bar replaces Detectron2's periodic console lines; the log file keeps them
        for name in ("detectron2", "maskinit", "fvcore"):
            for handler in logging.getLogger(name).handlers:
                if on_console(handler):
                    handler.setLevel(logging.WARNING)
    for name in ("detectron2", "maskinit"):
        for handler in logging.getLogger(name).handlers:
            if on_console(handler):
                handler.addFilter(no_console_traceback)
    estimate = estimate_memory(cfg, comm.get_local_size(), world=comm.get_world_size())
    (logger.warning if estimate.tight else logger.info)("memory: %s", estimate.describe())
    fit = fit or FitReport("off")
    for key, old, new, reason in fit.rows:
        logger.info("fitted to the data: %s = %s (was %s): %s", key, new, old, reason)
    for line in fit.lines():
        logger.info("%s", line)
    register_from_options(options.data, cfg)
    for note in data_notes:
        logger.warning("data: %s", note)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    configure_backends(cfg.MODEL.DEVICE, cfg.CUDNN_BENCHMARK)

    summary_path = Path(cfg.OUTPUT_DIR) / SUMMARY_FILE
    # a resumed run's weights come from its checkpoint (Detectron2's has_checkpoint: last_checkpoint in the folder)
    resuming = bool(options.resume) and (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file()
    trainer = Trainer(cfg, progress_bar=options.progress, extra_hooks=hooks, resuming=resuming, time_budget=time_budget)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    before = weights_fingerprint(model)
    trainer.resume_or_load(resume=options.resume)
    after = weights_fingerprint(model)
    resumed = options.resume and trainer.checkpointer.has_checkpoint()
    own = Path(cfg.OUTPUT_DIR).resolve()
    foreign = [f for f in trainer.checkpointer.files_read if Path(f["file"]).resolve().parent != own]
    audit = {
        "pretrained_tensors_loaded": sum(f["tensors"] for f in foreign),
        "checkpoint_files_read": trainer.checkpointer.files_read,
        "resumed_from_own_checkpoint": resumed,
        "start_iter": trainer.start_iter,
        "weights_unchanged_by_load": before == after,
    }
    if foreign or (not resumed and before != after):
        raise MaskinitError(f"pretrained tensors were loaded from {foreign}: refusing to train")
    if comm.is_main_process():
        if resumed:
            logger.info(
                "from scratch: resumed own checkpoint at iteration %d; no pretrained tensor loaded", trainer.start_iter
            )
        else:
            logger.info("from scratch: no tensor loaded from any checkpoint (weights fingerprint unchanged)")
    started = time.perf_counter()
    status = {"status": "running"}
    summary = None
    if comm.get_world_size() > 1:
        trainer.stop_on_signal.repeat_window = REPEATED_SIGNAL_SECONDS
    restore = install_signal_handlers(trainer.stop_on_signal.handle)
    try:
        trainer.train()
        status = {"status": "finished"}
    except FloatingPointError as error:
        status = {"status": "diverged", **divergence_message(error, cfg.OUTPUT_DIR, trainer.iter)}
    except TrainingInterrupted as stop:
        checkpoint = stop.checkpoint
        if stop.during == "evaluation":  # the iteration before it completed: keep it
            final = Path(cfg.OUTPUT_DIR) / "model_final.pth"
            finished = trainer.iter >= trainer.max_iter - 1 and final.is_file()
            checkpoint = final.name if finished else trainer.stop_on_signal.save_here()
        status = {
            "status": "interrupted",
            "signal": stop.signal_name,
            "iteration": stop.iteration,
            "checkpoint": checkpoint,
            "during": stop.during,
        }
    except StopRequested as stop:
        status = {"status": "stopped", "reason": str(stop), "iteration": trainer.iter}
    except KeyboardInterrupt as interrupt:  # a second signal: stopped mid-iteration, nothing new saved
        status = {
            "status": "interrupted",
            "signal": signal_name(interrupt),
            "iteration": trainer.iter,
            "checkpoint": None,
            "during": "training",
            "previous_checkpoint": last_checkpoint(cfg.OUTPUT_DIR),
        }
    except MaskinitError as error:
        status = {"status": "failed", "error": str(error)}
    except OSError as error:  # e.g. a full disk under Detectron2's metric writers
        status = {
            "status": "failed",
            "error": f"training stopped at iteration {trainer.iter}: cannot write to "
            f"{cfg.OUTPUT_DIR} ({write_failure(error, Path(cfg.OUTPUT_DIR))})",
        }
    except Exception as error:  # a bug, not the user's input: one line here, the traceback in log.txt
        logger.error("training failed", exc_info=True)
        status = {
            "status": "failed",
            "error": f"training stopped at iteration {trainer.iter}: {PEER_GONE} (its own log says why)",
        } if peer_gone(error) else {
            "status": "failed",
            "error": f"training failed at iteration {trainer.iter}: {type(error).__name__}: "
            f"{one_line(error)[:300]} (traceback in {Path(cfg.OUTPUT_DIR) / log_file(rank)})",
        }
    finally:
        restore()
        if comm.get_world_size() > 1:
            status = with_posted_cause(status, rank)
        if comm.is_main_process():
            # Detectron2 leaves `iter` at max_iter after a finished run, at the failing one otherwise.
            elapsed = time.perf_counter() - started
            storage = getattr(trainer, "storage", None)
            step_time = storage.history("time").global_avg() if storage and "time" in storage.histories() else None
            summary = {
                **status,
                "iterations": trainer.iter,
                "max_iter": trainer.cfg.SOLVER.MAX_ITER,  # re-planned under --time
                "seconds": round(elapsed, 2),
                "seconds_per_iter": round(step_time, 4) if step_time else None,
                "from_scratch": audit,
                "world_size": comm.get_world_size(),
                "data_dropped": list(data_notes),
                "warnings": trainer.loss_watch.warnings(),
                "fitted_to_data": [{"key": k, "preset": o, "fitted": n, "from": r} for k, o, n, r in fit.rows],
                "fit": fit.to_dict(),
                "output_dir": cfg.OUTPUT_DIR,
            }
            if trainer.budget_hook is not None:
                summary["time_budget"] = trainer.budget_hook.summary()
            results = getattr(trainer, "_last_eval_results", None)
            if status["status"] == "finished" and results:
                write_json(Path(cfg.OUTPUT_DIR) / EVAL_FILE, results)
                summary["eval"] = {
                    task: {k: v for k, v in metrics.items() if "-" not in k} for task, metrics in results.items()
                }
            write_json(summary_path, summary)
    if comm.is_main_process() and status["status"] == "finished":
        from .curves import plot_curves

        plot_curves(Path(cfg.OUTPUT_DIR))
    if trainer.failed_alone:  # the others are elsewhere in the step: no collective may wait for them
        return summary if comm.is_main_process() else status
    return ending_of_rank_0(summary, status)


def with_posted_cause(status: dict, rank: int) -> dict:
    """This process's ending in a run of several: its own failure is left in the run's store for rank 0
    (`launcher.post_failure`); rank 0, stopped because another process had gone (or by the signal with which
    torchrun ends a failed run's other processes), takes that process's error as the run's, naming it
    (`failed_process`, its global rank)."""
    own_failure = status["status"] == "failed" and PEER_GONE not in status["error"]
    if own_failure:
        post_failure(rank, status["error"])
        return status
    if not comm.is_main_process() or status["status"] not in ("failed", "interrupted"):
        return status
    cause = posted_failure(comm.get_world_size(), wait=FAILURE_POST_WAIT_SECONDS if status["status"] == "failed" else 0)
    if cause is None:
        return status
    return {**status, "status": "failed", "error": cause[1], "failed_process": cause[0]}


def log_file(rank: int) -> str:
    """The name of a process's log in the output folder (Detectron2's `setup_logger`)."""
    return "log.txt" if rank == 0 else f"log.txt.rank{rank}"


def config_of_rank_0(cfg: CfgNode) -> CfgNode:
    """The config rank 0 fitted and checked, on every rank (each machine may have fitted its own to its own
    copy of the data, or be an older checkout): all ranks must train the same. Each keeps its OUTPUT_DIR."""
    if comm.get_world_size() == 1:
        return cfg
    import torch.distributed as dist

    shared = [cfg if comm.is_main_process() else None]
    dist.broadcast_object_list(shared, src=0)
    if comm.is_main_process():
        return cfg
    ours = shared[0].clone()
    ours.defrost()
    ours.OUTPUT_DIR = cfg.OUTPUT_DIR
    ours.freeze()
    return ours


def ending_of_rank_0(summary: dict | None, status: dict) -> dict:
    """Rank 0's summary (what it wrote to run_summary.json), on every rank: each machine ends as the run did."""
    if comm.get_world_size() == 1:
        return summary
    import torch.distributed as dist

    shared = [summary if comm.is_main_process() else None]
    try:
        dist.broadcast_object_list(shared, src=0)
    except RuntimeError as error:  # rank 0 is gone: this rank's own ending is all there is
        return {
            **status,
            "status": status["status"] if status["status"] != "finished" else "failed",
            "error": f"lost rank 0 at the end of the run: {one_line(error)[:200]}",
        }
    return shared[0]


def on_console(handler: logging.Handler) -> bool:
    """Whether a log handler writes to the terminal. Detectron2's `setup_logger` writes its log file through a
    plain `StreamHandler` on a cached file stream, not a `FileHandler`: the stream tells them apart."""
    import sys

    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def no_console_traceback(record: logging.LogRecord) -> bool:
    """Console filter: a record carrying a traceback (Detectron2's 'Exception during training:') is left
    to the log file; maskinit itself says in one line why the run stopped."""
    return record.exc_info is None


def install_signal_handlers(handler):
    """Route SIGINT and SIGTERM to `handler` (main thread only); returns a function restoring the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, previous) for sig, previous in old.items()]


def quiet_third_party_notices() -> None:
    """torch.fx warns on every Detectron2 forward that checks `is_fx_tracing`; it is noise here."""
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def run_under_torchrun(
    cfg: CfgNode, options: TrainOptions, fit: FitReport | None = None, data_notes: Sequence[str] = ()
) -> dict:
    """torchrun started the processes: join its process group (env://) and run this rank; its ending."""
    join_group(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        "env://",
        options.dist_timeout,
        cfg.MODEL.DEVICE.startswith("cuda"),
    )
    try:
        return worker(cfg, options, fit, data_notes)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launch_workers(
    cfg: CfgNode,
    options: TrainOptions,
    fit: FitReport | None = None,
    data_notes: Sequence[str] = (),
    hooks: Sequence = (),
    time_budget=None,
) -> dict:
    """Run `worker` in this process, under torchrun, or in `--num-gpus` processes of each of `--num-machines`
    machines; returns rank 0's ending (its summary). Extra `hooks` need the one process: they cannot be
    sent to others."""
    world = options.num_gpus * options.num_machines
    if hooks and (world > 1 or under_torchrun()):
        raise MaskinitError("extra training hooks run in one process only: use --num-gpus 1 without torchrun")
    if under_torchrun():
        return run_under_torchrun(cfg, options, fit, data_notes)
    if world == 1:
        return worker(cfg, options, fit, list(data_notes), list(hooks), time_budget)
    dist_url = options.dist_url
    if dist_url == "auto":
        if options.num_machines > 1:
            raise MaskinitError("--dist-url tcp://HOST:PORT is required with several machines")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    plan = GroupPlan(
        options.num_gpus,
        options.num_machines,
        options.machine_rank,
        dist_url,
        options.dist_timeout,
        cfg.MODEL.DEVICE.startswith("cuda"),
    )
    ending = launch(worker, plan, args=(cfg, options, fit, list(data_notes), list(hooks), time_budget))
    summary_path = Path(cfg.OUTPUT_DIR) / SUMMARY_FILE
    if ending and "failed_process" in ending and summary_path.is_file():  # rank 0 knew only that a peer had gone
        write_json(summary_path, ending)
    return ending
