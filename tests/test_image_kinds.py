"""Every image kind a from-scratch user has (8-bit gray, 16-bit PNG and TIFF, 4- and 13-channel TIFF,
.npy) through check-data, train, eval, predict and inspect-init (the mapper that reads them: test_mapper.py;
their headers: test_image_files.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from detectron2.data.datasets import load_coco_json
from typer.testing import CliRunner

from maskinit import MaskinitError, load_config
from maskinit.batches import coco_batch
from maskinit.cli import app
from maskinit.data.analysis import analyze_coco
from maskinit.data.fit import apply_fits, fit_config
from maskinit.data.images import image_kind, read_image
from maskinit.data.mapper import ImageMapper
from maskinit.data.synthetic import generate_coco_dataset
from maskinit.data.validate import check_coco
from maskinit.diagnostics import inspect_init
from maskinit.evaluation import evaluate_run
from maskinit.train import DataOptions, TrainOptions, train
from maskinit.visualize import PREDICTIONS_FILE, VIS_LONG_SIDE, predict

PIXEL_KEYS = ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT")
FAST = ["SOLVER.WARMUP_ITERS", "2", "TEST.DETECTIONS_PER_IMAGE", "10"]

# The mappers alone: Copy-Paste (on in the tiny preset) needs registered training records.
NO_COPY_PASTE = ["MASKINIT.AUGMENT.COPY_PASTE.PROB", "0.0"]


# ---------------------------------------------------------------------------------------------
# Generated sets of each kind: the synthetic shapes (8-bit BGR PNGs), converted


def gray(bgr):
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def bands(bgr, count):
    """`count` bands from a colour picture: B, G, R, gray, then their inverses and products, all different."""
    planes = [bgr[:, :, 0], bgr[:, :, 1], bgr[:, :, 2], gray(bgr)]
    planes += [255 - plane for plane in planes]
    planes += [(planes[i].astype(np.uint16) * planes[(i + 1) % 8] // 255).astype(np.uint8) for i in range(8)]
    return np.stack(planes[:count], axis=2)


def write_png(path, array):
    assert cv2.imwrite(str(path.with_suffix(".png")), array)
    return path.with_suffix(".png")


def write_tiff(path, array, **options):
    tifffile.imwrite(path.with_suffix(".tif"), array, **options)
    return path.with_suffix(".tif")


def write_npy(path, array):
    np.save(path.with_suffix(".npy"), array)
    return path.with_suffix(".npy")


# kind -> (channels, dtype, converter of an 8-bit BGR picture into a file next to it)
KINDS = {
    "gray8-png": (1, "uint8", lambda p, bgr: write_png(p, gray(bgr))),
    "gray16-png": (1, "uint16", lambda p, bgr: write_png(p, gray(bgr).astype(np.uint16) * 257)),
    "rgb16-tiff": (
        3,
        "uint16",
        lambda p, bgr: write_tiff(p, bgr[:, :, ::-1].astype(np.uint16) * 257, photometric="rgb"),
    ),
    "band4-tiff": (4, "uint8", lambda p, bgr: write_tiff(p, bands(bgr, 4), photometric="minisblack")),
    "band4-npy": (4, "float32", lambda p, bgr: write_npy(p, bands(bgr, 4).astype(np.float32) / 255)),
    "band13-tiff": (
        13,
        "uint16",
        lambda p, bgr: write_tiff(p, bands(bgr, 13).astype(np.uint16) * 200, photometric="minisblack"),
    ),
}


def convert_set(files, convert) -> Path:
    """Convert every image of a generated COCO set with `convert` (the JSON follows); returns the JSON."""
    coco = json.loads(files.json_file.read_text())
    for image in coco["images"]:
        png = files.image_root / image["file_name"]
        image["file_name"] = convert(png, cv2.imread(str(png))).name
        if image["file_name"] != png.name:
            png.unlink()
    files.json_file.write_text(json.dumps(coco))
    return files.json_file


def kind_set(root: Path, kind: str, train_images: int = 4, val_images: int = 2) -> DataOptions:
    convert = KINDS[kind][2]
    train_set = generate_coco_dataset(root / "train", train_images, seed=1)
    val_set = generate_coco_dataset(root / "val", val_images, seed=2, first_image_id=100)
    convert_set(train_set, convert)
    convert_set(val_set, convert)
    return DataOptions(
        str(train_set.json_file), str(train_set.image_root), str(val_set.json_file), str(val_set.image_root)
    )


def fitted_config(data: DataOptions, *overrides):
    """The tiny preset with the pixel normalization (and gray format) fitted to the training set."""
    cfg = load_config(preset="tiny", overrides=[*FAST, *overrides])
    fits = [fit for fit in fit_config(cfg, analyze_coco(data.train_json, data.train_images)) if fit.key in PIXEL_KEYS]
    return apply_fits(cfg, fits)[0]


def records(data: DataOptions, split: str = "train"):
    return load_coco_json(getattr(data, f"{split}_json"), getattr(data, f"{split}_images"))


# ---------------------------------------------------------------------------------------------
# train, eval, predict on each kind (one trained run per kind)


# The module-scoped fixtures train once per test process: under `make test` (pytest-xdist) this module's tests
# run in one of them.
pytestmark = pytest.mark.xdist_group("image_kinds")


@pytest.fixture(scope="module", params=list(KINDS))
def run(request, tmp_path_factory):
    """The plain tiny preset trained for 2 iterations: `train` fits the pixel normalization (and the
    model's input channels with it) to the data; the config it ran is returned."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    data = kind_set(root, kind)
    out = root / "run"
    options = TrainOptions(output_dir=str(out), data=DataOptions(**vars(data)), max_iter=2, checkpoint_period=2,
                           seed=0, progress=False)
    summary = train(load_config(preset="tiny", overrides=FAST), options)
    return kind, data, load_config(out / "config.yaml"), out, summary


@pytest.mark.slow
def test_train_builds_a_model_of_the_datas_channels(run):
    kind, data, cfg, out, summary = run
    channels, dtype, _ = KINDS[kind]
    assert summary["status"] == "finished" and summary["iterations"] == 2
    assert image_kind(read_image(Path(data.train_images) / records(data)[0]["file_name"])) == (channels, dtype)
    weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert weights["backbone.bottom_up.stem.conv1.weight"].shape[1] == channels
    assert len(cfg.MODEL.PIXEL_MEAN) == len(cfg.MODEL.PIXEL_STD) == channels
    assert cfg.INPUT.FORMAT == ("L" if channels == 1 else "BGR")
    if dtype == "uint16":  # normalized by the data's own statistics, in its units
        assert max(cfg.MODEL.PIXEL_MEAN) > 255


@pytest.mark.slow
def test_loaded_tensor_keeps_channels_and_units(run):
    kind, data, cfg, out, _ = run
    channels, dtype, _ = KINDS[kind]
    record = records(data)[0]
    original = read_image(record["file_name"])
    item = ImageMapper(cfg, is_train=True)(record)
    image = item["image"]
    assert image.shape[0] == channels and len(item["instances"]) > 0
    assert image.dtype == (torch.uint8 if dtype == "uint8" and channels in (1, 3) else torch.float32)
    # the file's own units: no division by 255 or 65535 (the model normalizes with PIXEL_MEAN/STD)
    assert float(image.float().max()) == pytest.approx(float(original.max()), rel=0.05)
    if dtype == "uint16":
        assert float(image.max()) > 255


@pytest.mark.slow
def test_eval_gives_ap_numbers_and_comparisons(run, tmp_path):
    kind, data, cfg, out, _ = run
    results = evaluate_run(cfg, out / "model_final.pth", DataOptions(**vars(data)),
                           device="cpu", vis_dir=tmp_path, vis_count=1)
    for task in ("bbox", "segm"):
        assert isinstance(results[task]["AP"], float) and 0 <= results[task]["AP"] <= 100, results
    (comparison,) = tmp_path.glob("*_compare.png")  # ground truth | predictions, drawn from the image's RGB view
    panel = cv2.imread(str(comparison))
    assert panel.shape[1] == 2 * VIS_LONG_SIDE + 4 and panel[-VIS_LONG_SIDE:, :VIS_LONG_SIDE].std() > 10


@pytest.mark.slow
def test_predict_writes_drawings_and_predictions(run, tmp_path):
    kind, data, cfg, out, _ = run
    predictions = predict(cfg, out / "model_final.pth", data.val_images, tmp_path,
                          score_threshold=0.0)
    coco = json.loads(predictions.read_text())
    files = sorted(p.name for p in Path(data.val_images).iterdir())
    assert [image["file_name"] for image in coco["images"]] == files and not coco["skipped"]
    assert coco["annotations"] and all("segmentation" in a for a in coco["annotations"])
    assert predictions.name == PREDICTIONS_FILE
    for name in files:
        drawing = cv2.imread(str(tmp_path / f"{Path(name).stem}.png"))
        assert drawing.shape == (VIS_LONG_SIDE, VIS_LONG_SIDE, 3)  # 128-pixel images drawn at 384
        assert drawing.std() > 10  # a picture, not a black or white square


# ---------------------------------------------------------------------------------------------
# check-data: every kind readable, mixed kinds refused (sizes and kinds from the headers: test_image_files.py)


@pytest.mark.parametrize("kind", list(KINDS))
def test_check_data_reads_each_kind(tmp_path, kind):
    data = kind_set(tmp_path, kind, train_images=2, val_images=1)
    report = check_coco(data.train_json, data.train_images)
    assert report.images_checked and report.ok
    assert {problem.severity for problem in report.problems.values()} <= {"info"}, report.problems


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A set whose first image is gray and the others colour (all 8-bit PNGs)."""
    root = tmp_path_factory.mktemp("mixed")
    data = kind_set(root, "gray8-png", train_images=3, val_images=1)
    coco = json.loads(Path(data.train_json).read_text())
    for image in coco["images"][1:]:
        path = Path(data.train_images) / image["file_name"]
        assert cv2.imwrite(str(path), cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_GRAY2BGR))
    return data, [image["file_name"] for image in coco["images"]]


MIXED = r"images of mixed kinds: 000001\.png is 1-channel uint8, 000002\.png is 3-channel uint8"


def test_mixed_kinds_are_fatal_naming_two_files(mixed):
    data, names = mixed
    report = check_coco(data.train_json, data.train_images)
    problem = report.problems["mixed_image_kinds"]
    assert problem.severity == "fatal" and not report.ok
    assert problem.summary().startswith(MIXED.replace("\\", ""))
    assert "1-channel uint8: 1, 3-channel uint8: 2" in problem.summary()


def test_check_data_cli_refuses_mixed_kinds(mixed):
    data, _ = mixed
    result = CliRunner().invoke(app, ["check-data", "--json", data.train_json, "--images", data.train_images])
    assert result.exit_code == 2, result.output
    assert "images of mixed kinds" in result.output and "000001.png" in result.output and "000002.png" in result.output


def test_train_refuses_mixed_kinds(mixed, tmp_path):
    data, _ = mixed
    options = TrainOptions(output_dir=str(tmp_path / "run"), data=DataOptions(**vars(data)), max_iter=2, progress=False)
    with pytest.raises(MaskinitError, match=MIXED):
        train(load_config(preset="tiny"), options)
    assert not (tmp_path / "run" / "model_final.pth").exists()


# ---------------------------------------------------------------------------------------------
# inspect-init on a 4-channel set


@pytest.mark.slow
def test_inspect_init_coco_batch_on_four_channels(tmp_path):
    data = kind_set(tmp_path, "band4-tiff", train_images=2, val_images=1)
    cfg, batch = coco_batch(fitted_config(data), data.train_json, data.train_images)
    assert len(cfg.MODEL.PIXEL_MEAN) == 4 and len(batch) == 2
    assert all(item["image"].shape[0] == 4 and item["image"].dtype == torch.float32 for item in batch)
    result = inspect_init(cfg, batch=batch)
    assert result.verdict == "ok", result.advice
    with pytest.raises(MaskinitError, match=r"000001\.tif is 4-channel uint8, but the model takes 3 channels"):
        coco_batch(load_config(preset="tiny"), data.train_json, data.train_images)


@pytest.mark.slow
def test_inspect_init_cli_fits_the_model_to_a_grayscale_set(tmp_path):
    from typer.testing import CliRunner

    from maskinit.cli import app

    data = kind_set(tmp_path, "gray16-png", train_images=2, val_images=1)
    result = CliRunner().invoke(app, ["inspect-init", "--preset", "tiny", "--train-json", data.train_json,
                                      "--train-images", data.train_images, "--json-out", str(tmp_path / "init.json")])
    assert result.exit_code in (0, 1), result.output  # 1 would be a finding about the init, not a refusal
    assert "model takes 3 channels" not in result.output
    assert json.loads((tmp_path / "init.json").read_text())["stages"]
