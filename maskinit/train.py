"""`train(cfg, options)`: from-scratch Mask R-CNN on Detectron2's own trainer, on any number of processes.

The run is proven from scratch: `MODEL.WEIGHTS` must be empty, every checkpoint file read is
recorded, and when not resuming the model's weights are fingerprinted before and after Detectron2's
`resume_or_load` to show that nothing was loaded. The record goes to the log and `run_summary.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, launch
from detectron2.solver import build_lr_scheduler, get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .atomic import write_atomically
from .checkpoint import AuditedCheckpointer, checkpoint_iteration, last_checkpoint, weights_fingerprint, write_failure
from .config import ADAPTIVE_OPTIMIZERS, check_config, dump_yaml
from .devices import set_device
from .errors import Interrupted, MaskinitError, one_line, signal_name
from .evaluation import json_safe
from .hooks import LossWatch, ProgressHook, ReduceLROnPlateau, StopOnSignal, TrainingInterrupted, evaluation_running
from .data.analysis import fit_rows, fit_to_data
from .machine import check_memory, estimate_memory
from .model import build_model

logger = logging.getLogger("maskinit")

SUMMARY_FILE = "run_summary.json"
EVAL_FILE = "eval.json"
CONFIG_FILE = "config.yaml"
# What makes an output dir hold a run that a new one must not overwrite: a checkpoint or an evaluation.
# A run refused or stopped before its first checkpoint leaves only config.yaml and logs: not a run.
RUN_MARKERS = ("last_checkpoint", "model_*.pth", EVAL_FILE)
LOCK_FILE = ".maskinit.lock"


@dataclass
class DataOptions:
    """Where the data comes from: COCO files, a name Detectron2 registers, or the embedded default."""

    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    dataset: str | None = None
    val_dataset: str | None = None
    # set by resolve_data when no data option was given and the embedded default set is used
    is_default: bool = False


@dataclass
class TrainOptions:
    output_dir: str = "output"
    max_iter: int | None = None
    ims_per_batch: int | None = None
    lr: float | None = None
    device: str | None = None
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    resume: bool = False
    overwrite: bool = False
    amp: bool | None = None
    seed: int | None = None
    eval_period: int | None = None
    checkpoint_period: int | None = None
    optimizer: str | None = None
    lr_schedule: str | None = None
    warmup_iters: int | None = None
    clip_grad: float | None = None
    precise_bn: bool = False
    progress: bool | None = None
    # drop bad annotations/images (counted in the log) instead of refusing the data
    skip_bad: bool = False
    # what --skip-bad dropped, filled by train() and logged by every run
    data_notes: list = field(default_factory=list)
    data: DataOptions = field(default_factory=DataOptions)


def amp_dtype(cfg: CfgNode) -> torch.dtype:
    choice = cfg.MASKINIT.AMP_DTYPE
    if choice == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[choice]


class Trainer(DefaultTrainer):
    """DefaultTrainer with maskinit's model, optimizers, schedules, evaluator and hooks."""

    def __init__(self, cfg, progress_bar: bool | None = None):
        """DefaultTrainer.__init__'s steps, with three changes it has no hook for: DDP without
        device_ids on CPU (gloo), AMP in bf16 where supported, and the audited checkpointer.
        `progress_bar`: None shows it on a terminal only."""
        TrainerBase.__init__(self)
        self.progress_bar = progress_bar
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        cuda = cfg.MODEL.DEVICE.startswith("cuda")
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if cuda else None)
        if cfg.SOLVER.AMP.ENABLED:
            dtype = amp_dtype(cfg)  # bf16 needs no loss scaling
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            self._trainer = AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler, precision=dtype)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AuditedCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        if comm.is_main_process():
            counts: dict[str, int] = {}
            for line in model.maskinit_init_report:
                counts[line.init] = counts.get(line.init, 0) + 1
            logger.info("initialization: %s", ", ".join(f"{k}: {v} tensors" for k, v in sorted(counts.items())))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.MASKINIT.OPTIMIZER
        if name == "sgd":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optimizer_type = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        return maybe_add_gradient_clipping(cfg, optimizer_type)(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        cfg = cfg.clone()
        cfg.defrost()
        if cfg.MASKINIT.LR_SCHEDULE == "cosine":
            cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
        elif cfg.MASKINIT.LR_SCHEDULE == "plateau":
            cfg.SOLVER.STEPS = ()  # constant after warmup; ReduceLROnPlateau scales it
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader on maskinit's mapper, which reads every image kind (gray, 16-bit,
        N-channel); with `MASKINIT.AUGMENT.NAME lsj`, its augmentations are the large-scale jitter."""
        from detectron2.data import build_detection_train_loader

        from .augment import build_train_mapper

        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader (for the evaluations during and after training) on maskinit's mapper."""
        from detectron2.data import build_detection_test_loader

        from .data.mapper import ImageMapper

        return build_detection_test_loader(cfg, dataset_name, mapper=ImageMapper(cfg, is_train=False))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation, marked as such: a signal during it stops it at once."""
        with evaluation_running():
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from .evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    def build_hooks(self):
        hooks = super().build_hooks()
        cfg = self.cfg
        if cfg.MASKINIT.LR_SCHEDULE == "plateau":
            plateau = cfg.MASKINIT.PLATEAU
            period = cfg.TEST.EVAL_PERIOD if plateau.METRIC != "total_loss" and cfg.TEST.EVAL_PERIOD else plateau.PERIOD
            # after the evaluation hook, so that a fresh AP is in the storage
            hooks.insert(-1 if comm.is_main_process() else len(hooks), ReduceLROnPlateau(
                plateau.METRIC, period, plateau.PATIENCE, plateau.FACTOR, plateau.MIN_LR))
        hooks.append(ProgressHook(cfg.SOLVER.MAX_ITER, use_bar=self.progress_bar))
        self.loss_watch = LossWatch()
        hooks.append(self.loss_watch)
        self.stop_on_signal = StopOnSignal()
        hooks.append(self.stop_on_signal)
        return hooks


def rescale_to_max_iter(cfg: CfgNode, max_iter: int, keep_steps: bool, keep_warmup: bool) -> None:
    """A shorter or longer run keeps the shape of its LR schedule: steps (and warmup) scale with it."""
    if max_iter < 1:
        raise MaskinitError(f"--max-iter must be at least 1, got {max_iter}")
    old = cfg.SOLVER.MAX_ITER
    scale = max_iter / old
    cfg.SOLVER.MAX_ITER = max_iter
    if not keep_steps:
        steps = (max(1, int(round(step * scale))) for step in cfg.SOLVER.STEPS if step < old)
        cfg.SOLVER.STEPS = tuple(step for step in steps if step < max_iter)
    if not keep_warmup:
        cfg.SOLVER.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS * scale))


def apply_run_options(cfg: CfgNode, options: TrainOptions, explicit_keys: set[str] = frozenset()) -> CfgNode:
    """Write the run options into the config, so that `config.yaml` says exactly what ran."""
    from .config import apply_ims_per_batch

    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(options.output_dir)
    set_device(cfg, options.device, options.num_gpus)
    if options.ims_per_batch is not None:
        apply_ims_per_batch(cfg, options.ims_per_batch)
    if options.lr is not None:
        if not 0 < options.lr < 10:
            raise MaskinitError(f"--lr must be in (0, 10), got {options.lr}")
        cfg.SOLVER.BASE_LR = options.lr
    if options.warmup_iters is not None:
        if options.warmup_iters < 0:
            raise MaskinitError(f"--warmup-iters must be >= 0, got {options.warmup_iters}")
        cfg.SOLVER.WARMUP_ITERS = options.warmup_iters
    if options.max_iter is not None:
        rescale_to_max_iter(
            cfg, options.max_iter, keep_steps="SOLVER.STEPS" in explicit_keys,
            keep_warmup=options.warmup_iters is not None or "SOLVER.WARMUP_ITERS" in explicit_keys,
        )
    if options.amp is not None:
        cfg.SOLVER.AMP.ENABLED = bool(options.amp)
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning("AMP is off on CPU")
        cfg.SOLVER.AMP.ENABLED = False
    if options.seed is not None:
        cfg.SEED = options.seed
    if options.eval_period is not None:
        cfg.TEST.EVAL_PERIOD = options.eval_period
    if options.checkpoint_period is not None:
        if options.checkpoint_period < 1:
            raise MaskinitError(f"--checkpoint-period must be at least 1, got {options.checkpoint_period}")
        cfg.SOLVER.CHECKPOINT_PERIOD = options.checkpoint_period
    if options.optimizer is not None:
        cfg.MASKINIT.OPTIMIZER = options.optimizer
    if options.lr_schedule is not None:
        cfg.MASKINIT.LR_SCHEDULE = options.lr_schedule
    if options.clip_grad is not None:
        if options.clip_grad <= 0:
            raise MaskinitError(f"--clip-grad must be positive, got {options.clip_grad}")
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = options.clip_grad
    if options.precise_bn:
        cfg.TEST.PRECISE_BN.ENABLED = True
    validate_run_config(cfg, options)
    warn_optimizer_mismatch(cfg)
    return cfg


def warn_optimizer_mismatch(cfg: CfgNode) -> None:
    """SGD and AdamW want LRs and weight decays 10-500x apart; a switch of one alone is a likely mistake."""
    adaptive = cfg.MASKINIT.OPTIMIZER in ADAPTIVE_OPTIMIZERS
    if adaptive and cfg.SOLVER.BASE_LR > 0.01:
        logger.warning("LR %g is an SGD value; %s usually wants 1e-4 to 2e-3 (--lr)", cfg.SOLVER.BASE_LR, cfg.MASKINIT.OPTIMIZER)
    if not adaptive and cfg.SOLVER.WEIGHT_DECAY > 1e-3:
        logger.warning("weight decay %g is an AdamW value; SGD usually wants 1e-4 (SOLVER.WEIGHT_DECAY)", cfg.SOLVER.WEIGHT_DECAY)
    if not adaptive and cfg.SOLVER.BASE_LR <= 1e-3:
        logger.warning("LR %g is an AdamW value; SGD usually wants 0.01 to 0.04 (--lr)", cfg.SOLVER.BASE_LR)


def validate_run_config(cfg: CfgNode, options: TrainOptions) -> None:
    check_config(cfg)  # the same checks as export-config, now with the run options applied
    world = options.num_gpus * options.num_machines
    if options.num_gpus < 1 or options.num_machines < 1:
        raise MaskinitError("--num-gpus and --num-machines must be at least 1")
    if not 0 <= options.machine_rank < options.num_machines:
        raise MaskinitError(f"--machine-rank must be in [0, {options.num_machines}), got {options.machine_rank}")
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise MaskinitError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")


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
        raise MaskinitError(f"output dir {out} is not writable: {error.strerror}") from None
    return out


def check_output_dir(out: Path, options: TrainOptions, max_iter: int) -> None:
    """A dir that holds a run is refused unless resuming or overwriting; `--resume` needs a checkpoint
    to continue from, before `max_iter`."""
    # under torchrun every rank gets here; rank 0 decides, before the others could see its files
    first_rank = int(os.environ.get("RANK", 0)) == 0
    if first_rank and holds_run(out) and not (options.resume or options.overwrite):
        raise MaskinitError(f"output dir {out} already holds a run: pass --resume to continue it or --overwrite to replace it")
    if options.resume:
        checkpoint = last_checkpoint(out)
        if checkpoint is None:
            raise MaskinitError(f"--resume but {out} has no checkpoint to resume from (no last_checkpoint naming a file there)")
        start = checkpoint_iteration(out / checkpoint) + 1
        if start >= max_iter:
            raise MaskinitError(
                f"--resume: {checkpoint} in {out} is at iteration {start - 1}, and SOLVER.MAX_ITER is {max_iter}: "
                f"nothing is left to train; pass --max-iter above {start} to train further (or evaluate it with maskinit eval)"
            )


def remove_stale_files(out: Path) -> None:
    """Temporary files a killed run left (a half-written checkpoint), removed once the dir is locked."""
    if int(os.environ.get("RANK", 0)) == 0:
        for stale in [*out.glob(".*.tmp"), *out.glob(".maskinit-write-test-*")]:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def output_dir_lock(out: Path):
    """Hold `out/.maskinit.lock` for the run: a second training into the same dir is refused.

    An advisory `flock`, released by the kernel when the process ends however it ends, so a killed
    run never leaves the dir locked. Under torchrun only rank 0 takes it.
    """
    if int(os.environ.get("RANK", 0)) != 0:
        yield
        return
    import fcntl

    handle = open(out / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise MaskinitError(
                f"output dir {out} is in use by another maskinit train ({holder}): wait for it to end or choose another --output-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def write_json(path: Path, data) -> None:
    write_atomically(path, json.dumps(json_safe(data), indent=2, default=str))


DIVERGED = re.compile(r"Loss became infinite or NaN at iteration=(\d+)")
# numpy 2 prints the loss dict's values as np.float64(nan)
BAD_TERM = re.compile(r"'(\w+)': (?:np\.float(?:32|64)\()?(nan|inf|-inf)")
BAD_WEIGHTS = re.compile(r"weights became non-finite at iteration (\d+): (\d+ of \d+)")


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


def worker(cfg: CfgNode, options: TrainOptions, fitted: list = ()) -> None:
    """One training process (rank): set up logging and seeds, train, evaluate, record the summary.
    `fitted`: the config keys fitted to the data, as (key, preset value, fitted value, reason) rows."""
    from detectron2.utils.env import seed_all_rng

    from .data.sources import register_from_options

    rank = comm.get_rank()
    quiet_third_party_notices()
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="detectron2", abbrev_name="d2")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="maskinit")
    if options.progress or (options.progress is None and os.isatty(1)):
        # the progress bar replaces Detectron2's periodic console lines; the log file keeps them
        for name in ("detectron2", "maskinit", "fvcore"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    handler.setLevel(logging.WARNING)
    for name in ("detectron2", "maskinit"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.addFilter(no_console_traceback)
    estimate = estimate_memory(cfg, comm.get_local_size())
    (logger.warning if estimate.tight else logger.info)("memory: %s", estimate.describe())
    for key, old, new, reason in fitted:
        logger.info("fitted to the data: %s = %s (was %s): %s", key, new, old, reason)
    register_from_options(options.data, cfg)
    for note in options.data_notes:
        logger.warning("data: %s", note)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if cfg.MODEL.DEVICE.startswith("cuda"):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    summary_path = Path(cfg.OUTPUT_DIR) / SUMMARY_FILE
    trainer = Trainer(cfg, progress_bar=options.progress)
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
            logger.info("from scratch: resumed own checkpoint at iteration %d; no pretrained tensor loaded", trainer.start_iter)
        else:
            logger.info("from scratch: no tensor loaded from any checkpoint (weights fingerprint unchanged)")
    started = time.perf_counter()
    status = {"status": "running"}
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
        status = {"status": "interrupted", "signal": stop.signal_name, "iteration": stop.iteration,
                  "checkpoint": checkpoint, "during": stop.during}
    except KeyboardInterrupt as interrupt:  # a second signal: stopped mid-iteration, nothing new saved
        status = {"status": "interrupted", "signal": signal_name(interrupt), "iteration": trainer.iter, "checkpoint": None,
                  "during": "training", "previous_checkpoint": last_checkpoint(cfg.OUTPUT_DIR)}
    except MaskinitError as error:
        status = {"status": "failed", "error": str(error)}
    except OSError as error:  # e.g. a full disk under Detectron2's metric writers
        status = {"status": "failed", "error": f"training stopped at iteration {trainer.iter}: cannot write to "
                  f"{cfg.OUTPUT_DIR} ({write_failure(error, Path(cfg.OUTPUT_DIR))})"}
    except Exception as error:  # a bug, not the user's input: one line here, the traceback in log.txt
        logger.error("training failed", exc_info=True)
        status = {"status": "failed", "error": f"training failed at iteration {trainer.iter}: {type(error).__name__}: "
                  f"{one_line(error)[:300]} (traceback in {Path(cfg.OUTPUT_DIR) / 'log.txt'})"}
    finally:
        restore()
        if comm.is_main_process():
            # Detectron2 leaves `iter` at max_iter after a finished run, at the failing one otherwise.
            elapsed = time.perf_counter() - started
            storage = getattr(trainer, "storage", None)
            step_time = storage.history("time").global_avg() if storage and "time" in storage.histories() else None
            summary = {
                **status,
                "iterations": trainer.iter,
                "max_iter": cfg.SOLVER.MAX_ITER,
                "seconds": round(elapsed, 2),
                "seconds_per_iter": round(step_time, 4) if step_time else None,
                "from_scratch": audit,
                "world_size": comm.get_world_size(),
                "data_dropped": options.data_notes,
                "warnings": trainer.loss_watch.warnings(),
                "fitted_to_data": [{"key": k, "preset": o, "fitted": n, "from": r} for k, o, n, r in fitted],
                "output_dir": cfg.OUTPUT_DIR,
            }
            results = getattr(trainer, "_last_eval_results", None)
            if status["status"] == "finished" and results:
                write_json(Path(cfg.OUTPUT_DIR) / EVAL_FILE, results)
                summary["eval"] = {task: {k: v for k, v in metrics.items() if "-" not in k} for task, metrics in results.items()}
            write_json(summary_path, summary)
    if comm.is_main_process() and status["status"] == "finished":
        from .curves import plot_curves

        plot_curves(Path(cfg.OUTPUT_DIR))
    comm.synchronize()  # under torchrun every rank then reads the summary rank 0 wrote


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


def resume_command(options: TrainOptions) -> str:
    """The exact command that continues this run."""
    out = options.output_dir
    parts = ["maskinit", "train", "--config", f"{out}/{CONFIG_FILE}", "--output-dir", str(out), "--resume"]
    data = options.data
    for flag, value in (("--train-json", data.train_json), ("--train-images", data.train_images),
                        ("--val-json", data.val_json), ("--val-images", data.val_images),
                        ("--dataset", data.dataset), ("--val-dataset", data.val_dataset)):
        if value and not data.is_default:
            parts += [flag, str(value)]
    if options.num_gpus > 1 or options.num_machines > 1:
        parts += ["--num-gpus", str(options.num_gpus), "--num-machines", str(options.num_machines),
                  "--machine-rank", str(options.machine_rank), "--dist-url", options.dist_url]
    return " ".join(shlex.quote(part) for part in parts)


def eval_command(options: TrainOptions) -> str:
    """The command that evaluates this run's final model."""
    out = options.output_dir
    parts = ["maskinit", "eval", "--config", f"{out}/{CONFIG_FILE}", "--weights", f"{out}/model_final.pth"]
    data = options.data
    if not data.is_default:
        for flag, value in (("--val-json", data.val_json), ("--val-images", data.val_images), ("--dataset", data.val_dataset)):
            if value:
                parts += [flag, str(value)]
    return " ".join(shlex.quote(part) for part in parts)


