"""Training hooks maskinit adds to Detectron2's: progress display and LR reduction on plateau."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time

import torch
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
            self._task = self._progress.add_task(
                "train", total=self.trainer.max_iter, completed=self.trainer.start_iter, status=""
            )

    def _status(self) -> str:
        storage = self.trainer.storage
        done = self.trainer.iter + 1 - self._start_iter
        speed = done / max(time.perf_counter() - self._start, 1e-9)
        parts = [f"iter {self.trainer.iter + 1}/{self.trainer.max_iter}"]
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
        if self._progress is not None:  # the length may change on the way (--time)
            self._progress.update(self._task, completed=next_iter, total=self.trainer.max_iter, status=self._status())
        elif next_iter % self.period == 0 or next_iter == self.trainer.max_iter:
            logger.info(self._status())

    def after_train(self):
        if self._progress is not None:
            self._progress.stop()


class _LearningRates(torch.optim.Optimizer):
    """Param groups holding learning rates only (no parameters, never stepped): the optimizer torch's
    `ReduceLROnPlateau` reads and lowers, standing in for a Detectron2 scheduler's base LRs."""

    def __init__(self):
        super().__init__([torch.zeros(0)], {"lr": 0.0})

    def hold(self, lrs) -> None:
        self.param_groups = [{"params": [], "lr": float(lr)} for lr in lrs]


class ReduceLROnPlateau(HookBase):
    """Divide the LR when a metric stops improving: torch's `ReduceLROnPlateau` decides, Detectron2's LR
    scheduler applies.

    The metric is a validation AP (e.g. `segm/AP`, written by the evaluation hook; higher is better)
    or the smoothed training loss `total_loss` (lower is better), checked every `period` iterations.
    Each check is one step of torch's scheduler: a value better than the best by more than `threshold`
    (relative) is an improvement; after more than `patience` checks without one the LR is multiplied by
    `factor`, never below `min_lr`, and the next `cooldown` checks do not count.

    Why torch's scheduler does not act on the optimizer itself: it lowers the LR in the optimizer's param
    groups, and Detectron2's `LRScheduler` hook sets those again every iteration from its own scheduler
    (base LR times the warmup and schedule multiplier), so the next iteration would undo the reduction.
    Here torch's scheduler steps on a stand-in optimizer whose param groups hold the Detectron2
    scheduler's base LRs, and what it lowers goes back into `base_lrs`: warmup still applies, and resume
    restores the reduction (Detectron2's scheduler saves its base LRs; this hook saves torch's counters).
    """

    def __init__(self, metric: str, period: int, patience: int, factor: float, min_lr: float = 0.0,
                 threshold: float = 1e-4, cooldown: int = 0):
        self.metric = metric
        self.period = max(1, period)
        self.factor = factor
        self.higher_is_better = metric != "total_loss"
        self._lrs = _LearningRates()
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self._lrs, mode="max" if self.higher_is_better else "min", factor=factor, patience=patience,
            threshold=threshold, threshold_mode="rel", cooldown=cooldown, min_lr=min_lr,
        )

    @property
    def best(self) -> float | None:
        """The best value seen (None before the first check)."""
        best = self._plateau.best
        return best if math.isfinite(best) else None

    @property
    def bad_checks(self) -> int:
        """Checks without improvement since the best value or the last reduction."""
        return self._plateau.num_bad_epochs

    def state_dict(self):
        return {"best": self.best, "bad_checks": self.bad_checks, "cooldown_left": self._plateau.cooldown_counter}

    def load_state_dict(self, state):
        best = self._plateau.mode_worse if state["best"] is None else state["best"]
        self._plateau.load_state_dict({"best": best, "num_bad_epochs": state["bad_checks"],
                                       "cooldown_counter": state.get("cooldown_left", 0)})

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
        scheduler = self.trainer.scheduler
        self._lrs.hold(scheduler.base_lrs)
        self._plateau.step(value)
        lowered = [group["lr"] for group in self._lrs.param_groups]
        if lowered != [float(lr) for lr in scheduler.base_lrs]:
            scheduler.base_lrs = lowered
            logger.info(
                "plateau on %s (best %.4f): LR reduced by %g at iteration %d",
                self.metric, self.best, self.factor, self.trainer.iter + 1,
            )


class _Evaluation:
    """Whether this process is evaluating now (set by `evaluation_running`, read by `StopOnSignal`), and
    the seconds its evaluations took in all (read by `TimeBudgetHook`: a time budget counts training only)."""

    running = False
    seconds = 0.0


EVALUATION = _Evaluation()


