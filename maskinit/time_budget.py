"""`--time` as the run goes: the run's length re-planned from its own steps, so that its training takes
the time given (`budget.run_length` plans it before the run from steps timed from scratch; a run's steps
get slower as it learns, so that plan alone overshoots).

`TimeBudget` is what the run carries (the seconds given, the schedule keys the user set);
`replanned_iterations` and `replanned_config` are the arithmetic; `TimeBudgetHook` applies them to a
Detectron2 trainer every REPLAN_SHARE of the planned iterations.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from detectron2.engine import HookBase
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils import comm

from .hooks import EVALUATION

logger = logging.getLogger("maskinit")

# The run is re-planned (TimeBudgetHook): every REPLAN_SHARE of the iterations planned
# before the run, from the steps timed since the previous re-plan; the run can grow to at most
# MAX_GROWTH times the plan (the training loop's end is set when it starts).
REPLAN_SHARE = 0.05
MAX_GROWTH = 2.0


@dataclass(frozen=True)
class TimeBudget:
    """`--time` as the run carries it: the training time given (seconds, evaluations apart) and which
    schedule keys the user set (kept as set when the run's length changes, as `--max-iter` keeps them)."""

    seconds: float
    keep_steps: bool = False
    keep_warmup: bool = False
    keep_ema: bool = False

    @classmethod
    def of(cls, seconds: float | None, explicit_keys=frozenset()) -> TimeBudget | None:
        from .run_options import kept_schedule

        return None if seconds is None else cls(float(seconds), **kept_schedule(explicit_keys))


def replanned_iterations(budget: float, done: int, spent: float, seconds_per_iter: float, bound: int) -> int:
    """The run's new length: the `done` iterations, plus as many as the time left (`budget` - `spent`)
    holds at `seconds_per_iter`; at most `bound`, never fewer than `done` (time up: it ends now)."""
    left = budget - spent
    more = int(left / seconds_per_iter) if left > 0 and seconds_per_iter > 0 else 0
    return max(done, min(bound, done + more))


def replanned_config(planned, current, budget: TimeBudget, max_iter: int, done: int):
    """The run's config for `max_iter` iterations of which `done` are done: `planned` (the config the run
    started with) with its schedule rescaled as `--max-iter` rescales it, except what the run has passed
    under its `current` config: an LR step at or before `done` and a warmup that has ended stay where they
    were (the LR never goes back up). Neither config is changed."""
    from .run_options import rescale_to_max_iter

    result = planned.clone()
    result.defrost()
    rescale_to_max_iter(result, max_iter, budget.keep_steps, budget.keep_warmup, budget.keep_ema)
    steps = [int(step) for step in sorted(current.SOLVER.STEPS) if step <= done]  # passed: they stay
    for step in sorted(result.SOLVER.STEPS)[len(steps):]:  # the others, each at its new place, still ahead
        step = max(int(step), done, steps[-1] + 1 if steps else 0)
        if step < max_iter:
            steps.append(step)
    result.SOLVER.STEPS = tuple(steps)
    if current.SOLVER.WARMUP_ITERS <= done:
        result.SOLVER.WARMUP_ITERS = current.SOLVER.WARMUP_ITERS
    return result


class BudgetSpent(BaseException):
    """Raised by `TimeBudgetHook` after the last iteration of a re-planned run, which ends before the
    training loop's own end; `Trainer.train` takes it as the loop's normal end."""


class TimeBudgetHook(HookBase):
    """`--time`: re-plan the run's length as it goes, so that its training takes the time given.

    The run starts with the iterations `budget.run_length` planned from steps timed before it (from
    scratch, and a run's steps get slower as it learns). Every `period` iterations this hook takes the
    training time spent (wall-clock since the loop started, evaluations apart) and the seconds per
    iteration since its previous re-plan, and sets the run's length to what the time left holds at that
    speed (`replanned_iterations`), within the training loop's end (`bound`). Everything that
    reads the length follows: the trainer's `max_iter`, the LR scheduler (rebuilt from the schedule
    rescaled to the new length, `replanned_config`, at the current iteration, keeping the base
    LRs), the checkpointer's last iteration, the metric printer's ETA, the weight average's window, and
    `config.yaml` (so that `--resume` goes on with the schedule the run followed). With several
    processes, rank 0's length is taken by all.

    It sits right after Detectron2's `LRScheduler` hook, before the checkpointer and the evaluation, so
    that both see a new last iteration in the same step; `ender` goes last and ends the loop after that
    iteration (`BudgetSpent`). See `internals.time_budget_replan`.
    """

    def __init__(self, budget, planned_cfg, period: int, bound: int, config_file=None):
        self.budget = budget
        self.planned_cfg = planned_cfg
        self.period = max(1, period)
        self.bound = bound
        self.config_file = config_file
        self.replans: list[tuple[int, int]] = []  # (iterations done, new length) of each re-plan that moved it
        self.spent = 0.0
        self.ender = _EndAtMaxIter()

    def before_train(self):
        self.trainer.max_iter = self.planned_cfg.SOLVER.MAX_ITER  # the loop runs to `bound`
        self._started = self._mark = time.perf_counter()
        self._eval_start = self._eval_mark = EVALUATION.seconds
        self._mark_iter = self.trainer.start_iter

    def _training_seconds(self, now: float) -> float:
        return (now - self._started) - (EVALUATION.seconds - self._eval_start)

    def after_step(self):
        done = self.trainer.iter + 1
        now = time.perf_counter()
        self.spent = self._training_seconds(now)
        if (done - self.trainer.start_iter) % self.period or done >= self.trainer.max_iter:
            return
        step_seconds = ((now - self._mark) - (EVALUATION.seconds - self._eval_mark)) / (done - self._mark_iter)
        self._mark, self._eval_mark, self._mark_iter = now, EVALUATION.seconds, done
        length = replanned_iterations(self.budget.seconds, done, self.spent, step_seconds, self.bound)
        if comm.get_world_size() > 1:
            length = comm.all_gather(length)[0]
        if length != self.trainer.max_iter:
            self.apply(length, done)

    def apply(self, length: int, done: int) -> None:
        """Make `length` the run's number of iterations, `done` of them done."""
        from detectron2.engine.hooks import PeriodicCheckpointer
        from detectron2.utils.events import CommonMetricPrinter

        trainer = self.trainer
        cfg = replanned_config(self.planned_cfg, trainer.cfg, self.budget, length, done)
        old = trainer.scheduler
        scheduler = trainer.build_lr_scheduler(cfg, trainer.optimizer)
        scheduler.base_lrs = list(old.base_lrs)  # a plateau reduction stays
        scheduler.last_epoch = done - 1
        scheduler.step()  # the LR of the next iteration, on the new schedule
        trainer.scheduler = scheduler
        trainer.max_iter = length
        for hook in trainer._hooks:
            if isinstance(hook, PeriodicCheckpointer):
                hook.max_iter = length
            if isinstance(hook, PeriodicWriter):
                for writer in hook._writers:
                    if isinstance(writer, CommonMetricPrinter):
                        writer._max_iter = length
        if getattr(trainer, "ema", None) is not None:
            trainer.ema.reschedule(cfg)
        cfg.freeze()
        trainer.cfg = cfg
        self.replans.append((done, length))
        logger.info("--time: %d iterations in %.0f s; re-planned to %d iterations", done, self.spent, length)
        if self.config_file is not None and comm.is_main_process():
            from .atomic import write_atomically
            from .config import dump_yaml

            write_atomically(self.config_file, dump_yaml(cfg))

    def summary(self) -> dict:
        return {"seconds": self.budget.seconds, "trained_seconds": round(self.spent, 2),
                "planned_iter": int(self.planned_cfg.SOLVER.MAX_ITER), "replans": [list(r) for r in self.replans]}


class _EndAtMaxIter(HookBase):
    """`TimeBudgetHook`'s last hook: after the run's last iteration (every other hook has seen it), end
    the loop, which would otherwise run on to its own end."""

    def after_step(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            raise BudgetSpent(f"{self.trainer.max_iter} iterations")
