"""Bad input in any format: one line naming the file and the problem, exit 2, and nothing half-written
(`convert` writes all of its folder or nothing)."""

from __future__ import annotations

import json

import cv2
import format_writers as w
import numpy as np
import pytest
from typer.testing import CliRunner

from maskinit import MaskinitError
from maskinit.cli import app
from maskinit.data.formats import detect_format, read_dataset


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return w.source_set(tmp_path_factory.mktemp("src"), num_train=3, num_val=2, mask_format="polygon")


@pytest.fixture(scope="module")
def rle_parts(tmp_path_factory):
    return w.source_set(tmp_path_factory.mktemp("rle"), num_train=3, num_val=2, mask_format="rle")


def refused(path, *words, format_name=None):
    """The reader's one-line refusal, checked for `words`; and `maskinit convert` refusing the same with
    one line, exit 2, no output folder and no temporary folder left."""
    with pytest.raises(MaskinitError) as caught:
        read_dataset(path, format_name)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    out = path.parent / f"{path.name}-converted"
    args = ["convert", str(path), "-o", str(out)] + (["--format", format_name] if format_name else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()
    assert not list(path.parent.glob(f".{out.name}.*"))
    return message


def test_unknown_layout_names_the_known_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    message = refused(tmp_path, str(tmp_path), "no known annotation layout", "label-image", "yolo")
    assert "--format" in message


def test_ambiguous_layout_names_the_candidates(parts, tmp_path):
    w.write_labelme({"train": parts["train"]}, tmp_path)
    coco, _ = parts["train"]
    (tmp_path / "train" / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(MaskinitError, match=r"ambiguous layout, it fits coco .*; labelme .*--format"):
        detect_format(tmp_path)


def test_forced_format_that_does_not_fit(parts, tmp_path):
    w.write_labelme({"train": parts["train"]}, tmp_path)
    refused(tmp_path, "not a voc layout", format_name="voc")


def test_polygon_with_fewer_than_three_points(parts, tmp_path):
    w.write_labelme({"train": parts["train"]}, tmp_path)
    first = min((tmp_path / "train").glob("*.json"))
    document = json.loads(first.read_text())
    document["shapes"][0]["points"] = document["shapes"][0]["points"][:2]
    first.write_text(json.dumps(document))
    refused(tmp_path, first.name, "2 points", "at least 3")


def test_yolo_polygon_with_two_points(parts, tmp_path):
    w.write_yolo(parts, tmp_path)
    label = min((tmp_path / "labels" / "train").glob("*.txt"))
    label.write_text("0 0.1 0.1 0.5 0.5 0.9 0.9\n1 0.2 0.2 0.4 0.4\n")
    message = refused(tmp_path, f"{label.name}:2", "a box")
    label.write_text("0 0.1 0.1\n")
    assert message != refused(tmp_path, f"{label.name}:1", "1 point;", "at least 3")


def test_normalized_coordinates_outside_0_1(parts, tmp_path):
    w.write_yolo(parts, tmp_path)
    label = min((tmp_path / "labels" / "val").glob("*.txt"))
    label.write_text("0 0.1 0.1 1.2 0.5 0.3 0.9\n")
    refused(tmp_path, f"{label.name}:1", "normalized coordinate 1.2 outside [0, 1]")


def test_label_image_of_another_size_than_its_picture(rle_parts, tmp_path):
    w.write_label_images(rle_parts, tmp_path, classes="single")
    label = sorted((tmp_path / "train" / "labels").glob("*.png"))[1]
    cv2.imwrite(str(label), np.zeros((32, 48), np.uint16))
    refused(tmp_path, label.name, "48x32", "64x64")


def test_mask_file_without_a_picture(rle_parts, tmp_path):
    w.write_instance_masks(rle_parts, tmp_path, layout="flat")
    orphan = tmp_path / "train" / "masks" / "999999_0.png"
    cv2.imwrite(str(orphan), np.full((64, 64), 255, np.uint8))
    refused(tmp_path, orphan.name, "without a picture")


def test_label_image_without_a_picture(rle_parts, tmp_path):
    w.write_label_images(rle_parts, tmp_path, classes="single")
    picture = min((tmp_path / "val" / "images").glob("*.png"))
    picture.unlink()
    refused(tmp_path, picture.stem, "without a picture")


def test_class_map_missing_a_label(rle_parts, tmp_path):
    w.write_label_images(rle_parts, tmp_path, classes="instances")
    class_map = tmp_path / "train" / "classes.json"
    data = json.loads(class_map.read_text())
    stem = min(data["instances"])
    value = min(data["instances"][stem])
    del data["instances"][stem][value]
    class_map.write_text(json.dumps(data))
    refused(tmp_path, "classes.json", f"class map missing label {value} of {stem}.png")


def test_empty_set(parts, tmp_path):
    w.write_yolo(parts, tmp_path)
    for label in (tmp_path / "labels").rglob("*.txt"):
        label.write_text("")
    refused(tmp_path, "not one instance annotated", "an empty set")
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    (empty / "labels" / "a.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    refused(empty, "a.txt", "without a picture")


def test_cvat_mask_whose_rle_does_not_fill_its_box(rle_parts, tmp_path):
    w.write_cvat(rle_parts, tmp_path, masks=True)
    xml = tmp_path / "annotations.xml"
    xml.write_text(xml.read_text().replace('rle="', 'rle="1, ', 1))
    refused(tmp_path, "annotations.xml", "RLE covers")


def test_via_region_without_its_class(parts, tmp_path):
    w.write_via(parts, tmp_path)
    via = tmp_path / "train" / "via_region_data.json"
    data = json.loads(via.read_text())
    entry = next(iter(data.values()))
    entry["regions"]["0"]["region_attributes"] = {"shape": ""}
    via.write_text(json.dumps(data))
    refused(tmp_path, "via_region_data.json", "without its class")


def test_existing_output_folder_is_refused_and_kept(parts, tmp_path):
    w.write_via(parts, tmp_path / "via")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "via"), "-o", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_data_and_coco_paths_exclude_each_other(parts, tmp_path):
    w.write_via(parts, tmp_path / "via")
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "via"), "--train-json", "x.json",
                                      "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--data and --train-json exclude each other" in result.output
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "via"), "--val-fraction", "0.3",
                                      "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "has its own val split" in result.output
    assert not (tmp_path / "run").exists()
