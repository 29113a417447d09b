"""The benchmark harness (benchmarks/recipes.py `execute`): a run stopped by a signal leaves no cached
result and continues from its checkpoint on the next call; a finished one is cached. The R50 runs on
CPU take longer than one sitting and depend on this. The commands here are small scripts standing in
for a training run, so the harness logic is tested without training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from recipes import execute  # noqa: E402

# A stand-in for stock_detectron2.py: without --resume it saves a "checkpoint" and is killed by SIGTERM
# (as when a long benchmark is stopped); with --resume it finishes and writes its result.
STAND_IN = """
import json, os, signal, sys
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
if "--resume" in sys.argv:
    print("continued from", (out / "last_checkpoint").read_text(), flush=True)
    result = {"status": "finished", "box_ap": 1.5, "mask_ap": 2.5, "seconds_per_iter": 0.1}
    (out / "result.json").write_text(json.dumps(result))
    (out / "model_final.pth").write_bytes(b"weights")
else:
    (out / "last_checkpoint").write_text("model_0000009.pth")
    print("started", sys.argv[2], flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.fixture()
def stand_in(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    folder = tmp_path / "run" / "seed0"

    def command(tag: str) -> list[str]:
        return [sys.executable, str(script), str(folder / "out"), tag]

    return folder, command


def test_a_stopped_run_is_not_cached_and_continues_from_its_checkpoint(stand_in):
    folder, command = stand_in
    first = execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10)
    assert first["status"] == "interrupted" and first["mask_ap"] == 0.0
    assert not (folder / "result.json").exists()

    second = execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10)
    assert second["status"] == "finished" and second["resumed"] is True
    assert (second["box_ap"], second["mask_ap"]) == (1.5, 2.5)
    log = (folder / "log.txt").read_text()
    assert "started a" in log and "continued from model_0000009.pth" in log  # the log of both parts kept
    assert second["command"] == command("a")  # cached under the run's own command, not the resume one

    assert not list((folder / "out").glob("*.pth")) and not (folder / "out" / "last_checkpoint").exists()
    (folder / "out" / "result.json").unlink()  # a third call must not run anything: the result is cached
    assert execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10) == second


def test_a_finished_run_keeps_its_weights_when_asked(stand_in):
    folder, command = stand_in
    execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10)
    done = execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10,
                   keep_weights=True)
    assert done["status"] == "finished" and (folder / "out" / "model_final.pth").read_bytes() == b"weights"


def test_a_checkpoint_of_another_command_is_not_continued(stand_in):
    folder, command = stand_in
    execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10)
    assert (folder / "out" / "last_checkpoint").is_file()
    # the options changed: the old checkpoint belongs to another run, which starts afresh (and is stopped again)
    again = execute("stand-in", "stock", command("b"), folder, resume=[*command("b"), "--resume"], iters=10)
    assert again["status"] == "interrupted" and "resumed" not in again
    assert "started b" in (folder / "log.txt").read_text()
    assert "continued" not in (folder / "log.txt").read_text()


def test_without_a_resume_command_a_stopped_run_starts_again(stand_in):
    folder, command = stand_in
    execute("stand-in", "stock", command("a"), folder, iters=10)
    again = execute("stand-in", "stock", command("a"), folder, iters=10)
    assert again["status"] == "interrupted" and "resumed" not in again
    assert not (folder / "result.json").exists()


def test_the_reports_leave_stopped_runs_out(stand_in, capsys):
    from recipes import stopped_left_out

    folder, command = stand_in
    stopped = execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], seed=0, iters=10)
    finished = {"name": "other", "seed": 0, "status": "finished", "mask_ap": 1.0}
    assert stopped_left_out([stopped, finished]) == [finished]  # no table row of zeros for a run not over
    assert "stand-in seed 0: stopped; the same command continues it" in capsys.readouterr().out


