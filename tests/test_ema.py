"""`MASKINIT.EMA`: the average's arithmetic, its checks, and a run that keeps it: evaluations on the
average, `model_final.pth` holding it (raw weights beside), checkpoints carrying it, resume restoring it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import train_options
from torch import nn

from maskinit import MaskinitError, load_config
from maskinit.ema import EMAHook, ema_decay
from maskinit.run_options import rescale_to_max_iter
from maskinit.train import DataOptions, train
from maskinit.trainer import Trainer

EMA_ON = ["MASKINIT.EMA.ENABLED", "True", "MASKINIT.EMA.DECAY", "0.5", "MASKINIT.EMA.WARMUP_ITERS", "0",
          "SOLVER.WARMUP_ITERS", "2"]


def test_decay_warms_up_as_stated():
    assert ema_decay(0.99, 0, 1) == 0.99
    assert ema_decay(0.99, 10, 10) == pytest.approx(0.99 * (1 - math.exp(-1)))
    assert ema_decay(0.99, 10, 1) < ema_decay(0.99, 10, 5) < ema_decay(0.99, 10, 100) < 0.99


def test_hook_averages_every_weight_with_the_warmed_up_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    hook = EMAHook(model, decay=0.9, warmup_iters=4)
    expected = {name: tensor.clone().float() for name, tensor in model.state_dict().items()}
    for update in range(1, 4):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model.train()(torch.randn(5, 3))  # moves the BatchNorm statistics
        hook.after_step()
        d = 0.9 * (1 - math.exp(-update / 4))
        for name, tensor in model.state_dict().items():
            expected[name] = (
                tensor.clone().float() if not tensor.is_floating_point() else expected[name] * d + tensor * (1 - d)
            )
    average = hook.average_state()
    for name, tensor in expected.items():
        torch.testing.assert_close(average[name].float(), tensor, msg=name)
    assert average["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"]


def test_the_average_restarts_from_the_weights_after_an_lr_step():
    """RESTART_AT_STEPS: after the step of an LR-step iteration the average is the weights themselves, and
    then averages on with its decay warming up again; without it, the average spans the step."""
    from types import SimpleNamespace

    from maskinit.ema import build_ema_hook

    cfg = load_config(
        preset="tiny",
        overrides=[
            "MASKINIT.EMA.ENABLED", "True", "MASKINIT.EMA.DECAY", "0.9", "MASKINIT.EMA.WARMUP_ITERS", "2",
            "MASKINIT.EMA.RESTART_AT_STEPS", "True", "SOLVER.STEPS", "(3,)",
        ],
    )
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    restarting = build_ema_hook(cfg, model)
    cfg.defrost()
    cfg.MASKINIT.EMA.RESTART_AT_STEPS = False
    spanning = build_ema_hook(cfg, model)
    assert restarting.restart_after == {3} and spanning.restart_after == frozenset()
    for iteration in range(6):
        with torch.no_grad():
            model.weight.add_(1.0)
        for hook in (restarting, spanning):
            hook.trainer = SimpleNamespace(iter=iteration)
            hook.after_step()
        if iteration == 3:
            torch.testing.assert_close(restarting.average_state()["weight"], model.weight.detach())
            assert (spanning.average_state()["weight"] < model.weight.detach() - 1).all()  # still remembers the start
    # two updates after the restart: the decay warmed up again from its start, d = 0.9 * (1 - exp(-k / 2))
    at3 = model.weight.detach() - 2.0
    d4, d5 = (0.9 * (1 - math.exp(-k / 2)) for k in (1, 2))
    expected = (at3 * d4 + (at3 + 1) * (1 - d4)) * d5 + (at3 + 2) * (1 - d5)
    torch.testing.assert_close(restarting.average_state()["weight"], expected)


def test_applied_swaps_the_average_in_and_the_weights_back_even_on_error():
    model = nn.Linear(2, 2)
    hook = EMAHook(model, decay=0.5, warmup_iters=0)
    raw = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    hook.after_step()
    moved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(RuntimeError), hook.applied():
        torch.testing.assert_close(model.weight, raw["weight"] + 0.5)  # halfway: decay 0.5
        raise RuntimeError("evaluation failed")
    torch.testing.assert_close(model.weight, moved["weight"])


@pytest.mark.parametrize("key, value", [("DECAY", "1.0"), ("DECAY", "0"), ("WARMUP_ITERS", "-1"), ("ENABLED", "2"),
                                        ("RESTART_AT_STEPS", "2")])
def test_bad_values_are_refused_when_the_config_is_built(key, value):
    with pytest.raises(MaskinitError, match=f"MASKINIT.EMA.{key}"):
        load_config(preset="tiny", overrides=[f"MASKINIT.EMA.{key}", value])


def test_a_shorter_run_shortens_the_window_and_its_warmup():
    cfg = load_config(preset="tiny", overrides=["MASKINIT.EMA.DECAY", "0.999", "MASKINIT.EMA.WARMUP_ITERS", "100"])
    cfg.defrost()
    rescale_to_max_iter(cfg, cfg.SOLVER.MAX_ITER // 4, keep_steps=False, keep_warmup=False)
    assert cfg.MASKINIT.EMA.DECAY == pytest.approx(1 - 4 / 1000)  # a window of 1000 iterations becomes 250
    assert cfg.MASKINIT.EMA.WARMUP_ITERS == 25


def run_options(out, data, max_iter=4, checkpoint_period=2, **kwargs):
    return train_options(out, data, max_iter=max_iter, checkpoint_period=checkpoint_period, **kwargs)


# The module-scoped fixtures train once per test process: under `make test` (pytest-xdist) this module's tests
# run in one of them.
pytestmark = pytest.mark.xdist_group("ema")


@pytest.fixture(scope="module")
def ema_run(coco, tmp_path_factory):
    """A 4-iteration run with the average on, recording the weights every evaluation saw."""
    seen = []
    original = Trainer.test.__func__

    def recording_test(cls, cfg, model, evaluators=None):
        inner = model.module if hasattr(model, "module") else model
        seen.append({name: tensor.detach().clone() for name, tensor in inner.state_dict().items()})
        return original(cls, cfg, model, evaluators)

    patch = pytest.MonkeyPatch()
    patch.setattr(Trainer, "test", classmethod(recording_test))
    try:
        out = tmp_path_factory.mktemp("ema") / "out"
        summary = train(load_config(preset="tiny", overrides=EMA_ON), run_options(out, coco))
    finally:
        patch.undo()
    return out, summary, seen


@pytest.mark.slow
def test_model_final_holds_the_average_and_the_raw_weights_beside_it(ema_run):
    out, summary, _ = ema_run
    assert summary["status"] == "finished"
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    average = final["trainer"]["hooks"]["EMAHook"]["average"]
    for name, tensor in final["model"].items():
        torch.testing.assert_close(tensor, average[f"module.{name}"], msg=name)
    differing = [name for name, tensor in final["model"].items()
                 if tensor.is_floating_point() and not torch.equal(tensor, final["raw_model"][name])]
    assert len(differing) > len(final["model"]) // 2  # 4 steps at decay 0.5: the average lags the weights


@pytest.mark.slow
def test_the_evaluation_ran_on_the_average(ema_run):
    out, _, seen = ema_run
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert len(seen) == 1  # the evaluation after training
    for name, tensor in final["model"].items():
        torch.testing.assert_close(seen[-1][name].cpu(), tensor, msg=name)


@pytest.mark.slow
def test_every_checkpoint_carries_the_average(ema_run):
    out, _, _ = ema_run
    periodic = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert "raw_model" not in periodic  # a periodic checkpoint's model is the training weights
    assert periodic["trainer"]["hooks"]["EMAHook"]["average"]["n_averaged"] == 3  # the copy and 2 updates


@pytest.mark.slow
def test_resume_continues_from_the_raw_weights_and_keeps_the_average(ema_run, coco, tmp_path):
    import shutil

    from maskinit.data.sources import register_from_options

    out, _, _ = ema_run
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    cfg = load_config(copy / "config.yaml")
    cfg.defrost()
    cfg.OUTPUT_DIR = str(copy)
    cfg.SOLVER.MAX_ITER = 6
    register_from_options(DataOptions(**vars(coco)), cfg)
    trainer = Trainer(cfg, progress_bar=False)
    trainer.resume_or_load(resume=True)
    final = torch.load(copy / "model_final.pth", map_location="cpu", weights_only=True)
    assert trainer.start_iter == 4
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(tensor, final["raw_model"][name], msg=name)
    for name, tensor in trainer.ema.average.state_dict().items():
        torch.testing.assert_close(tensor, final["trainer"]["hooks"]["EMAHook"]["average"][name], msg=name)

    summary = train(load_config(copy / "config.yaml"), run_options(copy, coco, max_iter=6, resume=True))
    assert summary["status"] == "finished" and summary["iterations"] == 6
    resumed = torch.load(copy / "model_final.pth", map_location="cpu", weights_only=True)
    assert resumed["trainer"]["hooks"]["EMAHook"]["average"]["n_averaged"] == 7  # 5 before, 2 more


@pytest.mark.slow
def test_maskinit_eval_scores_the_average(ema_run, coco):
    import json

    from maskinit.evaluation import evaluate_run

    out, _, _ = ema_run
    cfg = load_config(out / "config.yaml")
    data = DataOptions(val_json=coco.val_json, val_images=coco.val_images)
    results = evaluate_run(cfg, out / "model_final.pth", data, device="cpu")
    during = json.loads((out / "eval.json").read_text())
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            now, then = results[task][key], during[task][key]
            assert (then is None and math.isnan(now)) or now == pytest.approx(then), (task, key)


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_two_process_ddp_keeps_one_average(coco, tmp_path):
    """Two CPU processes (DDP over gloo) with SyncBN, whose NaiveSyncBatchNorm all-reduces the statistics of
    both, and the weight average: one average, evaluated at the end."""
    out = tmp_path / "ddp"
    summary = train(load_config(preset="tiny", norm="SyncBN", overrides=EMA_ON),
                    run_options(out, coco, max_iter=2, checkpoint_period=100, num_gpus=2, device="cpu"))
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert "segm" in json.loads((out / "eval.json").read_text())
    assert load_config(out / "config.yaml").MODEL.FPN.NORM == "SyncBN"
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    average = final["trainer"]["hooks"]["EMAHook"]["average"]
    assert int(average["n_averaged"]) == 3
    for name, tensor in final["model"].items():
        torch.testing.assert_close(tensor, average[f"module.{name}"], msg=name)  # no "module." of DDP in the keys
    assert set(final["model"]) == set(final["raw_model"])
