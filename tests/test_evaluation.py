"""COCO evaluation: backends agree, Detectron2's evaluator runs end to end, weights are checked."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import replay_detector, save_untrained_checkpoint
from detectron2.evaluation import coco_evaluation

from maskinit import MaskinitError, load_config
from maskinit.data import apply_dataset_to_cfg, generate_coco_dataset, register_coco_dataset
from maskinit.data.synthetic import CLASS_NAMES, synthetic_predictions
from maskinit.evaluation import (
    BACKENDS,
    FASTER_COCO_EVAL,
    PYCOCOTOOLS,
    build_evaluator,
    coco_eval_backend,
    coco_summary_stats,
    evaluate,
    evaluate_model,
    load_weights,
    max_backend_difference,
)
from maskinit.model import build_model

DATASET = "maskinit_test_eval"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    files = generate_coco_dataset(tmp_path_factory.mktemp("eval"), 3, seed=11)
    return files, register_coco_dataset(DATASET, files.json_file, files.image_root)


@pytest.fixture(scope="module")
def cfg(dataset):
    cfg = load_config(preset="tiny", overrides=["TEST.DETECTIONS_PER_IMAGE", "10"])
    return apply_dataset_to_cfg(cfg, dataset[1], dataset[1])


@pytest.fixture(scope="module")
def checkpoint(cfg, tmp_path_factory):
    """An untrained model saved the way Detectron2's trainer saves one."""
    return save_untrained_checkpoint(cfg, tmp_path_factory.mktemp("weights"))


def test_default_backend_is_faster_coco_eval_when_installed():
    installed = importlib.util.find_spec("faster_coco_eval") is not None
    assert coco_eval_backend() in BACKENDS
    assert coco_eval_backend() == (FASTER_COCO_EVAL if installed else PYCOCOTOOLS)


def test_faster_coco_eval_matches_pycocotools(dataset):
    files, _ = dataset
    results = synthetic_predictions(files.json_file, seed=2)
    reference = coco_summary_stats(files.json_file, results, "segm", PYCOCOTOOLS)
    assert 0.05 < reference[0] < 0.95  # a mix of hits and misses, so the comparison means something
    assert max_backend_difference(files.json_file, results) < 1e-4


def close(first: float, second: float) -> bool:
    return (math.isnan(first) and math.isnan(second)) or abs(first - second) < 1e-2  # percent: 1e-4 of AP


def test_coco_evaluator_gives_the_same_ap_on_both_backends(cfg, dataset):
    files, _ = dataset
    detector = replay_detector(files.json_file)
    fast = evaluate_model(detector, cfg, DATASET, backend=FASTER_COCO_EVAL)
    assert coco_evaluation.COCOeval_opt.__module__.startswith("faster_coco_eval")
    official = evaluate_model(detector, cfg, DATASET, backend=PYCOCOTOOLS)
    assert set(fast) == set(official) == {"bbox", "segm"}
    assert official["segm"]["AP"] > 5
    for task in official:
        assert set(fast[task]) == set(official[task])
        for metric, value in official[task].items():
            assert close(fast[task][metric], value), (task, metric, fast[task][metric], value)


def test_build_evaluator_records_its_backend(cfg, dataset):
    assert build_evaluator(cfg, DATASET).coco_eval_backend == coco_eval_backend()
    assert build_evaluator(cfg, DATASET, backend=PYCOCOTOOLS)._use_fast_impl is False
    with pytest.raises(MaskinitError, match="not available"):
        build_evaluator(cfg, DATASET, backend="nonsense")


@pytest.mark.slow
def test_evaluate_end_to_end_writes_results(cfg, checkpoint, tmp_path):
    results = evaluate(
        cfg, checkpoint, DATASET, output_dir=tmp_path / "out", json_out=tmp_path / "metrics.json",
        vis_dir=tmp_path / "vis", vis_count=2,
    )
    assert set(results) == {"bbox", "segm"}
    for task in results:
        assert set(METRICS) <= set(results[task])
        assert all(isinstance(value, float) for value in results[task].values())
        per_class = {key[3:] for key in results[task] if key.startswith("AP-")}
        assert per_class in (set(), set(CLASS_NAMES))  # per-class AP when there were predictions
    written = json.loads((tmp_path / "metrics.json").read_text())
    expected = {t: {k: (None if math.isnan(v) else v) for k, v in m.items()} for t, m in results.items()}
    assert written == expected
    assert (tmp_path / "out" / "coco_instances_results.json").is_file()
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2


@pytest.mark.slow
def test_evaluate_refuses_unknown_dataset_and_class_mismatch(cfg, checkpoint):
    with pytest.raises(MaskinitError, match="unknown dataset"):
        evaluate(cfg, checkpoint, "maskinit_no_such_dataset")
    other = cfg.clone()
    other.MODEL.ROI_HEADS.NUM_CLASSES = 3
    with pytest.raises(MaskinitError, match=r"CLASS_NAMES \(5\).*NUM_CLASSES \(3\)"):
        evaluate(other, checkpoint, DATASET)
    other.MASKINIT.CLASS_NAMES, other.MASKINIT.CLASS_IDS = [], []  # a config written before they were stored
    with pytest.raises(MaskinitError, match="has 5 classes"):
        evaluate(other, checkpoint, DATASET)


def one_line_error(model, weights) -> str:
    with pytest.raises(MaskinitError) as error:
        load_weights(model, weights)
    message = str(error.value)
    assert "\n" not in message and str(weights) in message
    return message


@pytest.mark.slow
def test_bad_weights_are_named_in_one_line(cfg, checkpoint, tmp_path):
    model = build_model(cfg, data_dependent=False)  # as eval and predict build it: the weights replace any init
    assert "not found" in one_line_error(model, tmp_path / "absent.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert "cannot read weights" in one_line_error(model, truncated)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    assert "cannot read weights" in one_line_error(model, text)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"classifier.weight": torch.zeros(2, 2)}}, foreign)
    assert "do not match this model" in one_line_error(model, foreign)


@pytest.mark.slow
def test_weights_of_another_config_do_not_match(cfg, checkpoint):
    other = cfg.clone()
    other.MODEL.ROI_HEADS.NUM_CLASSES = 3
    message = one_line_error(build_model(other, data_dependent=False), checkpoint)
    assert "wrong shape" in message


@pytest.mark.slow
def test_matching_weights_load_exactly(cfg, checkpoint):
    saved = torch.load(checkpoint, map_location="cpu")["model"]
    torch.manual_seed(1)
    model = load_weights(build_model(cfg, data_dependent=False), checkpoint)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