def test_r50_arms_name_the_runs_and_give_maskinit_sgd_its_own_lr_and_weight_decay():
    from r50 import arm_name, arm_options

    from maskinit.config import load_config
    from maskinit.run_options import TrainOptions, apply_run_options

    assert arm_name("preset") == "maskinit-default" and arm_options("maskinit-default", "0.0001") == ("0.0001", [])
    assert arm_name("sgd@0.02") == "maskinit-sgd@0.02" and arm_name("adamw@2e-4") == "maskinit-adamw@2e-4"
    for bad in ("sgd", "lion@0.1", "sgd@fast"):
        with pytest.raises(SystemExit, match="--maskinit-arms"):
            arm_name(bad)
    lr, options = arm_options("maskinit-sgd@0.02", "0.0001")
    assert lr == "0.02" and options[:2] == ["--optimizer", "sgd"]
    # The options as `maskinit train` applies them to the r50-fpn preset: SGD at 0.02 with the zoo's 1e-4 decay.
    cfg = load_config(preset="r50-fpn", overrides=options[2:])
    run = apply_run_options(
        cfg, TrainOptions(output_dir="out", device="cpu", lr=float(lr), optimizer=options[1], max_iter=4)
    )
    assert (run.MASKINIT.OPTIMIZER, run.SOLVER.BASE_LR, run.SOLVER.WEIGHT_DECAY) == ("sgd", 0.02, 1e-4)
    assert arm_options("maskinit-adamw@2e-4", "0.0001") == ("2e-4", ["--optimizer", "adamw"])


@pytest.mark.slow
def test_recipe_variants_are_valid_tiny_configs_and_keep_their_explicit_schedule():
    """Every KEY VALUE variant of the recipe benchmark builds a checked tiny config that holds its values;
    the schedule probes' explicit warmup survives the rescale of a longer budget (--iters 1600)."""
    import recipes

    from maskinit.config import config_value, load_config
    from maskinit.run_options import TrainOptions, apply_run_options

    variants = {**recipes.ABLATIONS, **recipes.FIT_PARTS, **recipes.INGREDIENTS, **recipes.SCHEDULE, **recipes.PROBES,
                **recipes.HEAD_PROBES}
    checked = 0
    for name, options in variants.items():
        if options[0].startswith("--"):  # a CLI option (--init lsuv), not KEY VALUE pairs
            continue
        cfg = load_config(preset="tiny", overrides=options)
        for key, value in zip(options[::2], options[1::2]):
            held = config_value(cfg, key)
            expected = type(held)(value) if isinstance(held, (int, float)) and not isinstance(held, bool) else None
            if expected is not None:
                assert held == expected, (name, key, held, value)
        checked += 1
    assert checked == len(variants) - 1
    cfg = load_config(preset="tiny", overrides=recipes.SCHEDULE["maskinit-warmup20"])
    run = apply_run_options(
        cfg, TrainOptions(output_dir="out", device="cpu", max_iter=1600), explicit_keys={"SOLVER.WARMUP_ITERS"}
    )
    assert run.SOLVER.WARMUP_ITERS == 20 and run.SOLVER.MAX_ITER == 1600 and run.SOLVER.STEPS == (1280,)
    cosine = load_config(preset="tiny", overrides=recipes.SCHEDULE["maskinit-cosine"])
    assert cosine.MASKINIT.LR_SCHEDULE == "cosine"
    assert (
        load_config(preset="tiny", overrides=recipes.SCHEDULE["maskinit-roi128"]).MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
        == 128
    )
    # the LSUV ablation puts back c2 in place of the preset's LSUV
    assert load_config(preset="tiny").MASKINIT.INIT == "lsuv"
    assert load_config(preset="tiny", overrides=recipes.ABLATIONS["maskinit-no-lsuv"]).MASKINIT.INIT == "c2"
    # the scaled EMA ingredient: the preset's window of 50 iterations (decay 0.98) becomes 200 at 4x the budget
    ema = load_config(preset="tiny", overrides=recipes.INGREDIENTS["maskinit-ema-scaled"])
    long = apply_run_options(
        ema, TrainOptions(output_dir="out", device="cpu", max_iter=1600), explicit_keys={"MASKINIT.EMA.ENABLED"}
    )
    assert long.MASKINIT.EMA.ENABLED and long.MASKINIT.EMA.DECAY == 0.995 and long.MASKINIT.EMA.WARMUP_ITERS == 160


