"""Every image kind a from-scratch user has (8-bit gray, 16-bit PNG and TIFF, 4- and 13-channel TIFF,
.npy) through check-data, train, eval, predict and inspect-init; the mapper that reads them, and its
conversions and drawings."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.data.transforms import ResizeShortestEdge
from typer.testing import CliRunner

from maskinit import MaskinitError, load_config
from maskinit.augment import build_train_mapper
from maskinit.cli import app
from maskinit.data.analysis import analyze_coco
from maskinit.data.fit import apply_fits, fit_config
from maskinit.data.images import image_kind, read_image
from maskinit.data.mapper import ImageMapper, display_rgb, model_image
from maskinit.data.synthetic import generate_coco_dataset
from maskinit.data.image_files import probe_image
from maskinit.data.validate import check_coco
from maskinit.diagnostics import coco_batch, inspect_init
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
    "rgb16-tiff": (3, "uint16", lambda p, bgr: write_tiff(p, bgr[:, :, ::-1].astype(np.uint16) * 257, photometric="rgb")),
    "band4-tiff": (4, "uint8", lambda p, bgr: write_tiff(p, bands(bgr, 4), photometric="minisblack")),
    "band4-npy": (4, "float32", lambda p, bgr: write_npy(p, bands(bgr, 4).astype(np.float32) / 255)),
    "band13-tiff": (13, "uint16", lambda p, bgr: write_tiff(p, bands(bgr, 13).astype(np.uint16) * 200, photometric="minisblack")),
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
    return DataOptions(str(train_set.json_file), str(train_set.image_root), str(val_set.json_file), str(val_set.image_root))


def fitted_config(data: DataOptions, *overrides):
    """The tiny preset with the pixel normalization (and gray format) fitted to the training set."""
    cfg = load_config(preset="tiny", overrides=[*FAST, *overrides])
    fits = [fit for fit in fit_config(cfg, analyze_coco(data.train_json, data.train_images)) if fit.key in PIXEL_KEYS]
    return apply_fits(cfg, fits)[0]


def records(data: DataOptions, split: str = "train"):
    return load_coco_json(getattr(data, f"{split}_json"), getattr(data, f"{split}_images"))


# ---------------------------------------------------------------------------------------------
# train, eval, predict on each kind (one trained run per kind)


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


def test_eval_gives_ap_numbers_and_comparisons(run, tmp_path):
    kind, data, cfg, out, _ = run
    results = evaluate_run(cfg, out / "model_final.pth", DataOptions(**vars(data)),
                           device="cpu", vis_dir=tmp_path, vis_count=1)
    for task in ("bbox", "segm"):
        assert isinstance(results[task]["AP"], float) and 0 <= results[task]["AP"] <= 100, results
    (comparison,) = tmp_path.glob("*_compare.png")  # ground truth | predictions, drawn from the image's RGB view
    panel = cv2.imread(str(comparison))
    assert panel.shape[1] == 2 * VIS_LONG_SIDE + 4 and panel[-VIS_LONG_SIDE:, :VIS_LONG_SIDE].std() > 10


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
# The mapper: Detectron2's augmentations on every kind


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    files = generate_coco_dataset(tmp_path_factory.mktemp("colour"), 2, seed=3)
    return load_coco_json(str(files.json_file), str(files.image_root))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("augment", ["default", "lsj"])
def test_8bit_colour_maps_exactly_as_detectron2(colour_set, tmp_path, suffix, augment):
    """The 8-bit colour path is unchanged: the same tensors as Detectron2's own mapper and reader."""
    cfg = load_config(preset="tiny", overrides=[*NO_COPY_PASTE, "MASKINIT.AUGMENT.NAME", augment,
                                                "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "96"])
    ours = build_train_mapper(cfg)
    theirs = DatasetMapper(cfg, is_train=True, augmentations=ours.augmentations.augs, recompute_boxes=ours.recompute_boxes)
    for seed, record in enumerate(colour_set):
        record = dict(record, file_name=str(write_jpeg_or_png(record["file_name"], tmp_path, suffix)))
        np.random.seed(seed)
        mine = ours(record)
        np.random.seed(seed)
        reference = theirs(record)
        assert mine["image"].dtype == torch.uint8
        assert torch.equal(mine["image"], reference["image"])
        torch.testing.assert_close(mine["instances"].gt_boxes.tensor, reference["instances"].gt_boxes.tensor)


def write_jpeg_or_png(path, folder: Path, suffix: str) -> Path:
    target = folder / (Path(path).stem + suffix)
    assert cv2.imwrite(str(target), cv2.imread(str(path)))
    return target


@pytest.mark.parametrize("channels", [1, 2, 4, 16])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("augment", ["default", "lsj"])
def test_augmentations_take_every_channel_count_and_type(tmp_path, channels, dtype, augment):
    """Resize (down and up), flip, LSJ crop and pad on (H, W, C) arrays of 1 to 16 channels."""
    rng = np.random.default_rng(channels)
    scale = {"uint8": 1, "uint16": 250, "float32": 1 / 255}[dtype]
    array = (rng.integers(0, 256, (60, 90, channels)) * scale).astype(dtype)
    array[10:30, 20:50] = array.max()  # an object
    path = write_npy(tmp_path / "image", array if channels > 1 else array[:, :, 0])
    record = {"file_name": str(path), "height": 60, "width": 90, "image_id": 1, "annotations": [
        {"bbox": [20, 10, 30, 20], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
         "segmentation": [[20, 10, 50, 10, 50, 30, 20, 30]]}]}
    cfg = load_config(preset="tiny", overrides=[*NO_COPY_PASTE,
        "MODEL.PIXEL_MEAN", str([float(array.mean())] * channels), "MODEL.PIXEL_STD", str([1.0] * channels),
        "INPUT.FORMAT", "L" if channels == 1 else "BGR", "MASKINIT.AUGMENT.NAME", augment,
        "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "64", "MASKINIT.AUGMENT.LSJ_MIN_SCALE", "1.5", "MASKINIT.AUGMENT.LSJ_MAX_SCALE", "1.5",
    ])  # LSJ: 60 x 90 -> 64 x 96, cropped to 64 x 64 (the object stays in)
    mapper = build_train_mapper(cfg)
    for seed in range(3):
        np.random.seed(seed)
        item = mapper(record)
        image = item["image"]
        assert image.shape[0] == channels
        if augment == "lsj":
            assert tuple(image.shape[1:]) == (64, 64)
        else:
            assert tuple(image.shape[1:]) == ResizeShortestEdge.get_output_shape(60, 90, 128, 128) == (85, 128)
        assert image.dtype == (torch.uint8 if dtype == "uint8" and channels == 1 else torch.float32)
        assert float(image.float().max()) <= float(array.max()) * 1.001 and float(image.float().max()) > 0.9 * float(array.max())
        assert len(item["instances"]) == 1


def test_lsj_pads_other_kinds_with_the_data_mean(tmp_path):
    """Detectron2's 128 is about the mean of 8-bit colour; a 16-bit image is padded with its own mean."""
    array = np.full((40, 40, 2), 30000, np.uint16)
    array[5:20, 5:20] = 60000
    path = write_npy(tmp_path / "image", array)
    record = {"file_name": str(path), "height": 40, "width": 40, "image_id": 1, "annotations": [
        {"bbox": [5, 5, 15, 15], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
         "segmentation": [[5, 5, 20, 5, 20, 20, 5, 20]]}]}
    cfg = load_config(preset="tiny", overrides=[*NO_COPY_PASTE,
        "MODEL.PIXEL_MEAN", "[31000.0, 32000.0]", "MODEL.PIXEL_STD", "[9000.0, 9000.0]", "MASKINIT.AUGMENT.NAME", "lsj",
        "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "64", "MASKINIT.AUGMENT.LSJ_MIN_SCALE", "0.5", "MASKINIT.AUGMENT.LSJ_MAX_SCALE", "0.5",
    ])
    image = build_train_mapper(cfg)(record)["image"]
    assert tuple(image.shape) == (2, 64, 64)
    assert (image[0, 40:] == 31000).all() and (image[1, 40:] == 32000).all()  # 40x40 at scale 0.5 of 64: 32 rows
    assert image[:, :30, :30].min() >= 30000  # the image itself, in its own units


def test_model_image_bridges_what_detectron2_bridges_and_refuses_the_rest():
    gray8 = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert model_image(gray8, 3, "BGR").shape == (3, 4, 3)
    assert (model_image(gray8, 3, "BGR") == gray8).all()
    bgra = np.stack([np.full((3, 4), value, np.uint8) for value in (1, 2, 3, 4)], axis=2)
    assert model_image(bgra, 3, "BGR", "a.png")[0, 0].tolist() == [1, 2, 3]
    assert model_image(bgra, 3, "RGB", "a.png")[0, 0].tolist() == [3, 2, 1]
    with pytest.raises(MaskinitError, match=r"image a\.tif is 4-channel uint8, but the model takes 3 channels"):
        model_image(bgra, 3, "BGR", "a.tif")  # a 4-band TIFF: its 4th channel is data, not alpha
    assert model_image(bgra, 4, "BGR").dtype == np.float32  # 4 channels: resized in float, not by Pillow
    assert model_image(gray8, 1, "L").dtype == np.uint8
    with pytest.raises(MaskinitError, match=r"image a\.tif is 1-channel uint16, but the model takes 3 channels"):
        model_image(gray8.astype(np.uint16), 3, "BGR", "a.tif")
    with pytest.raises(MaskinitError, match="1-channel uint8, but the model takes 4 channels"):
        model_image(gray8, 4, "BGR", "b.png")


def test_display_rgb_for_each_kind():
    gray8 = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    shown = display_rgb(gray8)
    assert shown.shape == (3, 4, 3) and shown.dtype == np.uint8 and (shown == gray8).all()
    wide = np.linspace(1000, 50000, 400).reshape(20, 20, 1).astype(np.uint16)
    shown = display_rgb(wide)
    assert shown.min() == 0 and shown.max() == 255 and (shown[..., 0] == shown[..., 1]).all()
    band4 = np.stack([np.full((2, 2), value, np.uint8) for value in (10, 20, 30, 40)], axis=2)
    assert display_rgb(band4)[0, 0].tolist() == [30, 20, 10]  # the first three, read as B, G, R
    two = np.stack([np.full((2, 2), 10, np.uint8), np.full((2, 2), 20, np.uint8)], axis=2)
    assert display_rgb(two)[0, 0].tolist() == [15, 15, 15]
    assert (gray8 == np.arange(12, dtype=np.uint8).reshape(3, 4, 1)).all()  # arguments are not changed


# ---------------------------------------------------------------------------------------------
# check-data: every kind readable, sizes and kinds from the headers, mixed kinds refused


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """One synthetic 8-bit colour picture (128 x 128)."""
    files = generate_coco_dataset(tmp_path_factory.mktemp("picture"), 1, seed=4)
    return cv2.imread(str(next(files.image_root.iterdir())))


def header_cases(folder: Path, bgr: np.ndarray) -> list[Path]:
    """Files of many kinds and layouts, whose header must tell what read_image reads."""
    paths = [convert(folder / kind, bgr) for kind, (_, _, convert) in KINDS.items()]
    bgra = np.concatenate([bgr, gray(bgr)[:, :, None]], axis=2)
    paths += [
        write_png(folder / "bgra8", bgra),
        write_png(folder / "bgr16", bgr.astype(np.uint16) * 257),
        write_png(folder / "bgra16", bgra.astype(np.uint16) * 257),
        write_tiff(folder / "planar", np.moveaxis(bands(bgr, 5), 2, 0), photometric="minisblack", planarconfig="separate"),
        write_tiff(folder / "gray-float", gray(bgr).astype(np.float32)),
        write_tiff(folder / "rgb8", bgr[:, :, ::-1], photometric="rgb", compression="zlib"),
        write_npy(folder / "gray-npy", gray(bgr)),
        write_npy(folder / "band16-npy", bands(bgr, 16).astype(np.float64)),
    ]
    from PIL import Image

    Image.fromarray(bgr[:, :, ::-1]).convert("P").save(folder / "palette.png")
    Image.fromarray(bgr[:, :, ::-1]).save(folder / "transparent.png", transparency=(1, 2, 3))
    Image.fromarray(gray(bgr)).save(folder / "gray.jpg")
    Image.fromarray(bgr[:, :, ::-1]).save(folder / "colour.bmp")
    return paths + [folder / name for name in ("palette.png", "transparent.png", "gray.jpg", "colour.bmp")]


def test_headers_tell_the_size_and_kind_read_image_reads(tmp_path, pictures):
    for path in header_cases(tmp_path, pictures):
        array = read_image(path)
        problem, kind = probe_image(str(path), *array.shape[:2])
        assert problem is None, (path.name, problem)
        assert kind == image_kind(array), path.name
        problem, _ = probe_image(str(path), array.shape[0], array.shape[1] + 1)
        assert problem[0] == "image_size_mismatch", path.name


def test_broken_tiff_and_npy_are_unreadable(tmp_path, pictures):
    tiff = write_tiff(tmp_path / "image", bands(pictures, 4), photometric="minisblack")
    npy = write_npy(tmp_path / "image", bands(pictures, 4))
    for path in (tiff, npy):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        problem, kind = probe_image(str(path), 128, 128)
        assert problem[0] == "unreadable_image" and kind is None, problem
        with pytest.raises(MaskinitError):
            read_image(path)  # and the reader agrees
    channels_first = write_npy(tmp_path / "first", np.zeros((3, 50, 40), np.uint8))
    assert probe_image(str(channels_first), 3, 50)[0] == ("unreadable_image", "an array of shape (3, 50, 40) looks channels-first; save it as (H, W) or (H, W, C)")


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


def test_inspect_init_coco_batch_on_four_channels(tmp_path):
    data = kind_set(tmp_path, "band4-tiff", train_images=2, val_images=1)
    cfg, batch = coco_batch(fitted_config(data), data.train_json, data.train_images)
    assert len(cfg.MODEL.PIXEL_MEAN) == 4 and len(batch) == 2
    assert all(item["image"].shape[0] == 4 and item["image"].dtype == torch.float32 for item in batch)
    result = inspect_init(cfg, batch=batch)
    assert result.verdict == "ok", result.advice
    with pytest.raises(MaskinitError, match=r"000001\.tif is 4-channel uint8, but the model takes 3 channels"):
        coco_batch(load_config(preset="tiny"), data.train_json, data.train_images)


def test_inspect_init_cli_fits_the_model_to_a_grayscale_set(tmp_path):
    from typer.testing import CliRunner

    from maskinit.cli import app

    data = kind_set(tmp_path, "gray16-png", train_images=2, val_images=1)
    result = CliRunner().invoke(app, ["inspect-init", "--preset", "tiny", "--train-json", data.train_json,
                                      "--train-images", data.train_images, "--json-out", str(tmp_path / "init.json")])
    assert result.exit_code in (0, 1), result.output  # 1 would be a finding about the init, not a refusal
    assert "model takes 3 channels" not in result.output
    assert json.loads((tmp_path / "init.json").read_text())["stages"]
