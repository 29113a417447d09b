"""`Trainer`: Detectron2's `DefaultTrainer` with maskinit's model, optimizers, schedules, evaluator and
hooks; only what differs is overridden (see `internals.py` for the steps re-stated from upstream)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import weakref
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.engine.hooks import EvalHook, IterationTimer, LRScheduler, PeriodicCheckpointer, PeriodicWriter
from detectron2.solver import build_lr_scheduler, get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm

from .checkpoint import AuditedCheckpointer
from .ema import build_ema_hook
from .hooks import LossWatch, ProgressHook, ReduceLROnPlateau, StopOnSignal, evaluation_running
from .model import build_model
from .time_budget import MAX_GROWTH, REPLAN_SHARE, BudgetSpent, TimeBudgetHook

logger = logging.getLogger("maskinit")


def amp_dtype(cfg: CfgNode) -> torch.dtype:
    choice = cfg.MASKINIT.AMP_DTYPE
    if choice == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[choice]



@contextlib.contextmanager
def untouched_random_streams():
    """Restores torch's (CPU and CUDA), NumPy's and Python's random states on exit."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# The hooks whose `after_train` calls no collective: the ones that still run after a process's own failure.
LOCAL_HOOKS = (IterationTimer, PeriodicWriter, ProgressHook)


class Trainer(DefaultTrainer):
    """DefaultTrainer with maskinit's model, optimizers, schedules, evaluator and hooks."""

    failed_alone = False  # set when this process failed on its own in a run of several (see after_train)

    def __init__(self, cfg, progress_bar: bool | None = None, extra_hooks: Sequence = (), resuming: bool = False,
                 time_budget=None):
        """DefaultTrainer.__init__'s steps, with three changes it has no hook for: DDP without
        device_ids on CPU (gloo), AMP in bf16 where supported, and the audited checkpointer.
        `progress_bar`: None shows it on a terminal only; `extra_hooks` run after maskinit's own;
        `resuming`: a checkpoint replaces the weights at once, so no data-dependent init pass (LSUV);
        `time_budget` (`time_budget.TimeBudget`): the run's length is re-planned as it goes (`TimeBudgetHook`)."""
        TrainerBase.__init__(self)
        self.progress_bar = progress_bar
        self.extra_hooks = list(extra_hooks)
        self.time_budget = time_budget
        self.budget_hook = None
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg, data_dependent=not resuming)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        cuda = cfg.MODEL.DEVICE.startswith("cuda")
        # the GPU the process took when it joined (its local rank among the GPUs CUDA_VISIBLE_DEVICES shows)
        device_ids = [torch.cuda.current_device()] if cuda else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
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
    def build_model(cls, cfg, data_dependent: bool = True):
        model = build_model(cfg, data_dependent=data_dependent)
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
        return maybe_add_gradient_clipping(cfg, optimizer_type)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )

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
        """Detectron2's evaluation, marked as such: a signal during it stops it at once. It leaves the
        random streams as it found them (each test loader draws a seed from torch's), so that a run with
        periodic evaluations trains exactly as the same run without them."""
        with evaluation_running(), untouched_random_streams():
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from .evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    def build_hooks(self):
        hooks = super().build_hooks()
        cfg = self.cfg
        self.ema = build_ema_hook(cfg, self.model)
        if self.ema is not None:
            hooks = self.hooks_with_ema(hooks)
        if cfg.MASKINIT.LR_SCHEDULE == "plateau":
            # after the evaluation hook, so that a fresh AP is in the storage
            hooks.insert(-1 if comm.is_main_process() else len(hooks), plateau_hook(cfg))
        hooks.append(ProgressHook(cfg.SOLVER.MAX_ITER, use_bar=self.progress_bar))
        self.loss_watch = LossWatch()
        hooks.append(self.loss_watch)
        self.stop_on_signal = StopOnSignal()
        hooks.append(self.stop_on_signal)
        hooks += self.extra_hooks
        if self.time_budget is not None:
            hooks = self.hooks_with_time_budget(hooks)
        return hooks

    def hooks_with_time_budget(self, hooks: list) -> list:
        """The hooks with `TimeBudgetHook` right after Detectron2's `LRScheduler` (before the
        checkpointer and the evaluation) and its `ender` last."""
        from .run_dir import CONFIG_FILE

        planned = self.cfg.SOLVER.MAX_ITER
        self.budget_hook = TimeBudgetHook(
            self.time_budget, self.cfg, period=round(planned * REPLAN_SHARE), bound=math.ceil(planned * MAX_GROWTH),
            config_file=os.path.join(self.cfg.OUTPUT_DIR, CONFIG_FILE),
        )
        at = next(i for i, hook in enumerate(hooks) if isinstance(hook, LRScheduler)) + 1
        return [*hooks[:at], self.budget_hook, *hooks[at:], self.budget_hook.ender]

    def train(self):
        """DefaultTrainer.train; under a time budget the loop runs to the longest the run may grow to
        and `TimeBudgetHook` ends it at the run's re-planned length (`BudgetSpent`), as a loop that ran
        to its end: `iter` is then `max_iter`."""
        if self.budget_hook is None:
            return super().train()
        self.max_iter = self.budget_hook.bound  # the hook sets the planned length back before the first step
        try:
            return super().train()
        except BudgetSpent:
            self.iter = self.max_iter
            return None

    def after_train(self):
        """Detectron2's `after_train` (every hook's), except after this process's own failure in a run of
        several processes: then only the hooks that talk to no other process (`LOCAL_HOOKS`) run. The others
        are elsewhere in the step (in a collective of the next one, say); a final evaluation here would wait
        for them in a different collective, and the run would hang instead of ending with its error.
        Detectron2's loop calls `after_train` in a `finally` (see internals.py): the failure is the
        exception it propagates; a `BaseException` (a signal's stop, a time budget's end) is agreed by all."""
        failure = sys.exc_info()[1]
        if comm.get_world_size() == 1 or not isinstance(failure, Exception):
            return super().after_train()
        self.failed_alone = True
        self.storage.iter = self.iter
        for hook in self._hooks:
            if isinstance(hook, LOCAL_HOOKS):
                hook.after_train()
        return None

    def hooks_with_ema(self, hooks: list) -> list:
        """Detectron2's hooks with the weight average (`ema.EMAHook`) updated right after the LR step,
        before the checkpointer and the evaluation see the iteration; evaluations run on the average,
        and `model_final.pth` holds it."""
        def test_and_save_results():  # DefaultTrainer.build_hooks' closure, on the average (see internals.py)
            with self.ema.applied():
                self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        at = next(i for i, hook in enumerate(hooks) if isinstance(hook, (PeriodicCheckpointer, EvalHook)))
        hooks = [EvalHook(self.cfg.TEST.EVAL_PERIOD, test_and_save_results) if isinstance(hook, EvalHook) else hook
                 for hook in hooks]
        hooks.insert(at, self.ema)
        self.checkpointer.final_weights = self.ema.average_state
        return hooks


def plateau_hook(cfg) -> ReduceLROnPlateau:
    """The `ReduceLROnPlateau` hook of `MASKINIT.PLATEAU`; an AP metric is checked at each evaluation."""
    plateau = cfg.MASKINIT.PLATEAU
    period = cfg.TEST.EVAL_PERIOD if plateau.METRIC != "total_loss" and cfg.TEST.EVAL_PERIOD else plateau.PERIOD
    return ReduceLROnPlateau(plateau.METRIC, period, plateau.PATIENCE, plateau.FACTOR, plateau.MIN_LR,
                             threshold=plateau.THRESHOLD, cooldown=plateau.COOLDOWN)
