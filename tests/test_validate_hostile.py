"""Hostile COCO files: data that a structural check passes and that would then segfault
pycocotools, exhaust memory or crash training or evaluation is refused, by `check-data` and by
training alike, in one line naming the file, the problem and an example; `check-data` runs without
torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from maskinit import MaskinitError
from maskinit.cli import app
from maskinit.config import load_config
from maskinit.data import generate_coco_dataset, inspect_coco
from maskinit.data.report import FATAL, FIXABLE, clean_coco_data, enforce_data_policy
from maskinit.data.sources import validate_data
from maskinit.data.validate import check_coco, check_coco_data
from maskinit.train import DataOptions, TrainOptions, train

NAN, INF = float("nan"), float("inf")
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return generate_coco_dataset(tmp_path_factory.mktemp("hostile"), 4, seed=7)


def load(files) -> dict:
    return json.loads(files.json_file.read_text())


def write(tmp_path, files, change=None, raw: bytes | None = None, name="hostile.json"):
    """The generated set changed by `change(data)` (or `raw` bytes), written to `tmp_path/name`."""
    path = tmp_path / name
    if raw is None:
        data = load(files)
        change(data)
        raw = json.dumps(data).encode()  # NaN and Infinity are written as Python's json writes them
    path.write_bytes(raw)
    return path


def set_polygon_coordinate(value):
    def change(data):
        data["annotations"][0]["segmentation"][0][2] = value
    return change


def all_crowd(data):
    for annotation in data["annotations"]:
        annotation["iscrowd"] = 1


def string_image_ids(data):
    for image in data["images"]:
        image["id"] = f"img{image['id']}"
    for annotation in data["annotations"]:
        annotation["image_id"] = f"img{annotation['image_id']}"


def string_annotation_ids(data):
    for annotation in data["annotations"]:
        annotation["id"] = f"ann{annotation['id']}"


def deeply_nested(depth: int = 200_000) -> bytes:
    return b'{"images": ' + b"[" * depth + b"]" * depth + b', "annotations": [], "categories": []}'


def with_bom(files) -> bytes:
    return b"\xef\xbb\xbf" + files.json_file.read_bytes()


# Every case: (change or raw bytes, kind, severity, text of the one-line refusal). Each passes a structural
# check of the COCO fields; unrefused, a NaN polygon segfaults training, a BOM fails it in pycocotools,
# all-crowd data fails it with "No valid data found", string image ids crash its evaluation.
CASES = {
    "nan-polygon": (set_polygon_coordinate(NAN), "invalid_polygon", FIXABLE, "a non-finite coordinate (nan)"),
    "inf-polygon": (set_polygon_coordinate(INF), "invalid_polygon", FIXABLE, "a non-finite coordinate (inf)"),
    "far-polygon": (set_polygon_coordinate(1e9), "invalid_polygon", FIXABLE, "more than an image size outside"),
    "huge-int-polygon": (
        set_polygon_coordinate(10**400), "invalid_polygon", FIXABLE, "more than an image size outside",
    ),
    "nan-area": (lambda d: d["annotations"][0].update(area=NAN), "annotation_non_finite", FIXABLE, "area nan"),
    "inf-keypoint": (
        lambda d: d["annotations"][0].update(keypoints=[1, 2, INF]),
        "annotation_non_finite",
        FIXABLE,
        "keypoints[2] inf",
    ),
    "huge-int-box": (lambda d: d["annotations"][0].update(bbox=[10**400, 1, 2, 3]), "invalid_box", FIXABLE, "[1000"),
    "nan-iscrowd": (lambda d: d["annotations"][0].update(iscrowd=NAN), "invalid_iscrowd", FIXABLE, "iscrowd nan"),
    "string-iscrowd": (lambda d: d["annotations"][0].update(iscrowd="0"), "invalid_iscrowd", FIXABLE, "iscrowd '0'"),
    "inf-in-image": (lambda d: d["images"][0].update(gps=[1.0, -INF]), "image_non_finite", FIXABLE, "gps[1] -inf"),
    "nan-in-info": (lambda d: d.update(info={"year": NAN}), "non_finite", FATAL, "info.year nan"),
    "nan-in-category": (
        lambda d: d["categories"][0].update(weight=NAN),
        "non_finite",
        FATAL,
        "categories[0].weight nan",
    ),
    "all-crowd": (all_crowd, "only_crowd", FATAL, "nothing to train on: all"),
    "string-image-ids": (
        string_image_ids, "string_image_id", FATAL,
        "images with string ids (COCO evaluation needs integer ids) (e.g. id 'img1'",
    ),
    "string-annotation-ids": (string_annotation_ids, "string_annotation_id", FATAL, "annotations with string ids"),
    "category-name-twice": (
        lambda d: d["categories"][1].update(name=d["categories"][0]["name"]),
        "duplicate_category_name",
        FATAL,
        "1 category name used twice (e.g. 'circle' (ids 1, 2))",
    ),
    "bom": (with_bom, "byte_order_mark", FATAL, "starts with a UTF-8 byte-order mark"),
    "deeply-nested": (lambda files: deeply_nested(), "not_coco", FATAL, "nested too deeply to parse"),
    "utf-16": (
        lambda files: files.json_file.read_text().encode("utf-16"),
        "not_coco",
        FATAL,
        "not valid JSON: not UTF-8 text",
    ),
    "5000-digit-number": (lambda files: b'{"images": [' + b"1" * 5000 + b"]}", "not_coco", FATAL, "not valid JSON"),
}
RAW = {"bom", "deeply-nested", "utf-16", "5000-digit-number"}


def case_file(tmp_path, files, case):
    make = CASES[case][0]
    return write(tmp_path, files, raw=make(files)) if case in RAW else write(tmp_path, files, make)


@pytest.mark.parametrize("case", CASES)
def test_each_case_is_found_under_its_kind(tmp_path, files, case):
    _, kind, severity, text = CASES[case]
    report = check_coco(case_file(tmp_path, files, case), files.image_root)
    assert kind in report.problems, report.to_dict()
    assert report.problems[kind].severity == severity
    assert text in report.problems[kind].summary()
    assert not report.ok


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_check_data_refuses_in_one_line_naming_file_problem_and_example(tmp_path, files, case):
    _, kind, severity, text = CASES[case]
    path = case_file(tmp_path, files, case)
    result = runner.invoke(app, ["check-data", "--json", str(path), "--images", str(files.image_root)])
    assert "Traceback" not in result.output and not isinstance(result.exception, RecursionError), result.output
    if severity == FATAL:
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and text in lines[0], result.stderr
    else:
        assert result.exit_code == 1 and "fixable" in result.stdout, result.output
        skipping = runner.invoke(
            app, ["check-data", "--json", str(path), "--images", str(files.image_root), "--skip-bad"]
        )
        assert skipping.exit_code == 0, skipping.output
        line = next(line for line in skipping.stdout.splitlines() if "leaving out" in line)
        assert line.startswith(f"{path}: leaving out 1 ") and text in line, skipping.stdout


# Not the NaN polygon here: were it let through, it would segfault this process (see validate_data below).
@pytest.mark.parametrize("case", ["nan-area", "bom", "all-crowd", "string-image-ids", "deeply-nested"])
def test_train_refuses_before_anything_is_built(tmp_path, files, case):
    path = case_file(tmp_path, files, case)
    out = tmp_path / "run"
    options = TrainOptions(output_dir=str(out), max_iter=1, progress=False,
                           data=DataOptions(train_json=str(path), train_images=str(files.image_root)))
    with pytest.raises(MaskinitError) as caught:
        train(load_config(preset="tiny"), options)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and CASES[case][3] in message
    assert not out.exists()  # refused before the output folder, the model or a data loader


def test_validate_data_refuses_a_nan_polygon_and_skip_bad_drops_it(tmp_path, files):
    path = case_file(tmp_path, files, "nan-polygon")
    options = DataOptions(train_json=str(path), train_images=str(files.image_root))
    refusal = r"1 invalid polygon \(e\.g\. id \d+ \(image \d+\): a non-finite coordinate \(nan\)\)"
    with pytest.raises(MaskinitError, match=refusal):
        validate_data(options, skip_bad=False)
    cleaned, lines = validate_data(options, skip_bad=True, clean_dir=tmp_path / "clean")
    assert "leaves out 1 annotation and 0 images" in lines[0]
    assert check_coco(cleaned.train_json, files.image_root).ok
    assert inspect_coco(cleaned.train_json).num_annotations == len(load(files)["annotations"]) - 1
    assert options.train_json == str(path)  # the options given are left as they were


def test_skip_bad_refuses_to_keep_only_crowd_regions(files):
    data = load(files)
    for annotation in data["annotations"][1:]:
        annotation["iscrowd"] = 1
    data["annotations"][0]["segmentation"][0][2] = NAN  # the one trainable annotation is bad
    report = check_coco_data(data, check_images=False, source="crowd.json")
    assert not report.fatal and report.trainable_annotations == 0
    with pytest.raises(MaskinitError, match="crowd.json: --skip-bad would drop every annotation or image"):
        enforce_data_policy(report, skip_bad=True)


def test_a_crowd_among_others_is_still_fine(files):
    data = load(files)
    data["annotations"][0]["iscrowd"] = 1
    report = check_coco_data(data, check_images=False)
    assert report.ok and report.trainable_annotations == len(data["annotations"]) - 1


def test_a_non_finite_image_field_drops_the_image(tmp_path, files):
    data = load(files)
    data["images"][0]["gps"] = [NAN]
    report = check_coco_data(data, check_images=False)
    assert report.bad_image_ids == {data["images"][0]["id"]}
    kept = clean_coco_data(data, report)
    assert [image["id"] for image in kept["images"]] == [image["id"] for image in data["images"][1:]]


def test_values_nested_as_deep_as_json_parses_are_shown_short(files):
    data = load(files)
    deep = NAN
    for _ in range(900):
        deep = [deep]
    data["annotations"][0]["bbox"] = deep
    data["annotations"][1]["area"] = deep
    data["info"] = deep
    report = check_coco_data(data, check_images=False, source="deep.json")
    examples = [example for problem in report.problems.values() for example in problem.examples]
    assert {"invalid_box", "annotation_non_finite", "non_finite"} <= set(report.problems)
    assert all(len(example) < 120 for example in examples), examples


def test_inspect_coco_reads_as_check_data_does(tmp_path, files):
    for case in ("bom", "deeply-nested"):
        with pytest.raises(MaskinitError) as caught:
            inspect_coco(case_file(tmp_path, files, case))
        assert CASES[case][3] in str(caught.value) and "\n" not in str(caught.value)


def test_pycocotools_cannot_read_a_bom_which_is_why_it_is_refused(tmp_path, files):
    from pycocotools.coco import COCO

    with pytest.raises(ValueError, match="BOM"):
        COCO(str(case_file(tmp_path, files, "bom")))


def run_python(code: str, *args, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASKINIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_check_data_never_imports_torch(tmp_path, files):
    fatal = case_file(tmp_path, files, "nan-in-info")
    code = (
        "import sys\n"
        "import maskinit.data.validate\n"
        "assert 'torch' not in sys.modules\n"
        "from maskinit.cli import app\n"
        "for path in sys.argv[2:]:\n"
        "    try:\n"
        "        app(['check-data', '--json', path, '--images', sys.argv[1]])\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code)\n"
        "print('imported:', sorted(name for name in ('torch', 'detectron2') if name in sys.modules))\n"
    )
    result = run_python(code, files.image_root, files.json_file, fatal, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "exit 0\nexit 2\nimported: []" in result.stdout, result.stdout + result.stderr


def test_inspect_init_data_refuses_a_nan_polygon_in_one_line(tmp_path, files):
    """inspect-init's batch: without the check, Detectron2 loads the NaN polygon and the forward pass
    segfaults in pycocotools (the forward is not run here: the refusal comes first)."""
    from maskinit.diagnostics import coco_batch

    path = case_file(tmp_path, files, "nan-polygon")
    with pytest.raises(MaskinitError) as caught:
        coco_batch(load_config(preset="tiny"), path, files.image_root)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: 1 invalid polygon")
    assert "a non-finite coordinate (nan)" in message
    assert "--skip-bad" not in message  # inspect-init has no such option
