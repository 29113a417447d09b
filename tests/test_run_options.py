"""`maskinit.run_options`: the options of one run written into a config (a new config; the caller's is
left as it was), the schedule rescaled with the run's length, the data options as the flags maskinit
prints, and the refusals of options that cannot run."""

from __future__ import annotations

import pytest

from maskinit import MaskinitError, load_config
from maskinit.run_options import DataOptions, TrainOptions, apply_run_options, rescale_to_max_iter


def tiny(*overrides: str):
    return load_config(preset="tiny", overrides=list(overrides))


def test_data_options_give_back_the_flags_that_made_them():
    paths = DataOptions("a/train.json", "a/train", "a/val.json", "a/val")
    assert paths.as_flags() == ["--train-json", "a/train.json", "--train-images", "a/train",
                                "--val-json", "a/val.json", "--val-images", "a/val"]
    source = DataOptions(source="mine", format="yolo", val_fraction=0.25, split_seed=3)
    assert source.as_flags() == ["--data", "mine", "--format", "yolo", "--val-fraction", "0.25", "--split-seed", "3"]
    assert DataOptions(source="mine").as_flags() == ["--data", "mine"]


def test_a_longer_run_keeps_the_shape_of_its_schedule():
    cfg = tiny()
    old_steps, old_warmup, old_max = cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER
    new = cfg.clone()
    rescale_to_max_iter(new, old_max * 4, keep_steps=False, keep_warmup=False)
    assert new.SOLVER.MAX_ITER == old_max * 4
    assert new.SOLVER.STEPS == tuple(step * 4 for step in old_steps)
    assert new.SOLVER.WARMUP_ITERS == old_warmup * 4
    assert 1 / (1 - new.MASKINIT.EMA.DECAY) == pytest.approx(4 / (1 - cfg.MASKINIT.EMA.DECAY), rel=1e-3)
    kept = cfg.clone()
    rescale_to_max_iter(kept, old_max * 4, keep_steps=True, keep_warmup=True)
    assert (kept.SOLVER.STEPS, kept.SOLVER.WARMUP_ITERS) == (old_steps, old_warmup)
    with pytest.raises(MaskinitError, match="--max-iter must be at least 1"):
        rescale_to_max_iter(cfg.clone(), 0, keep_steps=False, keep_warmup=False)


def test_options_go_into_a_new_config_and_the_callers_is_left_alone():
    cfg = tiny()
    before = cfg.dump()
    out = apply_run_options(cfg, TrainOptions(output_dir="runs/x", max_iter=40, lr=0.01, seed=7, eval_period=20,
                                              checkpoint_period=10, clip_grad=1.5, device="cpu", fit="off"))
    assert cfg.dump() == before
    assert out.OUTPUT_DIR == "runs/x" and out.SOLVER.MAX_ITER == 40 and out.SOLVER.BASE_LR == 0.01
    assert (out.SEED, out.TEST.EVAL_PERIOD, out.SOLVER.CHECKPOINT_PERIOD) == (7, 20, 10)
    assert out.SOLVER.CLIP_GRADIENTS.ENABLED and out.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 1.5
    assert out.MASKINIT.FIT == "off" and out.MODEL.DEVICE == "cpu"


def test_a_step_the_user_set_is_kept_when_the_length_changes():
    out = apply_run_options(tiny("SOLVER.STEPS", "(30,)"), TrainOptions(max_iter=40, device="cpu"),
                            explicit_keys={"SOLVER.STEPS"})
    assert out.SOLVER.STEPS == (30,)


def test_amp_is_turned_off_on_a_cpu():
    assert not apply_run_options(tiny(), TrainOptions(amp=True, device="cpu")).SOLVER.AMP.ENABLED


@pytest.mark.parametrize(("options", "message"), [
    (TrainOptions(lr=20.0), "--lr must be in"),
    (TrainOptions(warmup_iters=-1), "--warmup-iters must be >= 0"),
    (TrainOptions(max_iter=10, epochs=2.0), "--max-iter and --epochs each set the run's length"),
    (TrainOptions(time_budget=60.0, resume=True), "--time measures this machine"),
    (TrainOptions(checkpoint_period=0), "--checkpoint-period must be at least 1"),
    (TrainOptions(clip_grad=0.0), "--clip-grad must be positive"),
    (TrainOptions(num_machines=2, machine_rank=2), r"--machine-rank must be in \[0, 2\)"),
    (TrainOptions(num_gpus=3), "not divisible by 3 processes"),
])
def test_options_that_cannot_run_are_refused_in_one_line(options, message):
    options.device = "cpu"
    with pytest.raises(MaskinitError, match=message) as refused:
        apply_run_options(tiny(), options)
    assert "\n" not in str(refused.value)
