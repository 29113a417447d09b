"""`maskinit export`: the exported file is the trained model. Runs trained here for a few iterations with
each norm (GN, GNWS, BN, SyncBN), gray (8- and 16-bit), colour and 4-band data, and with a weight
average (EMA), are exported as TorchScript and ONNX; the exported file, run by `maskinit.deploy`
(torch / onnxruntime, CPU), and Detectron2's model (`maskinit predict`'s path) are run on the same
images and must agree: the same detections, boxes within 1e-3 relative, scores, classes, and each
mask with IoU >= 0.99. The runner also runs in a process where Detectron2 (and for ONNX torch) cannot
be imported. Then the settings carried in the file, the presets and channel counts, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import save_untrained_checkpoint
from test_image_kinds import kind_set
from typer.testing import CliRunner

from maskinit import MaskinitError, load_config
from maskinit.cli import app
from maskinit.data.images import read_image
from maskinit.data.mapper import model_image
from maskinit.data.synthetic import generate_coco_dataset
from maskinit.deploy import load
from maskinit.export import deployable_model, export_model
from maskinit.predict import Detectron2Predictor
from maskinit.train import DataOptions, TrainOptions, train
from maskinit.visualize import _categories, predict

pytestmark = pytest.mark.slow

FORMATS = ("torchscript", "onnx")
FAST = ["SOLVER.WARMUP_ITERS", "2", "TEST.DETECTIONS_PER_IMAGE", "10"]
# name -> (data kind, norm, extra config keys)
RUNS = {
    "gn": ("rgb8", "GN", []),
    "gnws-band4": ("band4-tiff", "GNWS", []),
    "bn-gray8": ("gray8-png", "BN", []),
    "syncbn-gray16": ("gray16-png", "SyncBN", []),
    "ema": (
        "rgb8",
        "GN",
        ["MASKINIT.EMA.ENABLED", "True", "MASKINIT.EMA.DECAY", "0.5", "MASKINIT.EMA.WARMUP_ITERS", "0"],
    ),
}
ITERATIONS = 10
runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# Trained runs and their exports (trained once per session, on first use)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = {}

    def get(name: str) -> tuple[Path, DataOptions]:
        if name not in cache:
            kind, norm, extra = RUNS[name]
            root = tmp_path_factory.mktemp(name)
            if kind == "rgb8":
                train_set = generate_coco_dataset(root / "train", 4, seed=1)
                val_set = generate_coco_dataset(root / "val", 2, seed=2, first_image_id=100)
                data = DataOptions(str(train_set.json_file), str(train_set.image_root), str(val_set.json_file),
                                   str(val_set.image_root))
            else:
                data = kind_set(root, kind)
            out = root / "run"
            options = TrainOptions(output_dir=str(out), data=DataOptions(**vars(data)), max_iter=ITERATIONS,
                                   checkpoint_period=ITERATIONS, seed=0, progress=False)
            summary = train(load_config(preset="tiny", norm=norm, overrides=[*FAST, *extra]), options)
            assert summary["status"] == "finished"
            cache[name] = (out, data)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    cache = {}

    def get(name: str, fmt: str):
        if (name, fmt) not in cache:
            run, _ = trained(name)
            path = tmp_path_factory.mktemp(f"{name}-{fmt}") / f"model.{'onnx' if fmt == 'onnx' else 'ts'}"
            cache[name, fmt] = export_model(load_config(run / "config.yaml"), run / "model_final.pth", fmt, path)
        return cache[name, fmt]

    return get


def detectron2_predictor(run: Path) -> Detectron2Predictor:
    cfg = load_config(run / "config.yaml")
    return Detectron2Predictor(cfg, run / "model_final.pth", 0.0, *_categories(cfg))


def set_threshold(predictor: Detectron2Predictor, threshold: float) -> None:
    predictor.model.roi_heads.box_predictor.test_score_thresh = threshold


def separated_threshold(scores: np.ndarray, detections_per_image: int) -> float | None:
    """A score threshold in a clear gap between the scores a model gives (at threshold 0) and below the
    top-k cut, so that float rounding of two runtimes cannot move a detection across it."""
    ranked = sorted(scores.tolist(), reverse=True)[: detections_per_image - 1] + [0.0]
    gaps = [(ranked[i] - ranked[i + 1], i) for i in range(len(ranked) - 1)]
    wide = [gap for gap in gaps if gap[0] > 2e-3]
    if not wide:
        return None
    _, i = max(wide, key=lambda gap: (gap[1] >= 2, gap[0]))  # several detections above it when the gaps allow
    return (ranked[i] + ranked[i + 1]) / 2


def comparison_images(data: DataOptions) -> list[tuple[str, np.ndarray]]:
    """The validation images as read, and each resized to 150 x 200 (the model resizes it back to 96 x 128:
    the runner's resize against Detectron2's)."""
    images = []
    for path in sorted(Path(data.val_images).iterdir()):
        image = read_image(path)
        images.append((str(path), image))
        resized = cv2.resize(image, (200, 150), interpolation=cv2.INTER_LINEAR)
        images.append((f"{path} at 200x150", resized.reshape(150, 200, image.shape[2])))
    return images


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def assert_same_detections(expected, found, where: str) -> int:
    """`found` (the runner's Detections) against `expected` (Detectron2's Instances): one partner each,
    boxes within 1e-3 relative (or 0.01 px), scores within 1e-4, the same class, mask IoU >= 0.99."""
    boxes = expected.pred_boxes.tensor.numpy()
    scores, classes = expected.scores.numpy(), expected.pred_classes.numpy()
    masks = expected.pred_masks.numpy()
    assert len(found) == len(scores), (where, len(found), len(scores))
    unused = set(range(len(found)))
    for i in range(len(scores)):
        candidates = [j for j in unused if found.classes[j] == classes[i]]
        assert candidates, (where, i)
        j = min(candidates, key=lambda j: np.abs(found.boxes[j] - boxes[i]).max())
        unused.remove(j)
        np.testing.assert_allclose(found.boxes[j], boxes[i], rtol=1e-3, atol=1e-2, err_msg=where)
        assert abs(found.scores[j] - scores[i]) < 1e-4, where
        assert found.masks[j].shape == masks[i].shape
        assert mask_iou(found.masks[j], masks[i]) >= 0.99, (where, i, mask_iou(found.masks[j], masks[i]))
    return len(scores)


# ---------------------------------------------------------------------------------------------
# The proof: the exported model is the trained model


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(RUNS))
def test_exported_model_predicts_what_detectron2_predicts(trained, exported, name, fmt):
    run, data = trained(name)
    result = exported(name, fmt)
    model = load(result.path)
    predictor = detectron2_predictor(run)
    cfg = load_config(run / "config.yaml")
    compared = thresholds = 0
    for where, image in comparison_images(data):
        prepared = model_image(image, len(cfg.MODEL.PIXEL_MEAN), cfg.INPUT.FORMAT, where)
        set_threshold(predictor, 0.0)
        threshold = separated_threshold(predictor(image, where).scores.numpy(), cfg.TEST.DETECTIONS_PER_IMAGE)
        if threshold is None:
            continue
        thresholds += 1
        set_threshold(predictor, threshold)
        compared += assert_same_detections(predictor(image, where), model(prepared, threshold), f"{name} {fmt} {where}")
    assert thresholds >= 2 and compared >= 4, (thresholds, compared)  # real detections were compared


def test_export_checks_itself_on_two_sizes_and_no_detections(exported):
    """The export ran the written file against Detectron2 before keeping it, at score threshold 0 (the top
    TEST.DETECTIONS_PER_IMAGE detections, whatever the default): a landscape image (the traced size), a
    portrait one, and the first at a threshold nothing passes (the graph runs on zero boxes)."""
    for fmt in FORMATS:
        checks = exported("gn", fmt).checks
        assert [tuple(check["size"]) for check in checks] == [(96, 128), (128, 96), (96, 128)]
        assert [check["detections"] for check in checks] == [10, 10, 0]
        assert [check["exported_detections"] for check in checks] == [10, 10, 0]
        assert checks[-1]["score_threshold"] == 1.0
        assert all(not check["problem"] and check["box"] < 1e-3 for check in checks)


def test_a_lower_score_threshold_needs_no_new_export(trained, exported):
    """The score threshold is an input of the graph: the runner gives more detections at a lower one,
    each as Detectron2 gives it at that threshold."""
    run, data = trained("gn")
    model = load(exported("gn", "onnx").path)
    predictor = detectron2_predictor(run)
    where, image = comparison_images(data)[0]
    set_threshold(predictor, 0.0)
    scores = predictor(image, where).scores.numpy()
    assert len(scores) == 10  # TEST.DETECTIONS_PER_IMAGE
    assert len(model(image, 0.0)) == 10 and len(model(image, 1.0)) == 0
    assert len(model(image)) == int((scores > model.score_threshold).sum())  # the exported default: 0.5


def test_weight_average_is_what_is_exported(trained, exported):
    """model_final.pth of an EMA run holds the average as `model` and the training weights as
    `raw_model`: the export carries the average, which predicts differently from the raw weights."""
    from maskinit.checkpoint import load_trained_model
    from maskinit.export import _raw_outputs, check_images

    run, _ = trained("ema")
    result = exported("ema", "onnx")
    assert result.metadata["weights"]["weight_average"] is True
    assert exported("gn", "onnx").metadata["weights"]["weight_average"] is False
    checkpoint = torch.load(run / "model_final.pth", map_location="cpu", weights_only=False)
    raw_file = run.parent / "raw.pth"
    torch.save({"model": checkpoint["raw_model"]}, raw_file)
    cfg = load_config(run / "config.yaml")
    image = check_images(cfg)[0]
    graph = load(result.path).run_graph(image, 0.0)
    average = _raw_outputs(load_trained_model(cfg, run / "model_final.pth"), image, 0.0)
    raw = _raw_outputs(load_trained_model(cfg, raw_file), image, 0.0)
    np.testing.assert_allclose(graph[1], average[1], atol=1e-5)
    assert len(graph[1]) and (len(raw[1]) != len(graph[1]) or np.abs(raw[1] - graph[1]).max() > 1e-3)


def test_norms_take_their_deployed_form(trained):
    """BatchNorm of every kind becomes FrozenBatchNorm2d; GNWS's standardized convs plain convs with the
    standardized weights; and the deployed model predicts what the trained one predicts."""
    from detectron2.layers import FrozenBatchNorm2d

    from maskinit.checkpoint import load_trained_model
    from maskinit.export import _raw_outputs, check_images
    from maskinit.norms import WSConv2d

    for name, trained_type, deployed_type in (("bn-gray8", torch.nn.BatchNorm2d, FrozenBatchNorm2d),
                                              ("syncbn-gray16", torch.nn.BatchNorm2d, FrozenBatchNorm2d),
                                              ("gnws-band4", WSConv2d, torch.nn.Conv2d)):
        run, _ = trained(name)
        cfg = load_config(run / "config.yaml")
        model = load_trained_model(cfg, run / "model_final.pth")
        deployed = deployable_model(model)
        assert any(isinstance(m, trained_type) for m in model.modules()), name
        assert not any(isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, WSConv2d)) for m in deployed.modules()), (
            name
        )
        assert any(isinstance(m, deployed_type) for m in deployed.modules()), name
        image = check_images(cfg)[1]
        for ours, theirs in zip(_raw_outputs(deployed, image, 0.0), _raw_outputs(model, image, 0.0)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Without Detectron2


BLOCKER = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(name + " cannot be imported here")
sys.meta_path.insert(0, Blocked())
"""