def quiet_third_party_notices() -> None:
    """torch.fx warns on every Detectron2 forward that checks `is_fx_tracing`; it is noise here."""
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def torchrun_env() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def run_under_torchrun(cfg: CfgNode, options: TrainOptions, fitted: list = ()) -> None:
    """torchrun started the processes: join its process group and run this rank."""
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    comm.synchronize()
    worker(cfg, options, fitted)


def train(cfg: CfgNode, options: TrainOptions | None = None, explicit_keys: set[str] = frozenset()) -> dict:
    """Train from scratch and evaluate; returns the run summary (also in `run_summary.json`).

    Every way it ends other than a finished run is a `MaskinitError` saying why in one line,
    SIGINT and SIGTERM included, whenever they arrive.
    """
    options = options or TrainOptions()
    restore = install_signal_handlers(raise_interrupted)
    try:
        return _train(cfg, options, explicit_keys)
    except KeyboardInterrupt as interrupt:  # outside the training loop, which stops on signals by itself
        summary = read_summary(Path(options.output_dir))
        when = ("after training ended: the outputs in " + str(options.output_dir) + " are what it wrote"
                if summary.get("status") not in (None, "running") else "before training started: nothing was trained or saved")
        raise MaskinitError(f"interrupted by {signal_name(interrupt)} {when}") from None
    finally:
        restore()


