"""`train(cfg, options)`: from-scratch Mask R-CNN on Detectron2's own trainer, on any number of processes.

The run is proven from scratch: `MODEL.WEIGHTS` must be empty, every checkpoint file read is
recorded, and when not resuming the model's weights are fingerprinted before and after Detectron2's
`resume_or_load` to show that nothing was loaded. The record goes to the log and `run_summary.json`.
"""

from __future__ import annotations

import hashlib
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
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, launch
from detectron2.solver import build_lr_scheduler, get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .config import ADAPTIVE_OPTIMIZERS, OPTIMIZERS, check_from_scratch, dump_yaml, one_line
from .devices import set_device
from .errors import MaskinitError
from .evaluation import json_safe
from .hooks import ProgressHook, ReduceLROnPlateau, StopOnSignal, TrainingInterrupted
from .model import build_model

logger = logging.getLogger("maskinit")

SUMMARY_FILE = "run_summary.json"
EVAL_FILE = "eval.json"
CONFIG_FILE = "config.yaml"
RUN_MARKERS = (CONFIG_FILE, "last_checkpoint", "model_final.pth", SUMMARY_FILE, "metrics.json")


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


class AuditedCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, recording every file it reads, and writing atomically.

    fvcore writes checkpoints and `last_checkpoint` in place, so a kill or a full disk mid-write
    leaves a torn file that `--resume` cannot load. Here each file is written to a temporary name
    and renamed over the old one: at any moment `last_checkpoint` names a complete checkpoint.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.files_read: list[dict] = []

    def _load_file(self, filename):
        loaded = super()._load_file(filename)
        self.files_read.append({"file": str(filename), "tensors": len(loaded.get("model", {}))})
        return loaded

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = Path(self.save_dir) / basename
        self.logger.info("Saving checkpoint to %s", path)
        self._write_atomically(path, lambda handle: torch.save(data, handle))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        self._write_atomically(Path(self.save_dir) / "last_checkpoint", lambda h: h.write(last_filename_basename.encode()))

    def _write_atomically(self, path: Path, write) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
            tmp.unlink(missing_ok=True)
            previous = (Path(self.save_dir) / "last_checkpoint")
            kept = previous.read_text().strip() if previous.is_file() else "none yet"
            reason = "disk full" if "No space" in str(error) or getattr(error, "errno", None) == 28 else one_line(error)
            raise MaskinitError(
                f"cannot save {path.name} ({reason}); the previous checkpoint ({kept}) is intact: "
                "free space, then --resume"
            ) from None


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        # reshape(-1): 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


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
        """Detectron2's train loader; with `MASKINIT.AUGMENT.NAME lsj`, on the large-scale-jitter mapper."""
        from detectron2.data import build_detection_train_loader

        from .augment import build_train_mapper

        mapper = build_train_mapper(cfg)
        if mapper is None:
            return super().build_train_loader(cfg)
        return build_detection_train_loader(cfg, mapper=mapper)

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
    check_from_scratch(cfg)
    if cfg.MASKINIT.OPTIMIZER not in OPTIMIZERS:
        raise MaskinitError(f"unknown optimizer {cfg.MASKINIT.OPTIMIZER!r} ({', '.join(OPTIMIZERS)})")
    if cfg.MASKINIT.LR_SCHEDULE not in ("step", "cosine", "plateau"):
        raise MaskinitError(f"unknown LR schedule {cfg.MASKINIT.LR_SCHEDULE!r} (step, cosine, plateau)")
    if cfg.MASKINIT.AMP_DTYPE not in ("auto", "bfloat16", "float16"):
        raise MaskinitError(f"unknown MASKINIT.AMP_DTYPE {cfg.MASKINIT.AMP_DTYPE!r} (auto, bfloat16, float16)")
    if cfg.SOLVER.MAX_ITER < 1:
        raise MaskinitError(f"SOLVER.MAX_ITER must be at least 1, got {cfg.SOLVER.MAX_ITER}")
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        raise MaskinitError(f"SOLVER.IMS_PER_BATCH must be at least 1, got {cfg.SOLVER.IMS_PER_BATCH}")
    if cfg.TEST.EVAL_PERIOD < 0:
        raise MaskinitError(f"--eval-period must be >= 0, got {cfg.TEST.EVAL_PERIOD}")
    world = options.num_gpus * options.num_machines
    if options.num_gpus < 1 or options.num_machines < 1:
        raise MaskinitError("--num-gpus and --num-machines must be at least 1")
    if not 0 <= options.machine_rank < options.num_machines:
        raise MaskinitError(f"--machine-rank must be in [0, {options.num_machines}), got {options.machine_rank}")
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise MaskinitError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")


def prepare_output_dir(options: TrainOptions) -> Path:
    """An output dir that holds a run is refused unless resuming or overwriting; files stay untouched."""
    out = Path(options.output_dir)
    if out.exists() and not out.is_dir():
        raise MaskinitError(f"output dir {out} exists and is not a directory")
    has_run = out.is_dir() and any((out / marker).exists() for marker in RUN_MARKERS)
    # under torchrun every rank gets here; rank 0 decides, before the others could see its config.yaml
    first_rank = int(os.environ.get("RANK", 0)) == 0
    if has_run and first_rank and not (options.resume or options.overwrite):
        raise MaskinitError(f"output dir {out} already holds a run: pass --resume to continue it or --overwrite to replace it")
    if options.resume and not (out / "last_checkpoint").is_file():
        raise MaskinitError(f"--resume but {out} has no last_checkpoint to resume from")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".maskinit-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise MaskinitError(f"output dir {out} is not writable: {error.strerror}") from None
    return out