def test_the_photo_probes_are_valid_tiny_configs_and_their_plugins_change_what_they_say(monkeypatch):
    """Every photo probe builds a checked tiny config; the probes' plugins (paths from the repository root, where
    the benchmarks run) give Detectron2's mask head, the same layers, with its loss weighted 2, and Detectron2's
    RoI heads with a canonical box of 112."""
    import recipes
    from detectron2.data import detection_utils

    from maskinit.config import load_config
    from maskinit.model import build_model

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    # the photometric probe's plugin wraps Detectron2's build_augmentation: the original comes back after the test
    monkeypatch.setattr(detection_utils, "build_augmentation", detection_utils.build_augmentation)
    monkeypatch.delitem(sys.modules, "photometric_probe", raising=False)
    monkeypatch.setattr("maskinit.plugins._loaded", set())
    for name, options in recipes.PHOTO_PROBES.items():
        assert load_config(preset="tiny", overrides=options), name
    preset = build_model(load_config(preset="tiny"), data_dependent=False).roi_heads.mask_head
    probe = build_model(
        load_config(preset="tiny", overrides=recipes.PHOTO_PROBES["maskinit-maskloss2"]), data_dependent=False
    ).roi_heads.mask_head
    assert type(probe).__name__ == "MaskLoss20" and isinstance(probe, type(preset))
    assert probe.loss_weight == 2.0 and preset.loss_weight == 1.0
    assert {k: v.shape for k, v in probe.state_dict().items()} == {k: v.shape for k, v in preset.state_dict().items()}
    # the canonical-box probe: Detectron2's RoI heads, both poolers assigning levels with a canonical box of 112
    heads = build_model(
        load_config(preset="tiny", overrides=recipes.PHOTO_PROBES["maskinit-canonical112"]), data_dependent=False
    ).roi_heads
    assert type(heads).__name__ == "StandardROIHeadsCanonical112"
    assert heads.box_pooler.canonical_box_size == heads.mask_pooler.canonical_box_size == 112
    # masks at 4x the pool's side: 28x28 from the preset's 7x7 pool, the preset's layers kept before the new ones
    up4 = build_model(
        load_config(preset="tiny", overrides=recipes.PHOTO_PROBES["maskinit-mask-up4"]), data_dependent=False
    ).roi_heads.mask_head
    assert type(up4).__name__ == "MaskUpsample4"
    assert up4.layers(torch.zeros(2, 64, 7, 7)).shape == (2, 1, 28, 28)
    assert preset.layers(torch.zeros(2, 64, 7, 7)).shape == (2, 1, 14, 14)
    # GroupNorm of 8 groups in every normalized layer
    model = build_model(load_config(preset="tiny", overrides=recipes.PHOTO_PROBES["maskinit-gn8"]),
                        data_dependent=False)
    groups = {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8}
    # the box head regressing by GIoU, weighted 10
    predictor = build_model(
        load_config(preset="tiny", overrides=recipes.PHOTO_PROBES["maskinit-giou"]), data_dependent=False
    ).roi_heads.box_predictor
    assert predictor.box_reg_loss_type == "giou" and predictor.loss_weight["loss_box_reg"] == 10.0
    # the mask head with a Dice term: Detectron2's layers, a second loss, zero for a perfect mask, ~1 for its inverse
    dice = build_model(
        load_config(preset="tiny", overrides=recipes.PHOTO_PROBES["maskinit-mask-dice"]), data_dependent=False
    ).roi_heads.mask_head
    assert type(dice).__name__ == "MaskDice" and isinstance(dice, type(preset))
    assert {k: v.shape for k, v in dice.state_dict().items()} == {k: v.shape for k, v in preset.state_dict().items()}
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    image = Instances((32, 32), proposal_boxes=Boxes(torch.tensor([[8.0, 8.0, 24.0, 24.0]])),
                      gt_classes=torch.tensor([0]))
    square = torch.zeros(1, 32, 32, dtype=torch.bool)
    square[0, 8:24, 8:24] = True
    image.gt_masks = BitMasks(square)
    dice_loss = sys.modules["mask_dice_probe"].dice_loss
    assert dice_loss(torch.full((1, 1, 14, 14), 20.0), [image]).item() < 1e-6
    assert dice_loss(torch.full((1, 1, 14, 14), -20.0), [image]).item() > 0.99
    dice.train()
    with EventStorage():
        losses = dice(torch.randn(1, 64, 7, 7), [image])
    assert set(losses) == {"loss_mask", "loss_mask_dice"} and 0 < losses["loss_mask_dice"].item() < 1