def raise_interrupted(signum, frame):
    """SIGTERM (and SIGINT) as `KeyboardInterrupt`, named: outside training loops, a signal stops at once."""
    raise Interrupted(signal.Signals(signum).name)


def _train(cfg: CfgNode, options: TrainOptions, explicit_keys) -> dict:
    from .data.sources import resolve_data, validate_data

    if options.resume and options.overwrite:
        raise MaskinitError("--resume and --overwrite contradict each other: choose one")
    cfg = apply_run_options(cfg, options, explicit_keys)
    options.data_notes = validate_data(options.data, options.skip_bad)
    stated_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    fitted = []
    if not options.resume:  # a resumed run keeps the config it was fitted with
        preset_cfg = cfg
        cfg, fits = fit_to_data(cfg, options.data, keep=explicit_keys)
        fitted = fit_rows(preset_cfg, fits)
        check_config(cfg)
    cfg = resolve_data(cfg, options.data)
    if "MODEL.ROI_HEADS.NUM_CLASSES" in explicit_keys and stated_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise MaskinitError(
            f"MODEL.ROI_HEADS.NUM_CLASSES {stated_classes} was given, but the training data has "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES} categories: drop the override (the number of classes follows the data)"
        )
    if cfg.MASKINIT.MEMORY_CHECK:
        check_memory(cfg, processes_here=options.num_gpus)
    out = prepare_output_dir(options)
    check_output_dir(out, options, cfg.SOLVER.MAX_ITER)  # a refused run leaves the dir as it was
    with output_dir_lock(out):
        check_output_dir(out, options, cfg.SOLVER.MAX_ITER)  # again: a run that held the lock may have ended
        remove_stale_files(out)
        config_path = out / CONFIG_FILE
        if options.resume and config_path.is_file():
            check_resume_config(config_path, cfg)
        if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every rank runs train(); one writes
            (out / SUMMARY_FILE).unlink(missing_ok=True)
            write_atomically(config_path, dump_yaml(cfg))
        cfg.freeze()
        launch_workers(cfg, options, out, fitted)
    return outcome(read_summary(out), options, out)


