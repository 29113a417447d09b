"""Data-derived configuration: `analyze_coco` measures a COCO set, `fit_config` fits the config keys
that follow from it, `apply_fits` applies them to a copy; `maskinit analyze-data` shows both."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from maskinit.cli import app
from maskinit.config import load_config
from maskinit.data.analysis import analyze_coco
from maskinit.data.fit import apply_fits, fit_config
from maskinit.errors import MaskinitError


@pytest.fixture(scope="module")
def tiny():
    return load_config(preset="tiny")


@pytest.fixture(scope="module")
def r50():
    return load_config(preset="r50-fpn")


def save_image(path, array):
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".tif":
        rgb = array.ndim == 3 and array.shape[2] == 3
        tifffile.imwrite(path, array[:, :, ::-1] if rgb else array, photometric="rgb" if rgb else "minisblack")
    else:
        assert cv2.imwrite(str(path), array)


def rectangle(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_coco(root, images, boxes, suffix=".png", categories=("thing",), extra_annotations=()):
    """A COCO set of `images` (arrays, or (height, width) for black 8-bit ones), `boxes[i]` a list of
    (x, y, w, h[, category index]) for image i."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    entries, annotations = [], []
    for number, (image, image_boxes) in enumerate(zip(images, boxes), start=1):
        array = np.zeros(image, np.uint8) if isinstance(image, tuple) else image
        name = f"{number:03d}{suffix}"
        save_image(image_dir / name, array)
        entries.append({"id": number, "file_name": name, "height": int(array.shape[0]), "width": int(array.shape[1])})
        for x, y, w, h, *category in image_boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": (category[0] if category else 0) + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": rectangle(x, y, w, h),
                }
            )
    for annotation in extra_annotations:
        annotations.append({"id": len(annotations) + 1, **annotation})
    json_file = root / "train.json"
    json_file.write_text(
        json.dumps(
            {
                "images": entries,
                "annotations": annotations,
                "categories": [{"id": index + 1, "name": name} for index, name in enumerate(categories)],
            }
        )
    )
    return json_file, image_dir


