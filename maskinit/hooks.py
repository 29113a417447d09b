"""Training hooks maskinit adds to Detectron2's: progress display and LR reduction on plateau."""

from __future__ import annotations

import logging
import math
import sys
import time

from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger("maskinit")


class ProgressHook(HookBase):
    """A rich progress bar (ETA, iteration, loss, LR, it/s) on a terminal; plain lines otherwise."""

    def __init__(self, max_iter: int, period: int = 20, use_bar: bool | None = None):
        self.max_iter = max_iter
        self.period = period
        self.use_bar = sys.stdout.isatty() if use_bar is None else use_bar
        self._progress = None
        self._task = None
        self._start = None
        self._start_iter = 0

    def before_train(self):
        self._start = time.perf_counter()
        self._start_iter = self.trainer.start_iter
        if self.use_bar and comm.is_main_process():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.max_iter, completed=self.trainer.start_iter, status="")

    def _status(self) -> str:
        storage = self.trainer.storage
        done = self.trainer.iter + 1 - self._start_iter
        speed = done / max(time.perf_counter() - self._start, 1e-9)
        parts = [f"iter {self.trainer.iter + 1}/{self.max_iter}"]
        if "total_loss" in storage.histories():
            parts.append(f"loss {storage.history('total_loss').median(20):.3f}")
        if "lr" in storage.histories():
            parts.append(f"lr {storage.history('lr').latest():.2e}")
        parts.append(f"{speed:.2f} it/s")
        return "  ".join(parts)

    def after_step(self):
        if not comm.is_main_process():
            return
        next_iter = self.trainer.iter + 1
        if self._progress is not None:
            self._progress.update(self._task, completed=next_iter, status=self._status())
        elif next_iter % self.period == 0 or next_iter == self.max_iter:
            logger.info(self._status())

    def after_train(self):
        if self._progress is not None:
            self._progress.stop()


class ReduceLROnPlateau(HookBase):
    """Divide the LR when a metric stops improving, like Keras' ReduceLROnPlateau.

    The metric is a validation AP (e.g. `segm/AP`, written by the evaluation hook; higher is better)
    or the smoothed training loss `total_loss` (lower is better), checked every `period` iterations.
    The reduction scales the scheduler's base LRs, so warmup still applies and resume restores it.
    """

    def __init__(self, metric: str, period: int, patience: int, factor: float, min_lr: float = 0.0):
        self.metric = metric
        self.period = max(1, period)
        self.patience = patience
        self.factor = factor
        self.min_lr = min_lr
        self.best = None
        self.bad_checks = 0
        self.higher_is_better = metric != "total_loss"

    def state_dict(self):
        return {"best": self.best, "bad_checks": self.bad_checks}

    def load_state_dict(self, state):
        self.best, self.bad_checks = state["best"], state["bad_checks"]

    def _current(self):
        storage = self.trainer.storage
        if self.metric not in storage.histories():
            return None
        history = storage.history(self.metric)
        return history.median(self.period) if self.metric == "total_loss" else history.latest()

    def after_step(self):
        if (self.trainer.iter + 1) % self.period:
            return
        value = self._current()
        if value is None or not math.isfinite(value):
            return
        improved = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if improved:
            self.best, self.bad_checks = value, 0
            return
        self.bad_checks += 1
        if self.bad_checks > self.patience:
            scheduler = self.trainer.scheduler
            scheduler.base_lrs = [max(lr * self.factor, self.min_lr) for lr in scheduler.base_lrs]
            self.bad_checks = 0
            logger.info(
                "plateau on %s (best %.4f): LR reduced by %g at iteration %d",
                self.metric, self.best, self.factor, self.trainer.iter + 1,
            )


class TrainingInterrupted(Exception):
    """Raised by `StopOnSignal` after it saved a checkpoint at the current iteration."""

    def __init__(self, iteration: int, signal_name: str, checkpoint: str | None):
        super().__init__(f"{signal_name} at iteration {iteration}")
        self.iteration = iteration
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class StopOnSignal(HookBase):
    """SIGINT or SIGTERM: finish the current iteration, save a checkpoint, stop.

    The signal handler only sets a flag; the hook acts between iterations, where the model and
    optimizer are consistent. With several processes the flag is gathered every iteration, so all
    ranks stop at the same one. A second signal interrupts at once (KeyboardInterrupt).
    """

    def __init__(self):
        self.requested: int | None = None

    def handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def after_step(self):
        stop = self.requested is not None
        if comm.get_world_size() > 1:
            gathered = [s for s in comm.all_gather(self.requested) if s is not None]
            stop, self.requested = bool(gathered), (gathered[0] if gathered else None)
        if not stop:
            return
        import signal

        name = signal.Signals(self.requested).name
        checkpoint = None
        if comm.is_main_process():
            checkpoint = f"model_{self.trainer.iter:07d}"
            self.trainer.checkpointer.save(checkpoint, iteration=self.trainer.iter)
            checkpoint += ".pth"
        comm.synchronize()
        raise TrainingInterrupted(self.trainer.iter, name, checkpoint)
