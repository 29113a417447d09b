"""maskinit's training hooks on a stand-in trainer (Detectron2's EventStorage, a real LR scheduler),
and the cosine and plateau LR schedules `Trainer.build_lr_scheduler` builds."""

from __future__ import annotations

import logging
import math
import signal
from types import SimpleNamespace

import pytest
import torch
from detectron2.engine import TrainerBase
from detectron2.utils.events import EventStorage

from maskinit import load_config
from maskinit.hooks import ProgressHook, ReduceLROnPlateau, StopOnSignal, TrainingInterrupted, evaluation_running
from maskinit.trainer import Trainer


@pytest.fixture(scope="module")
def base_cfg():
    cfg = load_config(preset="tiny")
    cfg.defrost()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 0.1, 100, 0
    cfg.SOLVER.STEPS, cfg.SOLVER.GAMMA = (30, 60), 0.1
    cfg.freeze()
    return cfg


def optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def schedule(cfg, name: str, steps: int) -> list[float]:
    """The LR at iterations 0..steps-1 of `MASKINIT.LR_SCHEDULE name`."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MASKINIT.LR_SCHEDULE = name
    opt = optimizer(cfg.SOLVER.BASE_LR)
    scheduler = Trainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def trainer_with(storage, scheduler=None, iteration: int = 0, max_iter: int = 10, **extra):
    return SimpleNamespace(
        storage=storage, scheduler=scheduler, iter=iteration, start_iter=0, max_iter=max_iter, **extra
    )


@pytest.fixture
def maskinit_log():
    """Records of the `maskinit` logger (its own handler: Detectron2's setup_logger stops propagation)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("maskinit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Schedules


def test_step_schedule_drops_at_the_steps(base_cfg):
    lrs = schedule(base_cfg, "step", 70)
    assert lrs[29] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01) and lrs[60] == pytest.approx(0.001)


def test_cosine_schedule_follows_half_a_cosine(base_cfg):
    lrs = schedule(base_cfg, "cosine", 100)
    for iteration in (0, 25, 50, 75, 99):
        expected = 0.1 * 0.5 * (1 + math.cos(math.pi * iteration / 100))
        assert lrs[iteration] == pytest.approx(expected, abs=1e-9), iteration
    assert lrs[30] > 0.05  # no step drop at SOLVER.STEPS


def test_plateau_schedule_is_constant_after_warmup_whatever_the_steps(base_cfg):
    cfg = base_cfg.clone()
    cfg.defrost()
    cfg.SOLVER.WARMUP_ITERS = 10
    lrs = schedule(cfg, "plateau", 90)
    assert lrs[0] < 0.01  # warmup still applies
    assert all(lr == pytest.approx(0.1) for lr in lrs[10:])
    assert tuple(cfg.SOLVER.STEPS) == (30, 60)  # the caller's config is untouched


# ---------------------------------------------------------------------------------------------
# ReduceLROnPlateau


def feed(hook, storage, values, metric="total_loss"):
    """One check per value (period 1): the value enters the storage, then the hook looks."""
    for value in values:
        storage.put_scalar(metric, value, smoothing_hint=False)
        hook.after_step()
        hook.trainer.iter += 1
        storage.step()