def test_the_photometric_probe_jitters_training_images_only(monkeypatch):
    """The photometric probe's plugin appends its jitter to Detectron2's training augmentations (not the test
    ones), and the jitter changes a colour image's pixels and keeps a gray image's one channel."""
    from detectron2.data import detection_utils

    from maskinit.config import load_config
    from maskinit.plugins import load_plugins

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    monkeypatch.setattr(detection_utils, "build_augmentation", detection_utils.build_augmentation)
    monkeypatch.delitem(sys.modules, "photometric_probe", raising=False)  # loaded afresh: it wraps the original
    monkeypatch.setattr("maskinit.plugins._loaded", set())
    cfg = load_config(preset="tiny")
    before = len(detection_utils.build_augmentation(cfg, True))
    load_plugins(["benchmarks/photometric_probe.py"])
    train, test = detection_utils.build_augmentation(cfg, True), detection_utils.build_augmentation(cfg, False)
    assert len(train) == before + 1 and type(train[-1]).__name__ == "RandomPhotometric"
    assert all(type(a).__name__ != "RandomPhotometric" for a in test)
    np.random.seed(0)
    colour = np.random.randint(0, 256, (32, 40, 3), dtype=np.uint8)
    jittered = train[-1].get_transform(colour).apply_image(colour)
    assert jittered.shape == colour.shape and jittered.dtype == np.uint8 and not np.array_equal(jittered, colour)
    gray = colour[:, :, :1].copy()
    assert train[-1].get_transform(gray).apply_image(gray).shape == gray.shape