def launch_workers(cfg: CfgNode, options: TrainOptions, out: Path, fitted: list = ()) -> None:
    """Run `worker` in this process, under torchrun, or in `--num-gpus` x `--num-machines` processes."""
    if torchrun_env():
        run_under_torchrun(cfg, options, fitted)
        return
    world = options.num_gpus * options.num_machines
    dist_url = options.dist_url
    if world > 1 and dist_url == "auto" and options.num_machines > 1:
        raise MaskinitError("--dist-url tcp://HOST:PORT is required with several machines")
    # with several processes, the children handle SIGINT/SIGTERM; the parent waits for them
    restore = install_signal_handlers(signal.SIG_IGN) if world > 1 else (lambda: None)
    try:
        launch(worker, options.num_gpus, options.num_machines, options.machine_rank, dist_url, args=(cfg, options, list(fitted)))
    except MaskinitError:
        raise
    except Exception as error:  # a child process failed: its status file says why when it can
        summary = read_summary(out)
        if summary.get("status") in (None, "running", "finished"):
            raise MaskinitError(f"training failed: {type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}") from error
    finally:
        restore()


def outcome(summary: dict, options: TrainOptions, out: Path) -> dict:
    """The summary of a finished run; a `MaskinitError` saying why for any other ending."""
    status = summary.get("status")
    if status == "interrupted":
        raise MaskinitError(interruption_message(summary, options))
    if status == "failed":
        raise MaskinitError(summary["error"])
    if status == "diverged":
        kept = (f"last finite checkpoint kept: {summary['checkpoint']}" if summary.get("checkpoint")
                else "no checkpoint had been saved yet")
        raise MaskinitError(
            f"training diverged at iteration {summary.get('iteration')}: non-finite {', '.join(summary['terms'])}; "
            f"{kept}; try a lower --lr, a longer --warmup-iters, --clip-grad 1.0, or a GN/SyncBN norm"
        )
    if status != "finished":
        raise MaskinitError(f"training did not finish (see {out / 'log.txt'})")
    return summary