def grid_boxes(count, side, spacing, columns=10, ratio=1.0):
    """`count` boxes of sqrt(w*h) = side and height/width = ratio, on a grid."""
    w, h = side / math.sqrt(ratio), side * math.sqrt(ratio)
    return [(5 + (i % columns) * spacing, 5 + (i // columns) * spacing, round(w, 2), round(h, 2)) for i in range(count)]


def fitted(fits):
    return {fit.key: fit.value for fit in fits}


def flat(anchor_sizes):
    return [size for level in anchor_sizes for size in level]


def numpy_statistics(arrays):
    """Mean and std per channel of all the pixels of these (H, W, C) arrays, by numpy at once."""
    pixels = np.concatenate([array.reshape(-1, array.shape[2]).astype(np.float64) for array in arrays])
    return pixels.mean(axis=0), pixels.std(axis=0)


# ---------------------------------------------------------------------------------------------
# Pixel statistics and image kinds


@pytest.mark.slow
def test_pixel_mean_and_std_are_those_of_the_sampled_pixels(tmp_path, tiny):
    rng = np.random.default_rng(0)
    images = [
        rng.normal(40 + 15 * i, 5 + 3 * i, size=(30 + 7 * i, 50 + 3 * i, 3)).clip(0, 255).astype(np.uint8)
        for i in range(12)
    ]
    json_file, image_dir = write_coco(tmp_path, images, [[(2, 2, 10, 10)]] * 12)
    analysis = analyze_coco(json_file, image_dir, sample=5, seed=3)
    assert analysis.num_sampled == 5 and (analysis.channels, analysis.dtype) == (3, "uint8")
    sampled = [images[int(name[:3]) - 1] for name in analysis.sampled_files]
    mean, std = numpy_statistics(sampled)
    np.testing.assert_allclose(analysis.pixel_mean, mean, rtol=1e-9)
    np.testing.assert_allclose(analysis.pixel_std, std, rtol=1e-9)
    fits = fitted(fit_config(tiny, analysis))
    np.testing.assert_allclose(fits["MODEL.PIXEL_MEAN"], mean, rtol=1e-5)
    np.testing.assert_allclose(fits["MODEL.PIXEL_STD"], std, rtol=1e-5)
    # the sample is deterministic, and None reads every image
    assert analyze_coco(json_file, image_dir, sample=5, seed=3).sampled_files == analysis.sampled_files
    everything = analyze_coco(json_file, image_dir, sample=None)
    assert everything.num_sampled == 12
    np.testing.assert_allclose(everything.pixel_mean, numpy_statistics(images)[0], rtol=1e-9)


KINDS = {
    # name: (suffix, shape, dtype)
    "gray_png": (".png", (40, 60), np.uint8),
    "png_16_bit": (".png", (40, 60, 3), np.uint16),
    "tiff_16_bit": (".tif", (40, 60), np.uint16),
    "tiff_4_channels": (".tif", (40, 60, 4), np.uint16),
    "npy_4_channels": (".npy", (40, 60, 4), np.float32),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_image_kind_is_measured_in_its_own_units_and_channels(tmp_path, tiny, kind):
    suffix, shape, dtype = KINDS[kind]
    rng = np.random.default_rng(1)
    high = 1.0 if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
    images = [(rng.random(shape) * high * (0.3 + 0.2 * i)).astype(dtype) for i in range(3)]
    json_file, image_dir = write_coco(tmp_path, images, [[(5, 5, 12, 12)]] * 3, suffix=suffix)
    analysis = analyze_coco(json_file, image_dir)
    channels = shape[2] if len(shape) == 3 else 1
    assert (analysis.channels, analysis.dtype) == (channels, np.dtype(dtype).name)
    mean, std = numpy_statistics([image.reshape(*shape[:2], channels) for image in images])
    np.testing.assert_allclose(analysis.pixel_mean, mean, rtol=1e-9)
    np.testing.assert_allclose(analysis.pixel_std, std, rtol=1e-9)
    fits = fitted(fit_config(tiny, analysis))
    assert len(fits["MODEL.PIXEL_MEAN"]) == len(fits["MODEL.PIXEL_STD"]) == channels
    np.testing.assert_allclose(fits["MODEL.PIXEL_MEAN"], mean, rtol=1e-5)  # raw units: 16-bit means in the thousands
    assert fits.get("INPUT.FORMAT") == ("L" if channels == 1 else None)
    new, _ = apply_fits(tiny, fit_config(tiny, analysis))
    assert len(new.MODEL.PIXEL_MEAN) == len(new.MODEL.PIXEL_STD) == channels


def test_a_sample_mixing_image_kinds_names_two_files(tmp_path):
    images = [np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)]
    json_file, image_dir = write_coco(tmp_path, images, [[(1, 1, 5, 5)]] * 3)
    with pytest.raises(MaskinitError, match=r"001\.png is 1-channel uint8, .*002\.png is 3-channel uint8"):
        analyze_coco(json_file, image_dir)


def test_a_constant_set_gets_std_1_not_0(tmp_path, tiny):
    json_file, image_dir = write_coco(tmp_path, [(30, 30, 3)] * 2, [[(1, 1, 5, 5)]] * 2)
    fits = fit_config(tiny, analyze_coco(json_file, image_dir))
    std = next(fit for fit in fits if fit.key == "MODEL.PIXEL_STD")
    assert std.value == [1.0] * 3 and "constant" in std.reason


def test_rgb_input_format_gets_the_channels_in_rgb_order(tmp_path, tiny):
    image = np.zeros((20, 20, 3), np.uint8)
    image[:] = (10, 100, 200)  # BGR
    json_file, image_dir = write_coco(tmp_path, [image], [[(1, 1, 5, 5)]])
    analysis = analyze_coco(json_file, image_dir)
    rgb = tiny.clone()
    rgb.INPUT.FORMAT = "RGB"
    assert fitted(fit_config(tiny, analysis))["MODEL.PIXEL_MEAN"] == [10.0, 100.0, 200.0]
    assert fitted(fit_config(rgb, analysis))["MODEL.PIXEL_MEAN"] == [200.0, 100.0, 10.0]


# ---------------------------------------------------------------------------------------------
# What the JSON holds


def test_crowd_regions_and_bad_annotations_are_left_out(tmp_path):
    crowd = {
        "image_id": 1,
        "category_id": 2,
        "bbox": [0, 0, 10, 10],
        "area": 100,
        "iscrowd": 1,
        "segmentation": {"size": [64, 64], "counts": [0, 100, 3996]},
    }
    bad_box = {
        "image_id": 1,
        "category_id": 1,
        "bbox": [5, 5, 0, 8],
        "area": 0,
        "iscrowd": 0,
        "segmentation": rectangle(5, 5, 1, 8),
    }
    boxes = [[(1, 1, 8, 8, 0), (20, 20, 10, 10, 1)], [(3, 3, 6, 6, 1)]]
    json_file, image_dir = write_coco(
        tmp_path, [(64, 64)] * 2, boxes, categories=("cat", "dog", "emu"), extra_annotations=[crowd, bad_box]
    )
    analysis = analyze_coco(json_file, image_dir)
    assert analysis.num_instances == 3 and analysis.num_crowd == 1 and analysis.num_left_out == 1
    assert analysis.class_counts == {"cat": 1, "dog": 2, "emu": 0}
    assert analysis.instances_per_image.tolist() == [2, 1]
    assert analysis.mask_format == "polygon"  # the crowd region's RLE does not count, as Detectron2 drops crowds


def test_rle_instance_masks_mean_bitmask(tmp_path):
    rle = {
        "image_id": 1,
        "category_id": 1,
        "bbox": [0, 0, 10, 10],
        "area": 100,
        "iscrowd": 0,
        "segmentation": {"size": [64, 64], "counts": [0, 100, 3996]},
    }
    json_file, image_dir = write_coco(tmp_path, [(64, 64)], [[]], extra_annotations=[rle])
    assert analyze_coco(json_file, image_dir).mask_format == "bitmask"


def test_unusable_inputs_raise_one_line(tmp_path):
    json_file, image_dir = write_coco(tmp_path, [(20, 20)], [[(1, 1, 5, 5)]])
    with pytest.raises(MaskinitError, match="not found"):
        analyze_coco(json_file, tmp_path / "nowhere")
    with pytest.raises(MaskinitError, match="at least 1 image"):
        analyze_coco(json_file, image_dir, sample=0)
    (image_dir / "001.png").unlink()
    with pytest.raises(MaskinitError, match=r"cannot read image .*001\.png"):
        analyze_coco(json_file, image_dir)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(MaskinitError, match="no images"):
        analyze_coco(broken, image_dir)


@pytest.mark.slow
def test_the_statistics_import_no_torch(tmp_path):
    json_file, image_dir = write_coco(tmp_path, [(20, 20)], [[(1, 1, 5, 5)]])
    code = (
        "import sys; from maskinit.data.analysis import analyze_coco; "
        f"analyze_coco({str(json_file)!r}, {str(image_dir)!r}); "
        "print(sorted({'torch', 'detectron2'} & set(sys.modules)))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


# ---------------------------------------------------------------------------------------------
# maskinit analyze-data


@pytest.mark.slow
def test_analyze_data_prints_both_tables_and_writes_the_plot_and_json(tmp_path, tiny):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (200, 300, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [grid_boxes(6, 20, 40, columns=3, ratio=2.0) + [(10, 100, 60, 60, 1)] for _ in range(3)]
    json_file, image_dir = write_coco(tmp_path, images, boxes, categories=("pedestrian", "balloon"))
    plot, out = tmp_path / "analysis.png", tmp_path / "analysis.json"
    result = CliRunner().invoke(
        app,
        [
            "analyze-data",
            "--json",
            str(json_file),
            "--images",
            str(image_dir),
            "--preset",
            "tiny",
            "--plot",
            str(plot),
            "--json-out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "pixel mean" in result.stdout and "pedestrian 18" in result.stdout and "box height/width" in result.stdout
    expected = fit_config(tiny, analyze_coco(json_file, image_dir))
    assert "data fit safe: estimated" in result.stdout
    for fit in expected:
        assert f"{fit.key}: " in result.stdout and fit.reason in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(plot))
    assert image.shape[0] > 400 and image.shape[1] > 800 and image.std() > 10  # a drawn figure, not a blank
    written = json.loads(out.read_text())
    assert written["statistics"]["channels"] == 3 and written["statistics"]["class_counts"] == {
        "pedestrian": 18,
        "balloon": 3,
    }
    assert [(row["key"], row["value"]) for row in written["fits"]] == [
        (fit.key, list(fit.value) if isinstance(fit.value, tuple) else fit.value) for fit in expected
    ]
    assert next(row for row in written["fits"] if row["key"] == "MODEL.PIXEL_MEAN")["preset"] == list(
        tiny.MODEL.PIXEL_MEAN
    )
    assert written["fit"]["mode"] == "safe" and written["fit"]["step_cost"] >= 1.0


@pytest.mark.slow
def test_analyze_data_bad_input_is_one_red_line(tmp_path):
    json_file, _ = write_coco(tmp_path, [(20, 20)], [[(1, 1, 5, 5)]])
    result = CliRunner().invoke(app, ["analyze-data", "--json", str(json_file), "--images", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0]
