"""The data fit (`maskinit/data/fit.py`): what each mode fits, at what estimated cost, and that the config
stays the user's (explicit keys win, nothing is changed in place)."""

from __future__ import annotations

import numpy as np
import pytest

from maskinit.config import load_config
from maskinit.data.analysis import analyze_coco, scaled_box_sides
from maskinit.data.cost import relative_cost
from maskinit.data.fit import (
    ANCHOR_REACH,
    DETAILED_MASK_POOL,
    FINEST_STRIDE,
    LARGE_OBJECT_PERCENTILE,
    MASK_POOL_KEY,
    MIN_OBJECT_PIXELS,
    SAFE_STEP_COST,
    SMALL_OBJECT_PERCENTILE,
    FitReport,
    anchor_sizes,
    apply_fits,
    aspect_ratios,
    fit_config,
    fit_report,
    fit_to_data,
)
from maskinit.errors import MaskinitError
from maskinit.run_options import DataOptions
from tests.test_analysis import fitted, flat, grid_boxes, write_coco


@pytest.fixture(scope="module")
def tiny():
    return load_config(preset="tiny")


@pytest.fixture(scope="module")
def r50():
    return load_config(preset="r50-fpn")


def with_mode(cfg, mode):
    result = cfg.clone()
    result.MASKINIT.FIT = mode
    return result


# ---------------------------------------------------------------------------------------------
# Pixel statistics


