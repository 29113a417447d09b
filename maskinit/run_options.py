"""The run options of `maskinit train` (what the command line says beyond the config) and the one
place they are applied to the config: `apply_run_options(cfg, options) -> cfg`, so that
`config.yaml` says exactly what ran."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from detectron2.config import CfgNode

from .config import ADAPTIVE_OPTIMIZERS, check_config
from .devices import set_device
from .errors import MaskinitError
from .ranks import under_torchrun

logger = logging.getLogger("maskinit")

# The keys `--ims-per-batch` scales (`config.apply_ims_per_batch`): one given as `KEY VALUE` is kept.
SCALED_WITH_BATCH = frozenset(
    {
        "SOLVER.BASE_LR",
        "SOLVER.MAX_ITER",
        "SOLVER.STEPS",
        "SOLVER.WARMUP_ITERS",
        "SOLVER.CHECKPOINT_PERIOD",
        "TEST.EVAL_PERIOD",
    }
)


@dataclass
class DataOptions:
    """Where the data comes from: COCO files, a name Detectron2 registers, or the embedded default."""

    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    dataset: str | None = None
    val_dataset: str | None = None
    # `--data`: a folder or data.yaml in any format maskinit reads (maskinit/data/formats), converted to
    # COCO files (`data.convert.resolve_source` fills train_json... from it); format: its name (detected
    # when None); val_fraction: the share of its images validated on when it has one split (None: the
    # default, 0: none); split_seed: the seed of that split
    source: str | None = None
    format: str | None = None
    val_fraction: float | None = None
    split_seed: int = 0

    def as_flags(self) -> list[str]:
        """These options on a `maskinit train` command line (the commands maskinit prints)."""
        if self.source:
            flags = ["--data", str(self.source)]
            if self.format:
                flags += ["--format", self.format]
            if self.val_fraction is not None:
                flags += ["--val-fraction", f"{self.val_fraction:g}"]
            if self.split_seed:
                flags += ["--split-seed", str(self.split_seed)]
            return flags
        flags = []
        for flag, value in (
            ("--train-json", self.train_json),
            ("--train-images", self.train_images),
            ("--val-json", self.val_json),
            ("--val-images", self.val_images),
            ("--dataset", self.dataset),
            ("--val-dataset", self.val_dataset),
        ):
            if value:
                flags += [flag, str(value)]
        return flags


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
    # seconds the processes of a run wait for each other (the join, collective calls) before it ends
    dist_timeout: float = 1800.0
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
    # the data fit's mode (MASKINIT.FIT): off, safe or full; None keeps the config's
    fit: str | None = None
    # the run's length as passes over the training images, or as seconds of training on this machine
    epochs: float | None = None
    time_budget: float | None = None
    data: DataOptions = field(default_factory=DataOptions)


def rescale_to_max_iter(
    cfg: CfgNode, max_iter: int, keep_steps: bool, keep_warmup: bool, keep_ema: bool = False
) -> None:
    """A shorter or longer run keeps the shape of its schedules: the LR steps (and warmup) scale with
    it, and so do the weight average's window 1 / (1 - MASKINIT.EMA.DECAY) and its warmup."""
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
    if not keep_ema:
        window = max(2.0, scale / (1.0 - cfg.MASKINIT.EMA.DECAY))  # iterations; at least 2 (decay 0.5)
        cfg.MASKINIT.EMA.DECAY = round(1.0 - 1.0 / window, 8)
        cfg.MASKINIT.EMA.WARMUP_ITERS = int(round(cfg.MASKINIT.EMA.WARMUP_ITERS * scale))


def kept_schedule(explicit_keys) -> dict:
    """`rescale_to_max_iter`'s keep flags for a run whose user set `explicit_keys`: a schedule key the user
    set stays as set when the run's length changes (`--max-iter`, `--epochs`, `--time`)."""
    keys = set(explicit_keys)
    return {"keep_steps": "SOLVER.STEPS" in keys, "keep_warmup": "SOLVER.WARMUP_ITERS" in keys,
            "keep_ema": bool({"MASKINIT.EMA.DECAY", "MASKINIT.EMA.WARMUP_ITERS"} & keys)}