def test_plateau_reduces_the_base_lrs_after_patience_bad_checks(base_cfg, maskinit_log):
    cfg = base_cfg.clone()
    cfg.defrost()
    cfg.MASKINIT.LR_SCHEDULE = "plateau"
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.05}])
    scheduler = Trainer.build_lr_scheduler(cfg, opt)
    storage = EventStorage(0)
    hook = ReduceLROnPlateau("total_loss", period=1, patience=2, factor=0.1, min_lr=0.0002)
    hook.trainer = trainer_with(storage, scheduler)
    feed(hook, storage, [1.0, 0.9, 0.95, 0.92])  # best 0.9, then two bad checks: not yet beyond patience
    assert scheduler.base_lrs == pytest.approx([0.1, 0.05]) and hook.bad_checks == 2
    feed(hook, storage, [0.91])  # the third bad check
    assert scheduler.base_lrs == pytest.approx([0.01, 0.005]) and hook.bad_checks == 0
    opt.step()
    scheduler.step()
    assert [group["lr"] for group in opt.param_groups] == pytest.approx([0.01, 0.005])  # the LR follows
    assert any("LR reduced by 0.1 at iteration 5" in r.getMessage() for r in maskinit_log)
    feed(hook, storage, [0.95, 0.95, 0.95])
    assert scheduler.base_lrs == pytest.approx([0.001, 0.0005])
    feed(hook, storage, [0.95, 0.95, 0.95])
    assert scheduler.base_lrs == pytest.approx([0.0002, 0.0002])  # never below min_lr


def test_plateau_on_ap_wants_it_higher_and_ignores_missing_or_non_finite_values():
    storage = EventStorage(0)
    hook = ReduceLROnPlateau("segm/AP", period=1, patience=0, factor=0.5)
    hook.trainer = trainer_with(storage, SimpleNamespace(base_lrs=[0.2]))
    hook.after_step()  # no AP yet: nothing to compare
    assert hook.best is None
    feed(hook, storage, [10.0, 12.0], metric="segm/AP")
    assert hook.best == 12.0 and hook.trainer.scheduler.base_lrs == [0.2]
    feed(hook, storage, [float("nan")], metric="segm/AP")
    assert hook.bad_checks == 0 and hook.trainer.scheduler.base_lrs == [0.2]
    feed(hook, storage, [11.0], metric="segm/AP")  # lower AP is worse
    assert hook.trainer.scheduler.base_lrs == [0.1]


def test_plateau_checks_only_every_period_on_the_median_loss():
    storage = EventStorage(0)
    hook = ReduceLROnPlateau("total_loss", period=3, patience=0, factor=0.5)
    hook.trainer = trainer_with(storage, SimpleNamespace(base_lrs=[1.0]))
    feed(hook, storage, [5.0, 1.0, 2.0])  # checked at the 3rd iteration only: median 2.0
    assert hook.best == 2.0
    feed(hook, storage, [100.0, 2.5, 2.5])  # median 2.5 (the spike does not count): worse
    assert hook.trainer.scheduler.base_lrs == [0.5]


def test_plateau_counts_only_improvements_beyond_the_threshold_and_waits_out_its_cooldown():
    storage = EventStorage(0)
    hook = ReduceLROnPlateau("total_loss", period=1, patience=0, factor=0.5, threshold=0.1, cooldown=2)
    hook.trainer = trainer_with(storage, SimpleNamespace(base_lrs=[1.0]))
    feed(hook, storage, [1.0, 0.95])  # 5% better: within the 10% threshold, no improvement
    assert hook.best == 1.0 and hook.trainer.scheduler.base_lrs == [0.5]
    feed(hook, storage, [0.99, 0.99])  # the two checks of the cooldown do not count
    assert hook.trainer.scheduler.base_lrs == [0.5]
    feed(hook, storage, [0.99])
    assert hook.trainer.scheduler.base_lrs == [0.25]
    feed(hook, storage, [0.85])  # 15% better than the best: an improvement
    assert hook.best == 0.85 and hook.bad_checks == 0


def test_plateau_keys_reach_the_hook(base_cfg):
    """MASKINIT.PLATEAU.* as `Trainer.build_hooks` passes them (the hook's settings are torch's scheduler's)."""
    from maskinit.trainer import plateau_hook

    cfg = base_cfg.clone()
    cfg.defrost()
    cfg.MASKINIT.PLATEAU.METRIC, cfg.TEST.EVAL_PERIOD = "segm/AP", 50
    cfg.MASKINIT.PLATEAU.THRESHOLD, cfg.MASKINIT.PLATEAU.COOLDOWN, cfg.MASKINIT.PLATEAU.MIN_LR = 0.01, 3, 1e-5
    hook = plateau_hook(cfg)
    assert hook.period == 50  # an AP is checked when the evaluation has written it
    settings = hook._plateau
    assert (settings.mode, settings.threshold, settings.cooldown, settings.min_lrs) == ("max", 0.01, 3, [1e-5])
    assert (settings.patience, settings.factor) == (cfg.MASKINIT.PLATEAU.PATIENCE, cfg.MASKINIT.PLATEAU.FACTOR)