@contextlib.contextmanager
def evaluation_running():
    """Mark an evaluation, which a signal may stop at once: it changes no training state."""
    EVALUATION.running = True
    started = time.perf_counter()
    try:
        yield
    finally:
        EVALUATION.running = False
        EVALUATION.seconds += time.perf_counter() - started


class StopRequested(BaseException):
    """Raised by a hook to end training early on purpose (a pruned tuning trial, say): the run
    ends with status "stopped" and this reason. A `BaseException` for the same reason as
    `TrainingInterrupted`: it is no error, and Detectron2's loop must not log it as one."""


class TrainingInterrupted(BaseException):
    """Raised by `StopOnSignal` when a signal stops training, after it saved what it could.

    A `BaseException`, like `KeyboardInterrupt`: Detectron2's train loop logs every `Exception`
    with its traceback before re-raising it, and an interrupt asked for by the user is no error.
    `checkpoint` is the file saved for this stop (None when none could be), `during` says what
    was running ("training" or "evaluation").
    """

    def __init__(self, iteration: int, signal_name: str, checkpoint: str | None, during: str = "training"):
        super().__init__(f"{signal_name} at iteration {iteration}")
        self.iteration = iteration
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.during = during


class StopOnSignal(HookBase):
    """SIGINT or SIGTERM: finish the current iteration, save a checkpoint, stop.

    The signal handler only sets a flag; the hook acts between iterations, where the model and
    optimizer are consistent. With several processes the flag is gathered every iteration, so all
    ranks stop at the same one. Further signals while that checkpoint is being written are ignored
    (a torn write would cost the run); a second signal at any other moment stops at once, saving
    nothing. During an evaluation (periodic or final) the first signal stops it at once: the step
    before it is complete, so its checkpoint is saved (the final one is already on disk).
    """

    def __init__(self, repeat_window: float = 0.0):
        self.requested: int | None = None
        self.saving = False
        # with several processes one signal can arrive twice: a terminal's Ctrl-C or a scheduler's SIGTERM
        # reaches both a launcher and its processes, and the launcher forwards it; the same signal again
        # within `repeat_window` seconds of the first counts once
        self.repeat_window = repeat_window
        self._first_at = 0.0

    def handle(self, signum, frame):
        if self.saving:
            return
        first = self.requested is None
        if not first and signum == self.requested and time.monotonic() - self._first_at < self.repeat_window:
            return
        if first:
            self._first_at = time.monotonic()
        self.requested = signum if first else self.requested
        if EVALUATION.running and first:
            raise TrainingInterrupted(self.trainer.iter, _signal_name(signum), None, during="evaluation")
        if not first:
            raise KeyboardInterrupt

    def save_here(self) -> str | None:
        """Save a checkpoint of the current (completed) iteration on the main process; its file name."""
        checkpoint = None
        if comm.is_main_process():
            checkpoint = f"model_{self.trainer.iter:07d}"
            self.saving = True
            try:
                self.trainer.checkpointer.save(checkpoint, iteration=self.trainer.iter)
            finally:
                self.saving = False
            checkpoint += ".pth"
        return checkpoint

    def after_step(self):
        stop = self.requested is not None
        if comm.get_world_size() > 1:
            # a signal handled while this rank waits in the gather (its handler runs as the gather returns) is
            # not in this result: it stays set, and the next step's gather stops every rank
            gathered = [s for s in comm.all_gather(self.requested) if s is not None]
            stop = bool(gathered)
            if stop:
                self.requested = gathered[0]
        if not stop:
            return
        checkpoint = self.save_here()
        comm.synchronize()
        raise TrainingInterrupted(self.trainer.iter, _signal_name(self.requested), checkpoint)


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


class LossWatch(HookBase):
    """Remember the largest training loss: one far above any Mask R-CNN loss (say 1e4) that has not
    yet reached infinity means the run has diverged all the same, and the run summary says so."""

    def __init__(self, limit: float = 1e4):
        self.limit = limit
        self.worst: tuple[int, float] | None = None  # (iteration, total loss) of the largest loss above the limit

    def after_step(self):
        storage = self.trainer.storage
        if "total_loss" not in storage.histories():
            return
        loss = storage.history("total_loss").latest()
        if math.isfinite(loss) and loss > self.limit and (self.worst is None or loss > self.worst[1]):
            self.worst = (self.trainer.iter, loss)

    def warnings(self) -> list[str]:
        if self.worst is None:
            return []
        iteration, loss = self.worst
        return [
            f"the training loss reached {loss:.3g} at iteration {iteration} (Mask R-CNN losses stay below about "
            f"10): the run has probably diverged; try a lower --lr, a longer --warmup-iters or --clip-grad 1.0"
        ]