def user_set_keys(options: TrainOptions, explicit_keys) -> set[str]:
    """The config keys the user set: the explicit KEY VALUE overrides and the run options that set a key
    as given (`--warmup-iters`)."""
    return set(explicit_keys) | ({"SOLVER.WARMUP_ITERS"} if options.warmup_iters is not None else set())


def apply_run_options(cfg: CfgNode, options: TrainOptions, explicit_keys: set[str] = frozenset()) -> CfgNode:
    """Write the run options into the config, so that `config.yaml` says exactly what ran."""
    from .cfgkeys import with_keys
    from .config import apply_ims_per_batch, config_value

    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(options.output_dir)
    set_device(cfg, options.device, options.num_gpus)
    if options.ims_per_batch is not None:
        given = {key: config_value(cfg, key) for key in SCALED_WITH_BATCH & set(explicit_keys)}
        apply_ims_per_batch(cfg, options.ims_per_batch)
        cfg = with_keys(cfg, given)  # a value the user set is kept as set
    if options.lr is not None:
        if not 0 < options.lr < 10:
            raise MaskinitError(f"--lr must be in (0, 10), got {options.lr}")
        cfg.SOLVER.BASE_LR = options.lr
    if options.warmup_iters is not None:
        if options.warmup_iters < 0:
            raise MaskinitError(f"--warmup-iters must be >= 0, got {options.warmup_iters}")
        cfg.SOLVER.WARMUP_ITERS = options.warmup_iters
    lengths = [
        flag
        for flag, value in (
            ("--max-iter", options.max_iter),
            ("--epochs", options.epochs),
            ("--time", options.time_budget),
        )
        if value is not None
    ]
    if len(lengths) > 1:
        raise MaskinitError(f"{' and '.join(lengths)} each set the run's length: give one")
    if options.time_budget is not None and (options.resume or options.num_machines > 1 or under_torchrun()):
        raise MaskinitError(
            "--time measures this machine before a new run: with --resume, several machines or torchrun, "
            "use --max-iter or --epochs"
        )
    if options.fit is not None:
        cfg.MASKINIT.FIT = options.fit
        cfg.MASKINIT.FIT_TO_DATA = True
    if options.max_iter is not None:
        rescale_to_max_iter(cfg, options.max_iter, **kept_schedule(user_set_keys(options, explicit_keys)))
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
        logger.warning(
            "LR %g is an SGD value; %s usually wants 1e-4 to 2e-3 (--lr)", cfg.SOLVER.BASE_LR, cfg.MASKINIT.OPTIMIZER
        )
    if not adaptive and cfg.SOLVER.WEIGHT_DECAY > 1e-3:
        logger.warning(
            "weight decay %g is an AdamW value; SGD usually wants 1e-4 (SOLVER.WEIGHT_DECAY)", cfg.SOLVER.WEIGHT_DECAY
        )
    if not adaptive and cfg.SOLVER.BASE_LR <= 1e-3:
        logger.warning("LR %g is an AdamW value; SGD usually wants 0.01 to 0.04 (--lr)", cfg.SOLVER.BASE_LR)


def validate_run_config(cfg: CfgNode, options: TrainOptions) -> None:
    check_config(cfg)  # the same checks as export-config, now with the run options applied
    world = options.num_gpus * options.num_machines
    if options.num_gpus < 1 or options.num_machines < 1:
        raise MaskinitError("--num-gpus and --num-machines must be at least 1")
    if not 0 <= options.machine_rank < options.num_machines:
        raise MaskinitError(f"--machine-rank must be in [0, {options.num_machines}), got {options.machine_rank}")
    if not options.dist_timeout > 0:
        raise MaskinitError(f"--dist-timeout must be a positive number of seconds, got {options.dist_timeout:g}")
    if options.num_machines > 1 and not str(options.dist_url).startswith(("tcp://", "file://")):
        raise MaskinitError(
            f"--dist-url must be tcp://HOST:PORT of machine 0 with several machines, got {options.dist_url!r}"
        )
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise MaskinitError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