def write_json(path: Path, data) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, default=str))
    os.replace(tmp, path)


DIVERGED = re.compile(r"Loss became infinite or NaN at iteration=(\d+)")
BAD_TERM = re.compile(r"'(\w+)': (nan|inf|-inf)")


def divergence_message(error: FloatingPointError, output_dir: str, iteration: int) -> dict:
    """Where and in which loss terms training diverged, and which checkpoint is left."""
    text = str(error)
    match = DIVERGED.search(text)
    iteration = int(match.group(1)) if match else iteration
    terms = sorted({name for name, _ in BAD_TERM.findall(text) if name != "total_loss"})
    if not terms:  # raised elsewhere (e.g. Detectron2's box inference): quote its first line
        terms = [f"values ({text.strip().splitlines()[0][:120]})"]
    last = Path(output_dir) / "last_checkpoint"
    kept = last.read_text().strip() if last.is_file() else None
    return {"iteration": iteration, "terms": terms, "checkpoint": kept}


def worker(cfg: CfgNode, options: TrainOptions) -> None:
    """One training process (rank): set up logging and seeds, train, evaluate, record the summary."""
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
        status = {"status": "interrupted", "signal": stop.signal_name, "iteration": stop.iteration, "checkpoint": stop.checkpoint}
    except KeyboardInterrupt:
        last = Path(cfg.OUTPUT_DIR) / "last_checkpoint"
        status = {"status": "interrupted", "signal": "SIGINT", "iteration": trainer.iter,
                  "checkpoint": last.read_text().strip() if last.is_file() else None}
    except MaskinitError as error:
        status = {"status": "failed", "error": str(error)}
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


def quiet_third_party_notices() -> None:
    """torch.fx warns on every Detectron2 forward that checks `is_fx_tracing`; it is noise here."""
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def torchrun_env() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def run_under_torchrun(cfg: CfgNode, options: TrainOptions) -> None:
    """torchrun started the processes: join its process group and run this rank."""
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    comm.synchronize()
    worker(cfg, options)


def train(cfg: CfgNode, options: TrainOptions | None = None, explicit_keys: set[str] = frozenset()) -> dict:
    """Train from scratch and evaluate; returns the run summary (also in `run_summary.json`)."""
    from .data.sources import resolve_data, validate_data

    options = options or TrainOptions()
    if options.resume and options.overwrite:
        raise MaskinitError("--resume and --overwrite contradict each other: choose one")
    cfg = apply_run_options(cfg, options, explicit_keys)
    options.data_notes = validate_data(options.data, options.skip_bad)
    cfg = resolve_data(cfg, options.data)
    out = prepare_output_dir(options)
    config_path = out / CONFIG_FILE
    if options.resume and config_path.is_file():
        check_resume_config(config_path, cfg)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every rank runs train(); one writes
        (out / SUMMARY_FILE).unlink(missing_ok=True)
        config_path.write_text(dump_yaml(cfg))
    cfg.freeze()
    if torchrun_env():
        run_under_torchrun(cfg, options)
    else:
        world = options.num_gpus * options.num_machines
        dist_url = options.dist_url
        if world > 1 and dist_url == "auto" and options.num_machines > 1:
            raise MaskinitError("--dist-url tcp://HOST:PORT is required with several machines")
        # with several processes, the children handle SIGINT/SIGTERM; the parent waits for them
        restore = install_signal_handlers(signal.SIG_IGN) if world > 1 else (lambda: None)
        try:
            launch(worker, options.num_gpus, options.num_machines, options.machine_rank, dist_url, args=(cfg, options))
        except MaskinitError:
            raise
        except Exception as error:  # a child process failed: its status file says why when it can
            summary = read_summary(out)
            if summary.get("status") in (None, "running", "finished"):
                raise MaskinitError(f"training failed: {type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}") from error
        finally:
            restore()
    summary = read_summary(out)
    if summary.get("status") == "interrupted":
        saved = f"checkpoint {summary['checkpoint']} saved" if summary.get("checkpoint") else "no checkpoint saved"
        raise MaskinitError(
            f"interrupted by {summary.get('signal')} at iteration {summary.get('iteration')}: {saved}; "
            f"resume with: {resume_command(options)}"
        )
    if summary.get("status") == "failed":
        raise MaskinitError(summary["error"])
    if summary.get("status") == "diverged":
        kept = f"last good checkpoint kept: {summary['checkpoint']}" if summary.get("checkpoint") else "no checkpoint had been saved yet"
        raise MaskinitError(
            f"training diverged at iteration {summary.get('iteration')}: non-finite {', '.join(summary['terms'])}; "
            f"{kept}; try a lower --lr, a longer --warmup-iters, --clip-grad 1.0, or a GN/SyncBN norm"
        )
    if summary.get("status") != "finished":
        raise MaskinitError(f"training did not finish (see {out / 'log.txt'})")
    return summary


def read_summary(out: Path) -> dict:
    path = out / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def check_resume_config(path: Path, cfg: CfgNode) -> None:
    """A resumed run must build the same model it saved."""
    from .config import load_config

    saved = load_config(path)
    keys = ("MODEL.RESNETS.DEPTH", "MODEL.ROI_HEADS.NUM_CLASSES", "MASKINIT.NORM", "MODEL.FPN.OUT_CHANNELS",
            "MODEL.ROI_BOX_HEAD.NUM_CONV", "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_MASK_HEAD.CONV_DIM")
    for key in keys:
        old, new = saved, cfg
        for part in key.split("."):
            old, new = old[part], new[part]
        if old != new:
            raise MaskinitError(f"--resume: {key} is {new} now but {old} in the saved run ({path}); use a new --output-dir")
