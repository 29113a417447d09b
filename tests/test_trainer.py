"""`maskinit.trainer`: the pieces `Trainer` changes in Detectron2's `DefaultTrainer`, each built alone from a
config (the optimizer, the LR schedule, the AMP type, the plateau hook, the random streams an evaluation
must leave untouched). Whole training runs are in test_train.py."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from maskinit import load_config
from maskinit.hooks import ReduceLROnPlateau
from maskinit.trainer import Trainer, amp_dtype, plateau_hook, untouched_random_streams


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 2, 1))


def tiny(*overrides: str):
    return load_config(preset="tiny", overrides=list(overrides))


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                            ("adamw", torch.optim.AdamW)])
def test_the_optimizer_is_the_one_the_config_names(name, kind):
    overrides = ["MASKINIT.OPTIMIZER", name]
    if name != "sgd":
        overrides += ["SOLVER.BASE_LR", "0.0003", "SOLVER.WEIGHT_DECAY", "0.05"]
    cfg = tiny(*overrides)
    optimizer = Trainer.build_optimizer(cfg, small_model())
    assert isinstance(optimizer, kind)
    assert {group["lr"] for group in optimizer.param_groups} == {cfg.SOLVER.BASE_LR}
    decays = {tuple(p.shape): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decays[(4, 3, 3, 3)] == cfg.SOLVER.WEIGHT_DECAY  # conv weights decay
    assert decays[(4,)] == cfg.SOLVER.WEIGHT_DECAY_NORM  # the norm's (and the biases') as the config says


def lrs(cfg, iterations: int) -> list[float]:
    optimizer = Trainer.build_optimizer(cfg, small_model())
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    seen = []
    for _ in range(iterations):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_step_cosine_and_plateau_schedules_after_the_same_warmup():
    common = ["SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "(60,)"]
    step = lrs(tiny(*common, "MASKINIT.LR_SCHEDULE", "step"), 100)
    cosine = lrs(tiny(*common, "MASKINIT.LR_SCHEDULE", "cosine"), 100)
    plateau = lrs(tiny(*common, "MASKINIT.LR_SCHEDULE", "plateau"), 100)
    base = tiny(*common).SOLVER.BASE_LR
    assert step[:10] == pytest.approx(cosine[:10], rel=0.2) and step[0] < base / 2  # warmup
    assert step[59] == pytest.approx(base) and step[61] == pytest.approx(base * tiny().SOLVER.GAMMA)
    assert all(a > b for a, b in zip(cosine[20:99], cosine[21:100]))  # falls smoothly to the end
    assert cosine[99] < base * 0.01
    assert plateau[10:] == pytest.approx([base] * 90)  # constant: the plateau hook lowers it, not the schedule


def test_the_schedule_keeps_the_callers_config():
    cfg = tiny("MASKINIT.LR_SCHEDULE", "cosine")
    Trainer.build_lr_scheduler(cfg, Trainer.build_optimizer(cfg, small_model()))
    assert cfg.SOLVER.LR_SCHEDULER_NAME == tiny().SOLVER.LR_SCHEDULER_NAME


def test_amp_dtype_follows_the_config_and_the_device():
    assert amp_dtype(tiny("MASKINIT.AMP_DTYPE", "float16")) is torch.float16
    assert amp_dtype(tiny("MASKINIT.AMP_DTYPE", "bfloat16")) is torch.bfloat16
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    assert amp_dtype(tiny("MASKINIT.AMP_DTYPE", "auto")) is expected


def test_the_plateau_hook_carries_the_configs_settings():
    cfg = tiny("MASKINIT.LR_SCHEDULE", "plateau", "MASKINIT.PLATEAU.PATIENCE", "3", "MASKINIT.PLATEAU.FACTOR",
               "0.25", "MASKINIT.PLATEAU.METRIC", "total_loss", "MASKINIT.PLATEAU.PERIOD", "7",
               "TEST.EVAL_PERIOD", "50")
    hook = plateau_hook(cfg)
    assert isinstance(hook, ReduceLROnPlateau)
    assert (hook.metric, hook.period, hook.factor) == ("total_loss", 7, 0.25)
    assert hook._plateau.patience == 3 and not hook.higher_is_better  # torch's scheduler does the counting
    on_ap = plateau_hook(tiny("MASKINIT.LR_SCHEDULE", "plateau", "MASKINIT.PLATEAU.METRIC", "segm/AP",
                              "TEST.EVAL_PERIOD", "50"))
    assert on_ap.period == 50  # an AP metric is checked when an evaluation wrote a fresh one


def test_an_evaluation_leaves_every_random_stream_as_it_found_it():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    with untouched_random_streams():
        torch.rand(100), np.random.rand(100), random.random()
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
