"""`maskinit check-data`: exit 0 for usable data, 1 for fixable problems, 2 for fatal ones or bad
options, with a table of findings and never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from maskinit.cli import app
from maskinit.data import generate_coco_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_coco_dataset(tmp_path_factory.mktemp("check-data"), 4, seed=5)


def check_data(*args):
    result = runner.invoke(app, ["check-data", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def broken(tmp_path, dataset, change, name="train.json"):
    data = json.loads(dataset.json_file.read_text())
    change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_clean_data_exits_0(dataset):
    result = check_data("--json", dataset.json_file, "--images", dataset.image_root)
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "4 images" in result.stdout


def test_informational_findings_still_exit_0(tmp_path, dataset):
    def crowd(data):
        data["annotations"][0]["iscrowd"] = 1

    result = check_data("--json", broken(tmp_path, dataset, crowd), "--images", dataset.image_root)
    assert result.exit_code == 0, result.output
    assert "crowd annotation" in result.stdout and "info" in result.stdout


def test_fixable_problems_exit_1_with_the_table(tmp_path, dataset):
    def bad_box(data):
        data["annotations"][2]["bbox"] = [1, 1, 0, 5]

    result = check_data("--json", broken(tmp_path, dataset, bad_box), "--images", dataset.image_root)
    assert result.exit_code == 1, result.output
    assert "empty or invalid box" in result.stdout and "fixable" in result.stdout
    assert "--skip-bad" in result.stdout


def test_skip_bad_accepts_fixable_problems_and_says_what_goes(tmp_path, dataset):
    def unknown_image(data):
        data["annotations"][0]["image_id"] = 12345

    result = check_data(
        "--json", broken(tmp_path, dataset, unknown_image), "--images", dataset.image_root, "--skip-bad"
    )
    assert result.exit_code == 0, result.output
    assert "leaves out 1 annotation and 0 images" in result.stdout


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda data: data["images"].append(dict(data["images"][0])), "duplicate image id"),
        (lambda data: data["annotations"][0].pop("bbox"), "annotation missing bbox"),
        (lambda data: data.update(categories=[]), "no categories"),
    ],
    ids=["duplicate-image", "missing-bbox", "no-categories"],
)
def test_fatal_problems_exit_2_with_one_line(tmp_path, dataset, change, expected):
    result = check_data("--json", broken(tmp_path, dataset, change), "--images", dataset.image_root)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and "train.json" in lines[0]


@pytest.mark.parametrize("text", ['{"images": [', "[]"], ids=["malformed", "array"])
def test_files_that_are_not_coco_exit_2(tmp_path, dataset, text):
    path = tmp_path / "train.json"
    path.write_text(text)
    result = check_data("--json", path, "--images", dataset.image_root)
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "not COCO instances JSON" in lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--json", "{tmp}/absent.json", "--images", "{images}"], "not found"),
        (["--json", "{json}", "--images", "{tmp}/absent"], "image folder"),
        (["--json", "{json}"], "--no-images"),
    ],
    ids=["no-json", "no-image-folder", "no-images-option"],
)
def test_bad_options_exit_2_with_one_line(tmp_path, dataset, args, expected):
    values = {"tmp": tmp_path, "images": dataset.image_root, "json": dataset.json_file}
    result = check_data(*(arg.format(**values) for arg in args))
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and expected in lines[0]


def test_no_images_skips_the_files(tmp_path, dataset):
    result = check_data("--json", dataset.json_file, "--no-images")
    assert result.exit_code == 0, result.output
    assert "image files not checked" in result.stdout


def test_json_out_writes_the_report(tmp_path, dataset):
    def missing_segmentation(data):
        data["annotations"][1].pop("segmentation")

    out = tmp_path / "report.json"
    result = check_data("--json", broken(tmp_path, dataset, missing_segmentation), "--images", dataset.image_root,
                        "--json-out", out)
    assert result.exit_code == 2  # fatal, and the report is still written
    report = json.loads(out.read_text())
    assert report["ok"] is False
    assert [(p["kind"], p["severity"], p["count"]) for p in report["problems"] if p["severity"] == "fatal"] == [
        ("annotation_missing_segmentation", "fatal", 1)]