def test_plateau_state_survives_a_checkpoint_round_trip():
    storage = EventStorage(0)
    hook = ReduceLROnPlateau("total_loss", period=1, patience=3, factor=0.1)
    hook.trainer = trainer_with(storage, SimpleNamespace(base_lrs=[1.0]))
    feed(hook, storage, [1.0, 2.0, 2.0])
    trainer = TrainerBase()
    trainer.register_hooks([hook])
    saved = trainer.state_dict()
    assert saved["hooks"]["ReduceLROnPlateau"] == {"best": 1.0, "bad_checks": 2, "cooldown_left": 0}

    resumed = ReduceLROnPlateau("total_loss", period=1, patience=3, factor=0.1)
    fresh = TrainerBase()
    fresh.register_hooks([resumed])
    fresh.load_state_dict(saved)
    assert (resumed.best, resumed.bad_checks) == (1.0, 2)
    resumed.trainer = trainer_with(storage, SimpleNamespace(base_lrs=[1.0]), iteration=3)
    feed(resumed, storage, [2.0, 2.0])  # 4 bad checks in all: beyond patience 3
    assert resumed.trainer.scheduler.base_lrs == [pytest.approx(0.1)]


def test_a_huge_finite_loss_is_reported_as_a_warning():
    from types import SimpleNamespace

    from detectron2.utils.events import EventStorage

    from maskinit.hooks import LossWatch

    watch = LossWatch()
    with EventStorage(0) as storage:
        watch.trainer = SimpleNamespace(storage=storage, iter=0)
        for iteration, loss in enumerate([2.0, 3.0, 5e31, 7e12, 1.5]):
            watch.trainer.iter = iteration
            storage.iter = iteration
            storage.put_scalar("total_loss", loss)
            watch.after_step()
    (warning,) = watch.warnings()
    assert "5e+31 at iteration 2" in warning and "diverged" in warning
    assert LossWatch().warnings() == []


# ---------------------------------------------------------------------------------------------
# ProgressHook


def test_progress_without_a_bar_logs_plain_lines_every_period(maskinit_log):
    storage = EventStorage(0)
    hook = ProgressHook(max_iter=5, period=2, use_bar=False)
    hook.trainer = trainer_with(storage, max_iter=5)
    hook.before_train()
    for iteration in range(5):
        hook.trainer.iter = iteration
        storage.put_scalar("total_loss", 2.0 - iteration * 0.25, smoothing_hint=False)
        storage.put_scalar("lr", 0.001, smoothing_hint=False)
        hook.after_step()
        storage.step()
    hook.after_train()
    lines = [r.getMessage() for r in maskinit_log]
    assert [line.split("  ")[0] for line in lines] == ["iter 2/5", "iter 4/5", "iter 5/5"]  # every 2nd, and the last
    assert "loss 1.625" in lines[1]  # the median of the losses so far (2.0, 1.75, 1.5, 1.25), not the latest
    assert "lr 1.00e-03" in lines[1] and lines[1].endswith("it/s")
    assert hook._progress is None  # no bar was started


def test_progress_line_leaves_out_what_the_storage_does_not_have():
    hook = ProgressHook(max_iter=10, use_bar=False)
    hook.trainer = trainer_with(EventStorage(0), iteration=3, max_iter=10)
    hook.before_train()
    status = hook._status()
    assert status.startswith("iter 4/10  ") and "loss" not in status and "lr" not in status


# ---------------------------------------------------------------------------------------------
# StopOnSignal