def test_a_cached_maskinit_run_of_another_recipe_is_redone_and_not_continued(stand_in):
    """The same `maskinit train --preset tiny` command trains another recipe once the preset changed: its
    cached result and its checkpoint are not reused; the same recipe's are. (The stand-in writes a stock
    run's result; `recipe` is what recipes.py passes for its maskinit runs, the logic is the same.)"""
    folder, command = stand_in
    execute("stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10, recipe="old")
    done = execute(
        "stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10, recipe="old"
    )
    assert done["resumed"] is True and done["recipe"] == "old" and (folder / "result.json").is_file()
    # the preset changed: the finished result is stale, the run starts afresh (and is stopped again)
    again = execute(
        "stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10, recipe="new"
    )
    assert again["status"] != "finished" and "resumed" not in again
    assert "started a" in (folder / "log.txt").read_text() and "continued" not in (folder / "log.txt").read_text()
    # a checkpoint left under another recipe is not continued either; one of the same recipe is
    stale = execute(
        "stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10, recipe="newer"
    )
    assert "resumed" not in stale and "continued" not in (folder / "log.txt").read_text()
    same = execute(
        "stand-in", "stock", command("a"), folder, resume=[*command("a"), "--resume"], iters=10, recipe="newer"
    )
    assert same["resumed"] is True and same["recipe"] == "newer" and same["status"] == "finished"


def test_the_recipe_digest_follows_the_preset_config():
    from recipes import recipe_digest

    assert recipe_digest("tiny") == recipe_digest("tiny") != recipe_digest("r50-fpn")
    assert len(recipe_digest("tiny")) == 16


def _data(root: Path, annotation: str = "[]") -> list[str]:
    """The four data options of a small stand-in set in `root`."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "a.png").write_bytes(b"pixels")
        (root / f"{split}.json").write_text(annotation)
    return ["--train-json", str(root / "train.json"), "--train-images", str(root / "train"),
            "--val-json", str(root / "val.json"), "--val-images", str(root / "val")]


def _finish(stand_in, data: list[str]) -> dict:
    folder, command = stand_in
    execute("stand-in", "stock", [*command("a"), *data], folder, resume=[*command("a"), *data, "--resume"], iters=10)
    return execute(
        "stand-in", "stock", [*command("a"), *data], folder, resume=[*command("a"), *data, "--resume"], iters=10
    )


def test_a_cached_run_is_reused_for_the_same_data_in_another_folder(stand_in, tmp_path, capsys):
    """The same synthetic set generated into another cache dir is the same data: the finished run is not redone."""
    folder, command = stand_in
    done = _finish(stand_in, _data(tmp_path / "cache-a"))
    assert done["status"] == "finished" and done["data_fingerprint"]
    moved = _data(tmp_path / "cache-b")
    (folder / "out" / "result.json").unlink()  # were anything run, it could not finish: the stand-in needs --resume
    assert (
        execute(
            "stand-in", "stock", [*command("a"), *moved], folder, resume=[*command("a"), *moved, "--resume"], iters=10
        )
        == done
    )
    assert "redone" not in capsys.readouterr().out
    assert (folder / "log.txt").read_text().count("continued") == 1


def test_a_cached_run_of_other_data_is_redone_from_an_empty_folder_and_says_why(stand_in, tmp_path, capsys):
    folder, command = stand_in
    _finish(stand_in, _data(tmp_path / "cache-a"))
    (folder / "out" / "metrics.json").write_text('{"iteration": 9}\n')  # the old run's curve
    other = _data(tmp_path / "cache-c", annotation='[{"id": 1}]')
    again = execute(
        "stand-in", "stock", [*command("a"), *other], folder, resume=[*command("a"), *other, "--resume"], iters=10
    )
    assert again["status"] == "interrupted" and "resumed" not in again  # started afresh, not continued
    assert "stand-in seed ?: cached result not used, redone: other data" in capsys.readouterr().out
    assert not (folder / "out" / "metrics.json").exists()  # nothing of the old run mixes into the new one's curve


def test_a_cached_run_of_another_command_says_which_argument_differs(stand_in, capsys):
    folder, command = stand_in
    _finish(stand_in, [])
    execute("stand-in", "stock", command("b"), folder, resume=[*command("b"), "--resume"], iters=10)
    assert "cached result not used, redone: another command ('a' -> 'b')" in capsys.readouterr().out


def test_the_comparison_names_an_lr_beyond_an_edge_optimum_and_the_error_ratio():
    from recipes import STOCK, comparison

    def row(mask):
        return {"mask_ap_mean": mask, "box_ap_mean": mask, "seconds_per_iter": 1.0}

    table = {"d2-scratch-gn@0.02": row(12.5), "d2-scratch-gn@0.04": row(17.6), "d2-scratch-gn@0.08": row(67.1),
             "maskinit-default": row(84.7)}
    compared = comparison(table, 1.5)
    assert compared["comparator"] == "d2-scratch-gn@0.08" and compared["mask_ratio"] == round(84.7 / 67.1, 3)
    assert compared["best_at_edge"] == "d2-scratch-gn@0.16" and compared["best_at_edge"] in STOCK
    assert compared["error_ratio"] == round(32.9 / 15.3, 3) and not compared["goal_met"]
    # an optimum inside the LRs run is not at an edge; the lowest LR winning points below the sweep
    table["d2-scratch-gn@0.16"] = row(60.0)
    assert "best_at_edge" not in comparison(table, 1.5)
    low = {"d2-scratch-gn@0.01": row(9.0), "d2-scratch-gn@0.02": row(8.0), "maskinit-default": row(12.0)}
    assert comparison(low, 1.3)["best_at_edge"] == "d2-scratch-gn@0.005"


def test_speed_times_a_named_variant_at_the_given_length_and_refuses_an_unknown_one(monkeypatch, tmp_path):
    """speed.py --variant NAME --iters N gives maskinit the variant's options and N iterations, names the
    result after both, and an unknown variant stops with a usage error before anything runs."""
    import speed
    from recipes import HEAD_PROBES

    calls, written = [], {}
    monkeypatch.setattr(speed, "interleaved_pairs", lambda name, count, lr, options, iters: calls.append(
        (name, count, iters, options(tmp_path))) or [{"stock_s_per_iter": 0.5, "maskinit_s_per_iter": 0.6}])
    monkeypatch.setattr(speed, "write_json", lambda path, report: written.update({path.name: report}))
    monkeypatch.setattr(
        sys, "argv", ["speed.py", "--variant", "maskinit-roi128-box2fc", "--iters", "200", "--pairs", "1"]
    )
    speed.main()
    (name, count, iters, options), = calls
    assert (name, count, iters) == ("speed-maskinit-roi128-box2fc-200it", 1, 200)
    assert options[options.index("--max-iter") + 1] == "200"
    assert options[-len(HEAD_PROBES["maskinit-roi128-box2fc"]):] == HEAD_PROBES["maskinit-roi128-box2fc"]
    report = written["speed-maskinit-roi128-box2fc-200it.json"]
    assert report["variant"] == "maskinit-roi128-box2fc" and report["median_ratio"] == 1.2
    monkeypatch.setattr(sys, "argv", ["speed.py", "--variant", "maskinit-nonesuch"])
    with pytest.raises(SystemExit) as stopped:
        speed.main()
    assert stopped.value.code == 2 and len(calls) == 1


def test_a_report_keeps_the_earlier_runs_of_its_set_that_this_call_did_not_redo(tmp_path):
    from recipes import earlier_runs

    same, other = {"--train-json": "a"}, {"--train-json": "b"}

    def run(name, seed=0, fingerprint=same, recipe="r1", runner="maskinit train", status="finished"):
        return {"name": name, "seed": seed, "data_fingerprint": fingerprint, "recipe": recipe, "runner": runner,
                "status": status}

    path = tmp_path / "recipes-set-fit.json"
    path.write_text(json.dumps({"runs": [
        run("maskinit-default"),  # redone by this call: the new one counts
        run("maskinit-default", seed=1),  # kept
        run("maskinit-fit-off", recipe="r0"),  # another tiny preset: left out
        run("d2-scratch-gn@0.02", recipe=None, runner="stock"),  # kept: stock runs have no preset
        run("maskinit-fit-full", fingerprint=other),  # other data: left out
        run("maskinit-fit-preset-input", status="stopped"),  # not finished: left out
    ]}))
    now = [run("maskinit-default")]
    kept = earlier_runs(path, now, "r1")
    assert [(r["name"], r["seed"]) for r in kept] == [("maskinit-default", 1), ("d2-scratch-gn@0.02", 0)]
    assert earlier_runs(tmp_path / "none.json", now, "r1") == []


def test_report_only_summarizes_the_asked_runs_and_keeps_the_rest_of_the_sets_table(tmp_path, monkeypatch):
    """`--report-only --only NAME` rewrites a set's result file with NAME's cached runs and the set's other
    finished runs, as a call that runs NAME does: it does not shrink the table to NAME."""
    import recipes

    data = tmp_path / "set"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True)
        cv2.imwrite(str(data / split / "a.png"), np.zeros((8, 8, 3), np.uint8))
        (data / f"{split}.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
                             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
            "categories": [{"id": 1, "name": "x"}]}))
    fingerprint, digest = {"--train-json": "a"}, recipes.recipe_digest("tiny")

    def row(name, runner, recipe):
        return {"name": name, "seed": 0, "status": "finished", "runner": runner, "recipe": recipe, "box_ap": 2.0,
                "mask_ap": 1.0, "seconds_per_iter": 0.5, "data_fingerprint": fingerprint, "input": "128/128"}

    cached = tmp_path / "runs" / "set" / "maskinit-fit-off" / "seed0"
    cached.mkdir(parents=True)
    (cached / "result.json").write_text(json.dumps(row("maskinit-fit-off", "maskinit train", digest)))
    results = tmp_path / "results"
    results.mkdir()
    earlier = [row("maskinit-default", "maskinit train", digest), row("d2-scratch-gn@0.02", "stock", None)]
    (results / "recipes-set-fit.json").write_text(json.dumps({"runs": earlier}))
    monkeypatch.setattr(sys, "argv", [
        "recipes.py", "--data", f"set={data}", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(results),
        "--tag=-fit", "--only", "maskinit-fit-off", "--seeds", "0", "--report-only"])
    recipes.main()
    runs = json.loads((results / "recipes-set-fit.json").read_text())["runs"]
    assert sorted(r["name"] for r in runs) == ["d2-scratch-gn@0.02", "maskinit-default", "maskinit-fit-off"]


def test_fit_table_marks_the_keys_the_default_does_not_fit_on_a_set(tmp_path):
    """The key-by-key table: a fitted key's arm as mask AP minus the default's, "-" where it did not run,
    "not fitted" where the default keeps the preset's values on the set (its run would be the default's)."""
    import fit_table

    from maskinit.data.synthetic import generate_coco_dataset

    data = generate_coco_dataset(tmp_path / "train", 8, seed=1)  # fitted here: pixel statistics, mask pool
    result = {
        "data": {"train_json": str(data.json_file), "train_images": str(data.image_root)},
        "table": {"maskinit-default": {"seeds": [0, 1, 2], "mask_ap": [20.0, 22.0, 21.0]},
                  "maskinit-fit-preset-pixels": {"seeds": [0], "mask_ap": [18.5]},
                  # paired by seed (0 and 2); seed 3 has no default run and is left out
                  "maskinit-fit-preset-mask-pool": {"seeds": [2, 0, 3], "mask_ap": [22.0, 19.0, 50.0]}},
    }
    header, _, *rows = fit_table.ablation_table({"small": result})
    assert header == "| switched back to the preset | small |"
    cells = {row.split(" | ")[0].strip("| "): row.split(" | ")[1].strip(" |") for row in rows}
    assert cells["pixel statistics"] == "-1.5"
    assert cells["mask pool"] == "+0.0 (-1.0 to +1.0, 2 seeds)"
    assert {cells[key] for key in ("input size", "aspect ratios", "anchor sizes", "sampled RoIs")} == {"not fitted"}


def test_equal_time_gives_maskinit_the_comparators_training_time_and_reports_both(monkeypatch, tmp_path):
    """equal_time.py: the comparator trains its iterations first; maskinit's `--time` is the comparator's
    s/iter times its iterations, in a form `maskinit train --time` reads; the report pairs both sides."""
    import equal_time

    from maskinit.budget import parse_duration
    from maskinit.data.synthetic import generate_coco_dataset

    (tmp_path / "set").mkdir()
    for split in ("train", "val"):
        data = generate_coco_dataset(tmp_path / "gen" / split, 4, seed=1)
        Path(data.json_file).rename(tmp_path / "set" / f"{split}.json")
        Path(data.image_root).rename(tmp_path / "set" / split)
    commands = []

    def stand_in(command, log, timeout=None, append=False):
        commands.append(command)
        out = Path(command[command.index("--output-dir") + 1] if "--output-dir" in command else command[3])
        out.mkdir(parents=True)
        if "--time" in command:
            (out / "run_summary.json").write_text(json.dumps({
                "iterations": 480, "seconds_per_iter": 0.25,
                "time_budget": {"seconds": 120.0, "trained_seconds": 121.5, "planned_iter": 520,
                                "replans": [[26, 500]]},
            }))
            (out / "eval.json").write_text(json.dumps({"bbox": {"AP": 30.0}, "segm": {"AP": 27.0}}))
        else:
            (out / "result.json").write_text(json.dumps({"seconds_per_iter": 0.3, "mask_ap": 18.0, "box_ap": 20.0}))
        return 0

    monkeypatch.setattr(equal_time.common, "run", stand_in)
    monkeypatch.setattr(equal_time.common, "comparator_settings", lambda *a: ["INPUT.MIN_SIZE_TRAIN", "(160,)"])
    monkeypatch.setattr(sys, "argv", ["equal_time.py", "--data", f"small={tmp_path / 'set'}", "--lr", "0.04",
                                      "--seeds", "0", "--runs-dir", str(tmp_path / "runs"),
                                      "--results-dir", str(tmp_path / "results")])
    equal_time.main()
    stock, ours = commands
    assert stock[stock.index("--lr") + 1] == "0.04" and stock[-2:] == ["INPUT.MIN_SIZE_TRAIN", "(160,)"]
    assert parse_duration(ours[ours.index("--time") + 1]) == pytest.approx(0.3 * 400)
    assert "--max-iter" not in ours  # the iterations are maskinit's own choice for that time
    report = json.loads((tmp_path / "results" / "equal-time-small.json").read_text())
    (row,) = report["rows"]
    assert row["comparator"]["training_seconds"] == pytest.approx(120.0)
    assert row["maskinit"] == {"mask_ap": 27.0, "box_ap": 30.0, "iterations": 480, "seconds_per_iter": 0.25,
                               "training_seconds": 120.0, "wall_training_seconds": 121.5, "planned_iter": 520}
    assert "| 0 | 18.00 | 20.00 | 120 | 27.00 | 30.00 | 120 | 122 | 480 (520) | 1.50x |" in (
        tmp_path / "results" / "equal-time-small.md").read_text()


def test_equal_time_takes_the_comparators_best_lr_from_the_recipe_comparison(tmp_path):
    import equal_time

    (tmp_path / "recipes-small-fit.json").write_text(json.dumps({"comparator_best": [41.6, "d2-scratch-gn@0.04"]}))
    assert equal_time.best_lr(tmp_path, "small", "-fit") == "0.04"
    with pytest.raises(SystemExit, match="no comparator result"):
        equal_time.best_lr(tmp_path, "small", "")


def test_a_run_cache_copied_to_another_runs_dir_is_the_same_cache():
    """A run's command names its own folder (SET/NAME/seedN); the same run in a copied runs dir, even one whose
    name starts with the checkout's, compares equal, and another run's folder or seed does not."""
    from recipes import ROOT, comparable

    def command(runs: Path, seed: int = 0) -> list[str]:
        out = runs / "balloons" / "maskinit-default" / f"seed{seed}" / "out"
        return [str(ROOT / ".venv" / "bin" / "python"), "-m", "maskinit", "train", "--output-dir", str(out),
                "--seed", str(seed), f"OUTPUT_DIR={out}"]

    here = Path(f"{ROOT}runs2") / "balloons" / "maskinit-default" / "seed0"
    assert comparable(command(Path(f"{ROOT}runs")), here) == comparable(command(Path(f"{ROOT}runs2")), here)
    assert comparable(command(Path("/elsewhere/cache")), here) == comparable(command(Path(f"{ROOT}runs2")), here)
    assert comparable(command(Path(f"{ROOT}runs2")), here)[0] == "<root>/.venv/bin/python"
    assert comparable(command(Path(f"{ROOT}runs"), seed=1), here) != comparable(command(Path(f"{ROOT}runs2")), here)