def run_without(blocked: set[str], code: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=sorted(blocked)) + code],
                            check=False, capture_output=True, text=True, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def shared_threshold(run: Path, images: list[np.ndarray]) -> float:
    """One score threshold for all `images`, in a clear gap between the scores Detectron2's model gives them
    (at threshold 0, top TEST.DETECTIONS_PER_IMAGE each) and with detections above it: a run trained for a few
    iterations scores low, so a fixed threshold may pass nothing."""
    scores = np.concatenate([prediction.scores.numpy() for prediction in expected_on(run, images, 0.0)])
    threshold = separated_threshold(scores, len(scores) + 1)
    assert threshold is not None, sorted(scores.tolist())
    return threshold


def expected_on(run: Path, images: list[np.ndarray], threshold: float) -> list:
    predictor = detectron2_predictor(run)
    set_threshold(predictor, threshold)
    return [predictor(image, "image") for image in images]


def test_onnx_runs_with_numpy_and_onnxruntime_only(trained, exported, tmp_path):
    """The runner file, copied alone into an empty folder, runs the ONNX file in a process where
    Detectron2, maskinit, torch, torchvision and OpenCV cannot be imported."""
    from maskinit.deploy import runner as runner_module

    run, data = trained("gn")
    model_file = shutil.copy(exported("gn", "onnx").path, tmp_path / "model.onnx")
    shutil.copy(runner_module.__file__, tmp_path / "maskinit_runner.py")
    images = [read_image(path) for path in sorted(Path(data.val_images).iterdir())]
    names = []
    for i, image in enumerate(images):
        np.save(tmp_path / f"image{i}.npy", image)
        names.append(f"image{i}.npy")
    threshold = shared_threshold(run, images)
    code = ("import runpy, sys\n"
            f"sys.argv = ['maskinit_runner.py', {str(model_file)!r}, '--score-threshold', '{threshold}', *{names!r}]\n"
            "try:\n    runpy.run_path('maskinit_runner.py', run_name='__main__')\n"
            "except SystemExit as stop:\n    assert not stop.code, stop.code\n"
            "assert not {'torch', 'detectron2', 'maskinit', 'cv2'} & {m.split('.')[0] for m in sys.modules}\n")
    result = run_without({"detectron2", "maskinit", "torch", "torchvision", "cv2"}, code, tmp_path)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    compared = 0
    for line, expected in zip(lines, expected_on(run, images, threshold), strict=True):
        assert len(line["scores"]) == len(expected)
        np.testing.assert_allclose(np.asarray(line["boxes"]).reshape(-1, 4), expected.pred_boxes.tensor.numpy(),
                                   rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(line["mask_areas"], expected.pred_masks.numpy().sum(axis=(1, 2)), rtol=0.01)
        names_expected = [json.loads(exported("gn", "onnx").metadata_path.read_text())["classes"][c]["name"]
                          for c in expected.pred_classes.tolist()]
        assert line["classes"] == names_expected
        compared += len(expected)
    assert compared > 0


def test_torchscript_runs_through_maskinit_deploy_without_detectron2(trained, exported, tmp_path):
    run, data = trained("bn-gray8")
    path = exported("bn-gray8", "torchscript").path
    image = read_image(min(Path(data.val_images).iterdir()))
    np.save(tmp_path / "image.npy", image)
    threshold = shared_threshold(run, [image])  # a few iterations' scores: a fixed threshold may pass nothing
    code = ("import json, sys\nimport numpy as np\nfrom maskinit.deploy import load\n"
            f"model = load({str(path)!r}, threads=1)\nfound = model(np.load('image.npy'), {threshold})\n"
            "print(json.dumps({'boxes': found.boxes.tolist(), 'areas': found.masks.sum(axis=(1, 2)).tolist()}))\n"
            "mine = {m for m in sys.modules if m.split('.')[0] == 'maskinit'}\n"
            "assert mine <= {'maskinit', 'maskinit.errors', 'maskinit.deploy', 'maskinit.deploy.runner'}, mine\n"
            "assert 'detectron2' not in sys.modules\n")
    result = run_without({"detectron2"}, code, tmp_path)
    found = json.loads(result.stdout)
    (expected,) = expected_on(run, [image], threshold)
    assert len(found["boxes"]) == len(expected) > 0
    np.testing.assert_allclose(np.asarray(found["boxes"]), expected.pred_boxes.tensor.numpy(), rtol=1e-3, atol=1e-2)
    assert found["areas"] == expected.pred_masks.numpy().sum(axis=(1, 2)).tolist()


def test_the_20_line_script_of_the_docs_runs_with_onnxruntime_and_numpy_only(trained, exported, tmp_path):
    """docs/deploy.md's script, run where torch, Detectron2, OpenCV, Pillow and maskinit cannot be imported,
    finds what the runner finds on images of the model's input size."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text()
    script = text.split("### The runner in two dozen lines")[1].split("```python\n")[1].split("```")[0]
    assert len(script.strip().splitlines()) <= 25
    (tmp_path / "simple_runner.py").write_text(script)
    run, data = trained("gn")
    path = exported("gn", "onnx").path
    model = load(path)
    compared = 0
    images = [read_image(image_path) for image_path in sorted(Path(data.val_images).iterdir())]
    threshold = shared_threshold(run, images)
    for i, image in enumerate(images):
        np.save(tmp_path / f"image{i}.npy", image)
        code = ("import runpy, sys\n"
                f"sys.argv = ['simple_runner.py', {str(path)!r}, 'image{i}.npy', '{threshold}']\n"
                "runpy.run_path('simple_runner.py', run_name='__main__')\n")
        lines = run_without(
            {"detectron2", "maskinit", "torch", "torchvision", "cv2", "PIL"}, code, tmp_path
        ).stdout.splitlines()
        found = model(image, threshold)
        assert len(lines) == len(found)
        for line, box, name, area in zip(
            lines, found.boxes, model.class_names(found.classes), found.masks.sum(axis=(1, 2))
        ):
            label, _score, rest = line.split(" ", 2)
            printed_box = json.loads(rest.split("]")[0] + "]")
            assert label == name
            np.testing.assert_allclose(printed_box, box, atol=0.06)
            assert abs(int(rest.split("] ")[1].split()[0]) - area) <= max(0.01 * area, 1)
            compared += 1
    assert compared > 0


# ---------------------------------------------------------------------------------------------
# What the file carries


def test_settings_travel_in_the_file_and_beside_it(trained, exported):
    import onnx

    run, _ = trained("gnws-band4")
    cfg = load_config(run / "config.yaml")
    onnx_result, ts_result = exported("gnws-band4", "onnx"), exported("gnws-band4", "torchscript")
    beside = json.loads(onnx_result.metadata_path.read_text())
    assert onnx_result.metadata_path == Path(str(onnx_result.path) + ".json")
    inside = {p.key: p.value for p in onnx.load(str(onnx_result.path), load_external_data=False).metadata_props}
    assert json.loads(inside["maskinit"]) == beside == onnx_result.metadata
    extra = {"maskinit.json": ""}
    torch.jit.load(str(ts_result.path), _extra_files=extra)
    assert json.loads(extra["maskinit.json"]) == json.loads(ts_result.metadata_path.read_text())
    info = beside["input"]
    assert info["channels"] == 4 and info["pixel_mean"] == pytest.approx(list(cfg.MODEL.PIXEL_MEAN))
    assert info["pixel_std"] == pytest.approx(list(cfg.MODEL.PIXEL_STD))
    assert (info["min_size"], info["max_size"]) == (128, 128) and "bands" in info["channel_order"]
    names, ids = _categories(cfg)
    assert [(c["name"], c["id"]) for c in beside["classes"]] == list(zip(names, ids)) and len(names) == 5
    assert beside["score_threshold"] == 0.5 and beside["norm"] == "GNWS" and beside["preset"] == "tiny"
    assert beside["mask_size"] == 2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION  # the pool the data fit chose
    assert beside["weights"]["file"] == "model_final.pth"
    assert oct(onnx_result.path.stat().st_mode)[-3:] == "644"


@pytest.mark.parametrize("channels", [2, 16])
def test_any_channel_count_exports(tmp_path, channels):
    """1, 3 and 4 channels are trained above; 2 and 16 here with untrained weights, checked by the export
    itself and through the runner on a float image."""
    overrides = ["MODEL.PIXEL_MEAN", str([100.0] * channels), "MODEL.PIXEL_STD", str([50.0] * channels),
                 "INPUT.FORMAT", "BGR", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *FAST]
    cfg = load_config(preset="tiny", overrides=overrides)
    weights = save_untrained_checkpoint(cfg, tmp_path)
    result = export_model(cfg, weights, "onnx", tmp_path / "model.onnx", score_threshold=0.0)
    assert result.metadata["input"]["channels"] == channels and result.checks[0]["detections"] > 0
    image = (np.random.default_rng(0).random((100, 140, channels)) * 200).astype(np.float32)
    predictor = Detectron2Predictor(cfg, weights, 0.0, *_categories(cfg))
    assert assert_same_detections(predictor(image, "image"), load(result.path)(image, 0.0), f"{channels} channels") > 0


def test_r50_fpn_preset_exports(tmp_path):
    cfg = load_config(
        preset="r50-fpn",
        overrides=["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", *FAST],
    )
    weights = save_untrained_checkpoint(cfg, tmp_path)
    result = export_model(cfg, weights, "onnx", tmp_path / "r50.onnx", score_threshold=0.0)
    assert result.metadata["preset"] == "r50-fpn" and result.metadata["input"]["min_size"] == 96
    assert sum(check["detections"] for check in result.checks) > 0 and not any(
        check["problem"] for check in result.checks
    )


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing half-written


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output)
    return lines[0]


def test_non_finite_weights_are_refused_and_nothing_is_written(trained, tmp_path):
    run, _ = trained("gn")
    checkpoint = torch.load(run / "model_final.pth", map_location="cpu", weights_only=False)
    checkpoint["model"]["roi_heads.box_predictor.cls_score.weight"][0, 0] = float("nan")
    bad_run = tmp_path / "diverged"
    bad_run.mkdir()
    shutil.copy(run / "config.yaml", bad_run / "config.yaml")
    torch.save(checkpoint, bad_run / "model_final.pth")
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    output.write_bytes(b"an earlier export")
    line = one_line(runner.invoke(app, ["export", str(bad_run), "--format", "onnx", "-o", str(output)]))
    assert "NaN or infinite" in line and "model_final.pth" in line
    assert output.read_bytes() == b"an earlier export" and sorted(p.name for p in output.parent.iterdir()) == [
        "model.onnx"
    ]


def test_an_export_that_does_not_reproduce_the_model_is_not_written(trained, tmp_path, monkeypatch):
    from maskinit.deploy.runner import ExportedModel

    run, _ = trained("gn")
    original = ExportedModel.run_graph

    def shifted(self, tensor, score_threshold=None):
        boxes, *rest = original(self, tensor, score_threshold)
        return (boxes + 2.0, *rest)

    monkeypatch.setattr(ExportedModel, "run_graph", shifted)
    with pytest.raises(MaskinitError, match="does not reproduce the Detectron2 model.*nothing written"):
        export_model(load_config(run / "config.yaml"), run / "model_final.pth", "torchscript", tmp_path / "m.ts")
    assert list(tmp_path.iterdir()) == []  # no model, no JSON, no temporary file


def test_settings_a_format_cannot_express_are_named(trained, tmp_path):
    run, _ = trained("gn")
    cfg = load_config(run / "config.yaml", overrides=["TEST.AUG.ENABLED", "True"])
    with pytest.raises(MaskinitError, match="TEST.AUG.ENABLED: test-time augmentation"):
        export_model(cfg, run / "model_final.pth", "onnx", tmp_path / "m.onnx")
    with pytest.raises(MaskinitError, match="unknown export format 'caffe2'"):
        export_model(load_config(run / "config.yaml"), run / "model_final.pth", "caffe2", tmp_path / "m.pb")
    assert list(tmp_path.iterdir()) == []


PYTHON_NORM = """
import torch
from torch import nn
from maskinit.norms import NormVariant, register_norm, replace_modules

class Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad

class PythonGroupNorm(nn.GroupNorm):
    def forward(self, x):
        return Identity.apply(super().forward(x))

@register_norm("PythonGN")
class PythonGN(NormVariant):
    description = "GroupNorm through a Python autograd function"
    detectron2_name = "GN"
    plain_equivalent = False

    def make(self, channels):
        return PythonGroupNorm(32, channels)

    def convert(self, model, device):
        replace_modules(model, lambda m: type(m) is nn.GroupNorm,
                        lambda m: PythonGroupNorm(m.num_groups, m.num_channels))
"""


def test_a_python_op_torchscript_cannot_hold_is_one_line(tmp_path):
    """A norm plugin whose forward is a Python autograd function: TorchScript cannot serialize the call."""
    plugin = tmp_path / "python_norm.py"
    plugin.write_text(PYTHON_NORM)
    cfg = load_config(preset="tiny", norm="PythonGN", plugins=[str(plugin)])
    weights = save_untrained_checkpoint(cfg, tmp_path)
    with pytest.raises(
        MaskinitError, match="TorchScript tracing failed: Could not export Python function call 'Identity'"
    ):
        export_model(cfg, weights, "torchscript", tmp_path / "out" / "m.ts")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_wrong_channel_count_for_an_exported_model_is_one_line(trained, exported, tmp_path):
    _, gray = trained("syncbn-gray16")
    line = one_line(runner.invoke(app, ["predict", str(exported("gn", "onnx").path), "--input", gray.val_images,
                                        "--output-dir", str(tmp_path / "out")]))
    assert "1-channel uint16" in line and "exported model model.onnx takes 3 channels (BGR)" in line
    assert not (tmp_path / "out" / "predictions.json").exists()


@pytest.mark.parametrize("name", ["gnws-band4", "syncbn-gray16"])
def test_predict_runs_an_exported_model_on_every_image_kind(trained, exported, name, tmp_path):
    """4-band TIFFs and 16-bit gray PNGs through `predict` with the exported file: drawings and JSON."""
    _, data = trained(name)
    path = predict(None, exported(name, "onnx").path, data.val_images, tmp_path, score_threshold=0.0)
    coco = json.loads(path.read_text())
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2 * 10 and not coco["skipped"]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".png", ".png"]


def test_export_command_runs_on_a_run_folder(trained, tmp_path):
    run, _ = trained("gn")
    output = tmp_path / "exported" / "gn.onnx"
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "-o", str(output), "--score-threshold", "0.3"])
    assert result.exit_code == 0, result.output
    assert "checked" in result.stdout and "star" in result.stdout
    assert json.loads(Path(str(output) + ".json").read_text())["score_threshold"] == 0.3
    assert "already an exported model" in one_line(runner.invoke(app, ["export", "--weights", str(output), "--format",
                                                                        "onnx", "-o", str(tmp_path / "again.onnx")]))
    assert "holds its config" in one_line(runner.invoke(app, ["export", str(run), "--config", str(run / "config.yaml"),
                                                               "--format", "onnx", "-o", str(tmp_path / "x.onnx")]))
    assert ".json" in one_line(
        runner.invoke(app, ["export", str(run), "--format", "onnx", "-o", str(tmp_path / "x.json")])
    )