def test_a_channel_constant_up_to_rounding_is_not_amplified(tmp_path, tiny):
    """8-bit colour images whose first channel is 7 everywhere: its std is ~1e-15 from rounding, and dividing
    by it would multiply any other value there by ~1e15 at predict time."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(3):
        image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        image[:, :, 0] = 7
        images.append(image)
    analysis = analyze_coco(*write_coco(tmp_path, images, [[(2, 2, 10, 10)]] * 3))
    assert analysis.pixel_std[0] < 1e-6  # what the statistics give
    std = fitted(fit_config(tiny, analysis))["MODEL.PIXEL_STD"]
    assert std[0] == pytest.approx(max(std[1:]), rel=1e-5) and min(std) > 50


def test_a_near_constant_channel_gets_a_floor(tmp_path, tiny):
    rng = np.random.default_rng(1)
    images = []
    for _ in range(3):
        image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        image[:, :, 2] = 100
        image[0, 0, 2] = 101  # one pixel in 2000 differs
        images.append(image)
    fits = fit_config(tiny, analyze_coco(*write_coco(tmp_path, images, [[(2, 2, 10, 10)]] * 3)))
    std = next(fit for fit in fits if fit.key == "MODEL.PIXEL_STD")
    assert std.value[2] >= 0.01 * max(std.value[:2]) * 0.999 and "raised to" in std.reason


# ---------------------------------------------------------------------------------------------
# Input sizes


def test_safe_keeps_the_input_when_the_objects_are_large_enough(tmp_path, tiny):
    analysis = analyze_coco(*write_coco(tmp_path, [(256, 256)] * 3, [grid_boxes(4, 60, 70, columns=2)] * 3))
    assert not {key for key in fitted(fit_config(tiny, analysis)) if key.startswith("INPUT.M")}


def test_safe_zooms_in_for_small_objects_within_the_budget_and_full_goes_further(tmp_path, tiny):
    analysis = analyze_coco(*write_coco(tmp_path, [(1024, 1024)] * 3, [grid_boxes(20, 14, 60)] * 3))
    safe = fitted(fit_config(with_mode(tiny, "safe"), analysis))
    assert 128 < safe["INPUT.MIN_SIZE_TEST"] == safe["INPUT.MAX_SIZE_TEST"] < 1024
    assert safe["INPUT.MIN_SIZE_TRAIN"] == (safe["INPUT.MIN_SIZE_TEST"],)
    new, fits = apply_fits(tiny, fit_config(tiny, analysis))
    assert relative_cost(analysis, new, tiny) <= SAFE_STEP_COST + 1e-9
    full_fits = fit_config(with_mode(tiny, "full"), analysis)
    full = fitted(full_fits)
    size, max_size = full["INPUT.MIN_SIZE_TEST"], full["INPUT.MAX_SIZE_TEST"]
    assert size > safe["INPUT.MIN_SIZE_TEST"]

    def small(m, big):
        return np.percentile(scaled_box_sides(analysis, m, big), SMALL_OBJECT_PERCENTILE)

    assert small(size, max_size) >= MIN_OBJECT_PIXELS > small(size - 1, size - 1)  # the smallest size that keeps them
    report = fit_report(tiny, new, analysis, fits)
    assert report.step_cost <= SAFE_STEP_COST + 1e-9
    assert any(line.startswith("--fit full would train with input") for line in report.held_back)


def test_safe_never_zooms_past_the_images_own_size(tmp_path, tiny):
    # 160-px images with 4-px objects: the preset shrinks them to 128; the safe zoom stops at their own size
    analysis = analyze_coco(*write_coco(tmp_path, [(160, 160)] * 3, [grid_boxes(20, 4, 12)] * 3))
    values = fitted(fit_config(tiny, analysis))
    assert values["INPUT.MIN_SIZE_TEST"] <= 160


def test_safe_keeps_the_preset_for_images_smaller_than_it(tmp_path, r50):
    analysis = analyze_coco(*write_coco(tmp_path, [(128, 128)] * 3, [grid_boxes(4, 20, 30, columns=4)] * 3))
    assert not {key for key in fitted(fit_config(r50, analysis)) if key.startswith("INPUT.M")}
    # full trains small images at their own size (never upscaled), the preset's jitter kept
    full = fitted(fit_config(with_mode(r50, "full"), analysis))
    assert full["INPUT.MIN_SIZE_TEST"] == full["INPUT.MAX_SIZE_TEST"] == full["INPUT.MAX_SIZE_TRAIN"] == 128
    assert max(full["INPUT.MIN_SIZE_TRAIN"]) == 128 and min(full["INPUT.MIN_SIZE_TRAIN"]) == round(640 * 128 / 800)


# ---------------------------------------------------------------------------------------------
# Anchors and aspect ratios


def test_anchors_keep_the_presets_and_add_a_size_for_large_objects():
    preset = [[16], [32], [64], [128], [256]]
    inside = np.array([20.0] * 10 + [60.0] * 80 + [200.0] * 10)
    assert anchor_sizes(preset, inside)[0] == preset
    small = np.array([4.0] * 10 + [30.0] * 90)  # small objects keep the preset's anchors
    sizes, reason = anchor_sizes(preset, small)
    assert sizes == preset and "kept" in reason
    large = np.array([60.0] * 90 + [700.0] * 10)
    sizes, reason = anchor_sizes(preset, large)
    assert sizes == [[16, 32], [32, 64], [64, 128], [128, 256], [256, 512]] and "large objects" in reason
    # every level keeps as many sizes (Detectron2's RPN head wants the same count per level)
    for sides in (inside, small, large):
        assert len({len(level) for level in anchor_sizes(preset, sides)[0]}) == 1


def test_anchors_cover_large_objects_on_large_inputs(tmp_path, tiny):
    """Large objects keep anchors as large as they are: the largest anchor reaches the p98 box side."""
    boxes = [[(10, 10, 300 + 40 * i, 280 + 30 * i), (0, 0, 450, 400), (200, 200, 12, 12)] for i in range(4)]
    analysis = analyze_coco(*write_coco(tmp_path, [(512, 512)] * 4, boxes))
    values = fitted(fit_config(tiny, analysis))
    size = values.get("INPUT.MIN_SIZE_TEST", 128)
    sides = scaled_box_sides(analysis, size, values.get("INPUT.MAX_SIZE_TEST", 128))
    anchors = flat(values.get("MODEL.ANCHOR_GENERATOR.SIZES", tiny.MODEL.ANCHOR_GENERATOR.SIZES))
    assert max(anchors) * ANCHOR_REACH >= np.percentile(sides, 98)
    assert min(anchors) == flat(tiny.MODEL.ANCHOR_GENERATOR.SIZES)[0]  # the preset's smallest is kept


def test_large_objects_get_a_finer_mask_pool_within_the_budget_and_full_gives_them_all_of_it(tmp_path, tiny):
    # 512-px images of 200-px objects: 50 px at the preset's 128, 12.5 cells of stride 4 for its 7x7 pool
    analysis = analyze_coco(*write_coco(tmp_path, [(512, 512)] * 3, [grid_boxes(4, 200, 250, columns=2)] * 3))
    safe_fits = fit_config(with_mode(tiny, "safe"), analysis)
    assert fitted(safe_fits)[MASK_POOL_KEY] == 13  # a bin per cell; the input stays (no small objects)
    new, _ = apply_fits(tiny, safe_fits)
    assert relative_cost(analysis, new, tiny) <= SAFE_STEP_COST + 1e-9
    reason = next(fit.reason for fit in safe_fits if fit.key == MASK_POOL_KEY)
    assert f"p{LARGE_OBJECT_PERCENTILE} of box sides 50.0 px" in reason and f"stride {FINEST_STRIDE}" in reason
    assert MASK_POOL_KEY not in fitted(fit_config(tiny, analysis, keep={MASK_POOL_KEY}))  # the user's own is kept
    huge = analyze_coco(*write_coco(tmp_path / "huge", [(512, 512)] * 3, [grid_boxes(2, 400, 10)] * 3))
    assert fitted(fit_config(with_mode(tiny, "full"), huge))[MASK_POOL_KEY] == DETAILED_MASK_POOL  # capped


def test_the_input_for_small_objects_comes_first_and_the_report_says_what_full_adds_to_the_pool(tmp_path, tiny):
    # the same large objects beside a few small ones (12 px at 512, 3 at 128): the input takes the budget first
    boxes = [grid_boxes(4, 200, 250, columns=2) + [(5 + 15 * i, 480, 12, 12) for i in range(3)]] * 3
    analysis = analyze_coco(*write_coco(tmp_path, [(512, 512)] * 3, boxes))
    safe_fits = fit_config(with_mode(tiny, "safe"), analysis)
    safe = fitted(safe_fits)
    assert safe["INPUT.MIN_SIZE_TEST"] > 128
    full = fitted(fit_config(with_mode(tiny, "full"), analysis))
    assert safe.get(MASK_POOL_KEY, 7) < full[MASK_POOL_KEY] == DETAILED_MASK_POOL
    new, applied = apply_fits(tiny, safe_fits)
    assert relative_cost(analysis, new, tiny) <= SAFE_STEP_COST + 1e-9
    report = fit_report(tiny, new, analysis, applied)
    line = next(text for text in report.held_back if "and a 14x14 mask pool (28x28 masks) for the large" in text)
    # what each held-back part would cost on its own on top of the safe fit, and the key that asks for the pool
    costs = [float(part.rsplit(" ", 1)[1].rstrip("x")) for part in line.split("; alone, ")[1].split(", ")]
    total = float(line.split("estimated ")[1].split("x")[0])
    assert "the input " in line and "the mask pool (MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION 14) " in line
    assert len(costs) == 2 and all(report.step_cost < cost < total for cost in costs)


def test_a_narrower_mask_head_buys_a_finer_pool_within_the_same_budget(tmp_path, tiny):
    # the large and small objects above: the input takes the budget first, the pool gets what is left; a mask
    # head of 32 channels (set by the user, kept) costs less per bin, so more bins fit in what is left
    boxes = [grid_boxes(4, 200, 250, columns=2) + [(5 + 15 * i, 480, 12, 12) for i in range(3)]] * 3
    analysis = analyze_coco(*write_coco(tmp_path, [(512, 512)] * 3, boxes))
    narrow = tiny.clone()
    narrow.defrost()
    narrow.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    keep = {"MODEL.ROI_MASK_HEAD.CONV_DIM"}
    wide_pool = fitted(fit_config(tiny, analysis)).get(MASK_POOL_KEY, 7)
    narrow_fits = fit_config(narrow, analysis, keep=keep)
    assert wide_pool < fitted(narrow_fits)[MASK_POOL_KEY] <= DETAILED_MASK_POOL
    new, _ = apply_fits(narrow, narrow_fits, keep=keep)
    assert new.MODEL.ROI_MASK_HEAD.CONV_DIM == 32
    assert relative_cost(analysis, new, narrow) <= SAFE_STEP_COST + 1e-9


def test_small_objects_keep_the_presets_mask_pool(tmp_path, tiny):
    analysis = analyze_coco(*write_coco(tmp_path, [(256, 256)] * 3, [grid_boxes(20, 24, 40, columns=5)] * 3))
    for mode in ("safe", "full"):  # 12 px at 128: fewer cells than the 7x7 pool has bins
        assert MASK_POOL_KEY not in fitted(fit_config(with_mode(tiny, mode), analysis)), mode


def test_elongated_objects_add_their_aspect_ratio_and_keep_the_presets():
    ratios, reason = aspect_ratios([0.5, 1.0, 2.0], np.linspace(2.0, 3.8, 50))
    assert ratios[:3] == [0.5, 1.0, 2.0] and len(ratios) == 4 and 3.5 < ratios[3] < 3.8 and "added" in reason
    assert aspect_ratios([0.5, 1.0, 2.0], np.linspace(0.6, 1.8, 50))[0] == [0.5, 1.0, 2.0]
    wide = aspect_ratios([0.5, 1.0, 2.0], np.linspace(0.2, 1.0, 50))[0]
    assert wide[0] < 0.3 and wide[1:] == [0.5, 1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# Crowded images


def test_crowded_images_get_detections_and_test_proposals_and_rois_within_the_budget(tmp_path, tiny):
    boxes = [grid_boxes(160, 12, 24, columns=20), grid_boxes(160, 12, 24, columns=20), grid_boxes(3, 12, 24)]
    analysis = analyze_coco(*write_coco(tmp_path, [(512, 512)] * 3, boxes))
    values = fitted(fit_config(tiny, analysis))
    assert values["TEST.DETECTIONS_PER_IMAGE"] >= 160
    assert values["MODEL.RPN.POST_NMS_TOPK_TEST"] >= 2 * values["TEST.DETECTIONS_PER_IMAGE"]
    assert values["MODEL.RPN.PRE_NMS_TOPK_TEST"] >= values["MODEL.RPN.POST_NMS_TOPK_TEST"]
    safe_batch = values["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"]
    assert tiny.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE < safe_batch
    new, fits = apply_fits(tiny, fit_config(tiny, analysis))
    assert relative_cost(analysis, new, tiny) <= SAFE_STEP_COST + 1e-9
    full = fitted(fit_config(with_mode(tiny, "full"), analysis))
    assert full["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] * tiny.MODEL.ROI_HEADS.POSITIVE_FRACTION >= 128 > safe_batch / 4
    topk = "MODEL.RPN.POST_NMS_TOPK_TRAIN"
    assert full[topk] > values[topk] > tiny.MODEL.RPN.POST_NMS_TOPK_TRAIN
    assert values["MODEL.RPN.BATCH_SIZE_PER_IMAGE"] * tiny.MODEL.RPN.POSITIVE_FRACTION >= 160
    report = fit_report(tiny, new, analysis, fits)
    assert any("sampled RoIs per image" in line for line in report.held_back)


def test_sparse_images_keep_the_presets_detections_and_sampling(tmp_path, tiny):
    analysis = analyze_coco(*write_coco(tmp_path, [(128, 128)] * 3, [grid_boxes(3, 20, 30)] * 3))
    values = fitted(fit_config(tiny, analysis))
    assert "TEST.DETECTIONS_PER_IMAGE" not in values
    assert not {key for key in values if key.startswith("MODEL.RPN.") or key.startswith("MODEL.ROI_HEADS.")}


def test_lsj_augmentation_gets_its_square_from_the_training_size(tmp_path, tiny):
    analysis = analyze_coco(*write_coco(tmp_path, [(1024, 1024)] * 2, [grid_boxes(20, 14, 60)] * 2))
    lsj = tiny.clone()
    lsj.MASKINIT.AUGMENT.NAME = "lsj"
    values = fitted(fit_config(lsj, analysis))
    assert values["MASKINIT.AUGMENT.LSJ_IMAGE_SIZE"] == values["INPUT.MAX_SIZE_TRAIN"] > 128
    assert "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE" not in fitted(fit_config(tiny, analysis))


def test_lsj_is_costed_at_the_square_the_fit_trains_so_safe_stays_within_its_budget(tmp_path, tiny):
    """With large-scale jitter on, the preset's square (Detectron2's 1024) would price the preset as if it
    trained 1024-px squares and any larger input as nearly free: the fit prices both at the training max size,
    so safe stays within its s/iter budget, and a square the user sets is priced as set."""
    analysis = analyze_coco(*write_coco(tmp_path, [(1024, 1024)] * 2, [grid_boxes(20, 14, 60)] * 2))
    lsj = tiny.clone()
    lsj.MASKINIT.AUGMENT.NAME = "lsj"
    plain = fitted(fit_config(tiny, analysis))
    new, fits = apply_fits(lsj, fit_config(lsj, analysis))
    assert new.MASKINIT.AUGMENT.LSJ_IMAGE_SIZE == new.INPUT.MAX_SIZE_TRAIN <= plain["INPUT.MAX_SIZE_TRAIN"]
    report = fit_report(lsj, new, analysis, fits)
    assert 1.0 < report.step_cost <= SAFE_STEP_COST + 1e-9 and 1.0 < report.memory_cost < 2.0  # not against 1024 px
    tied = lsj.clone()
    tied.MASKINIT.AUGMENT.LSJ_IMAGE_SIZE = 128
    assert relative_cost(analysis, new, tied) == pytest.approx(report.step_cost)
    # no input fitted (large objects): the square is still the training size, not the preset's 1024
    large = analyze_coco(*write_coco(tmp_path / "large", [(256, 256)] * 3, [grid_boxes(4, 60, 70, columns=2)] * 3))
    assert fitted(fit_config(lsj, large))["MASKINIT.AUGMENT.LSJ_IMAGE_SIZE"] == 128
    # the user's square is kept and priced as it is
    kept = fitted(fit_config(lsj, analysis, keep={"MASKINIT.AUGMENT.LSJ_IMAGE_SIZE"}))
    assert "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE" not in kept and "INPUT.MAX_SIZE_TRAIN" in kept


# ---------------------------------------------------------------------------------------------
# Modes, reports, the config stays the user's


@pytest.fixture()
def colour_set(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (1024, 1280, 3), dtype=np.uint8) for _ in range(3)]
    return analyze_coco(*write_coco(tmp_path, images, [grid_boxes(60, 10, 100, columns=10)] * 3))


@pytest.mark.slow
def test_off_fits_nothing_and_an_unknown_mode_is_refused(tiny, colour_set):
    assert fit_config(with_mode(tiny, "off"), colour_set) == []
    legacy = tiny.clone()
    legacy.MASKINIT.FIT_TO_DATA = False
    assert fit_config(legacy, colour_set) == []
    with pytest.raises(MaskinitError, match="unknown fit mode 'most'"):
        fit_config(tiny, colour_set, mode="most")


@pytest.mark.slow
def test_fit_config_and_apply_fits_do_not_change_the_config(r50, colour_set):
    before = r50.dump()
    fits = fit_config(r50, colour_set)
    assert r50.dump() == before
    new, applied = apply_fits(r50, fits)
    assert r50.dump() == before and new is not r50
    assert [fit.key for fit in applied] == [fit.key for fit in fits]
    frozen = r50.clone()
    frozen.freeze()
    assert apply_fits(frozen, fits)[0].is_frozen()


@pytest.mark.slow
def test_explicit_keys_win(tiny, colour_set):
    keep = {"INPUT.MIN_SIZE_TEST", "TEST.DETECTIONS_PER_IMAGE", "MODEL.ANCHOR_GENERATOR.SIZES"}
    fits = fit_config(tiny, colour_set)
    assert keep & {fit.key for fit in fits}  # each would be fitted
    kept = fit_config(tiny, colour_set, keep=keep)
    assert keep.isdisjoint(fit.key for fit in kept)
    new, applied = apply_fits(tiny, fits, keep=keep)
    assert new.TEST.DETECTIONS_PER_IMAGE == tiny.TEST.DETECTIONS_PER_IMAGE and keep.isdisjoint(f.key for f in applied)


@pytest.mark.slow
def test_fit_to_data_reports_mode_cost_and_rows(tmp_path, tiny):
    json_file, image_dir = write_coco(tmp_path, [(1024, 1024)] * 3, [grid_boxes(20, 14, 60)] * 3)
    data = DataOptions(str(json_file), str(image_dir))
    new, report = fit_to_data(tiny, data)
    assert isinstance(report, FitReport) and report.mode == "safe" and report.rows
    assert 1.0 < report.step_cost <= SAFE_STEP_COST + 1e-9 and report.memory_cost > 1.0
    assert report.lines()[0].startswith("data fit safe: estimated") and report.to_dict()["mode"] == "safe"
    assert new.INPUT.MIN_SIZE_TEST == dict((row[0], row[2]) for row in report.rows)["INPUT.MIN_SIZE_TEST"]
    same, off = fit_to_data(with_mode(tiny, "off"), data)
    assert same is not None and off.mode == "off" and off.rows == () and "data fit off" in off.lines()[0]
    _, full = fit_to_data(with_mode(tiny, "full"), data)
    assert full.step_cost > report.step_cost and not full.held_back