def interruption_message(summary: dict, options: TrainOptions) -> str:
    """What an interrupt left: a checkpoint and the command that resumes from it, or nothing to resume."""
    name, iteration, saved = summary.get("signal"), summary.get("iteration"), summary.get("checkpoint")
    if summary.get("during") == "evaluation" and saved == "model_final.pth":
        return (f"interrupted by {name} during the final evaluation: training finished and model_final.pth is saved; "
                f"evaluate it with: {eval_command(options)}")
    where = "during the evaluation" if summary.get("during") == "evaluation" else "at iteration"
    if saved:
        return f"interrupted by {name} {where} {iteration}: checkpoint {saved} saved; resume with: {resume_command(options)}"
    previous = summary.get("previous_checkpoint")
    if previous:
        return (f"interrupted by {name} at iteration {iteration} (a second signal: nothing saved now); the last checkpoint "
                f"is {previous}; resume from it with: {resume_command(options)}")
    return f"interrupted by {name} at iteration {iteration}, before any checkpoint: nothing to resume; run the same command to start again"


def read_summary(out: Path) -> dict:
    path = out / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def check_resume_config(path: Path, cfg: CfgNode) -> None:
    """A resumed run must build the same model it saved."""
    from .config import load_config

    saved = load_config(path)
    keys = ("MODEL.RESNETS.DEPTH", "MODEL.ROI_HEADS.NUM_CLASSES", "MASKINIT.NORM", "MODEL.FPN.OUT_CHANNELS",
            "MODEL.ROI_BOX_HEAD.NUM_CONV", "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_MASK_HEAD.CONV_DIM",
            "MASKINIT.CLASS_NAMES")
    for key in keys:
        old, new = saved, cfg
        for part in key.split("."):
            old, new = old[part], new[part]
        if isinstance(old, (list, tuple)):
            if not old:  # a run saved before the key existed
                continue
            old, new = list(old), list(new)
        if old != new:
            raise MaskinitError(f"--resume: {key} is {new} now but {old} in the saved run ({path}); use a new --output-dir")