class Checkpointer:
    def __init__(self):
        self.saved = []

    def save(self, name, **extra):
        self.saved.append((name, extra))


def test_a_signal_stops_after_the_step_with_a_checkpoint():
    hook = StopOnSignal()
    hook.trainer = trainer_with(EventStorage(0), iteration=7, checkpointer=Checkpointer())
    hook.after_step()  # no signal: nothing happens
    assert hook.trainer.checkpointer.saved == []
    hook.handle(signal.SIGTERM, None)  # only a flag: the step in progress completes
    with pytest.raises(TrainingInterrupted) as stop:
        hook.after_step()
    assert hook.trainer.checkpointer.saved == [("model_0000007", {"iteration": 7})]
    assert (stop.value.signal_name, stop.value.iteration, stop.value.checkpoint, stop.value.during) == \
        ("SIGTERM", 7, "model_0000007.pth", "training")
    assert not isinstance(stop.value, Exception)  # passes through Detectron2's `except Exception`


def test_a_second_signal_stops_at_once_but_not_while_saving():
    hook = StopOnSignal()
    hook.trainer = trainer_with(EventStorage(0))
    hook.handle(signal.SIGINT, None)
    hook.saving = True
    hook.handle(signal.SIGINT, None)  # ignored: a torn checkpoint would cost the run
    hook.saving = False
    with pytest.raises(KeyboardInterrupt):
        hook.handle(signal.SIGINT, None)


def test_a_signal_during_an_evaluation_stops_it_at_once():
    hook = StopOnSignal()
    hook.trainer = trainer_with(EventStorage(0), iteration=9)
    with evaluation_running(), pytest.raises(TrainingInterrupted) as stop:
        hook.handle(signal.SIGTERM, None)
    assert (stop.value.during, stop.value.checkpoint, stop.value.iteration) == ("evaluation", None, 9)
    hook = StopOnSignal()
    hook.trainer = trainer_with(EventStorage(0))
    hook.handle(signal.SIGTERM, None)  # outside an evaluation: only the flag
    assert hook.requested == signal.SIGTERM


def test_with_several_processes_one_signal_delivered_twice_counts_once():
    """A terminal's Ctrl-C (or a scheduler's SIGTERM) reaches a launcher and its processes, and the launcher
    forwards it: the same signal again within the window is that one signal, another one stops at once."""
    hook = StopOnSignal(repeat_window=60.0)
    hook.trainer = trainer_with(EventStorage(0))
    hook.handle(signal.SIGTERM, None)
    hook.handle(signal.SIGTERM, None)  # the forwarded copy: still only the flag
    assert hook.requested == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        hook.handle(signal.SIGINT, None)


def test_a_signal_that_arrives_during_the_ranks_gather_stops_at_the_next_step(monkeypatch):
    """With several processes the flag is gathered every step; a signal handled while this rank waits in that
    gather (the handler runs as the gather returns, before its result is read) is kept for the next step's
    gather instead of being overwritten by this one's empty result: every rank then stops there."""
    import maskinit.hooks as hooks

    hook = StopOnSignal()
    hook.trainer = trainer_with(EventStorage(0), iteration=11, checkpointer=Checkpointer())
    def all_gather(value):
        if value is None:  # the signal lands while this rank waits in the gather, after its flag was sent
            hook.handle(signal.SIGTERM, None)
        return [value, None]  # with the other rank's flag

    monkeypatch.setattr(hooks.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(hooks.comm, "all_gather", all_gather)
    monkeypatch.setattr(hooks.comm, "synchronize", lambda: None)
    hook.after_step()  # this step's gather saw no signal on any rank: training goes on
    assert hook.requested == signal.SIGTERM and hook.trainer.checkpointer.saved == []
    with pytest.raises(TrainingInterrupted) as stop:
        hook.after_step()  # the next gather carries it to every rank
    assert stop.value.signal_name == "SIGTERM" and stop.value.checkpoint == "model_0000011.pth"
