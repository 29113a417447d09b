"""`--data` end to end: `train --data` on a one-split source (format detected, split seeded and
recorded in config.yaml), `eval RUN_DIR` and `train --resume` with no data options, `tune --data`, and
`predict --format label-image|yolo` whose outputs read back as datasets with the same instances."""

from __future__ import annotations

import json
from pathlib import Path

import format_writers as w
import numpy as np
import pytest
from typer.testing import CliRunner

from maskinit import load_config
from maskinit.cli import app
from maskinit.data.formats import read_dataset
from maskinit.data.formats.common import TRAIN
from maskinit.data.formats.yolo import parse_line
from maskinit.data.sources import recorded_data

runner = CliRunner()
FAST = ["--preset", "tiny", "--max-iter", "2", "--checkpoint-period", "1", "--seed", "0", "--no-progress",
        "SOLVER.WARMUP_ITERS", "1"]


# The module-scoped fixtures train once per test process: under `make test` (pytest-xdist) this module's tests
# run in one of them.
pytestmark = pytest.mark.xdist_group("data_option")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A LabelMe folder with one split (8 pictures of 64x64)."""
    root = tmp_path_factory.mktemp("data")
    parts = w.source_set(root / "generated", num_train=8, num_val=1, mask_format="polygon")
    w.write_labelme({"train": parts["train"]}, root / "labelme")
    return root / "labelme" / "train", parts["train"][0]


@pytest.fixture(scope="module")
def run(source, tmp_path_factory):
    folder, _ = source
    out = tmp_path_factory.mktemp("run") / "out"
    result = runner.invoke(app, ["train", "--data", str(folder), "--val-fraction", "0.25", "--split-seed", "3",
                                 "--output-dir", str(out), *FAST])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_train_names_the_format_and_the_split(run):
    _, output = run
    assert "labelme (detected: 8 LabelMe JSON files)" in output
    assert "--val-fraction 0.25 (seed 3): validating on 2 of the 8 images" in output


@pytest.mark.slow
def test_the_run_records_its_data(run, source):
    out, _ = run
    cfg = load_config(out / "config.yaml")
    data = cfg.MASKINIT.DATA
    assert (data.SOURCE, data.FORMAT, data.VAL_FRACTION, data.SPLIT_SEED) == (
        str(source[0].resolve()),
        "labelme",
        0.25,
        3,
    )
    val = json.loads(Path(data.VAL_JSON).read_text())
    assert len(val["images"]) == 2 and data.VAL_IMAGES == str(source[0].resolve())
    assert recorded_data(cfg).source == data.SOURCE
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "finished"


@pytest.mark.slow
def test_eval_run_dir_needs_no_data_options(run):
    out, _ = run
    result = runner.invoke(app, ["eval", str(out), "--json-out", str(out / "again.json")])
    assert result.exit_code == 0, result.output
    assert "labelme" in result.output and "COCO AP" in result.output
    assert json.loads((out / "again.json").read_text()).keys() == json.loads((out / "eval.json").read_text()).keys()
    result = runner.invoke(app, ["eval", str(out / "nothing")])
    assert result.exit_code == 2 and "not found" in result.output


@pytest.mark.slow
def test_resume_needs_no_data_options(run):
    out, _ = run
    result = runner.invoke(app, ["train", "--resume", "--output-dir", str(out), "--max-iter", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run_summary.json").read_text())["iterations"] == 3
    assert load_config(out / "config.yaml").MASKINIT.DATA.SPLIT_SEED == 3


def predicted(run, source, tmp_path, format_name):
    """(the run folder, the predictions folder) of `maskinit predict` of the run on the source, in a format."""
    out, _ = run
    folder, _ = source
    pred = tmp_path / "pred"
    result = runner.invoke(app, ["predict", "--config", str(out / "config.yaml"), "--weights",
                                 str(out / "model_final.pth"), "--input", str(folder), "--output-dir", str(pred),
                                 "--format", format_name, "--score-threshold", "0"])
    assert result.exit_code == 0, result.output
    return out, pred


@pytest.mark.slow
def test_predict_label_images_read_back_with_the_same_instances(run, source, tmp_path):
    out, pred = predicted(run, source, tmp_path, "label-image")
    class_map = json.loads((pred / "classes.json").read_text())
    dataset = read_dataset(pred)
    assert dataset.format == "label-image"
    names = {c["id"]: c["name"] for c in dataset.categories}
    import cv2

    checked = 0
    for image in dataset.coco(TRAIN)["images"]:
        stem = image["file_name"].rsplit(".", 1)[0]
        label = cv2.imread(str(pred / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint16
        mine = [a for a in dataset.coco(TRAIN)["annotations"] if a["image_id"] == image["id"]]
        expected = sorted(
            (class_map["classes"][str(class_map["instances"][stem][str(v)])], np.packbits(label == v).tobytes())
            for v in np.unique(label)
            if v
        )
        got = sorted(
            (names[a["category_id"]], np.packbits(w.decode(a["segmentation"], 64, 64)).tobytes()) for a in mine
        )
        assert got == expected
        checked += len(got)
    assert checked > 0


@pytest.mark.slow
def test_predict_yolo_lines(run, source, tmp_path):
    out, pred = predicted(run, source, tmp_path, "yolo")
    names = (pred / "classes.txt").read_text().split()
    assert names == load_config(out / "config.yaml").MASKINIT.CLASS_NAMES
    lines = [
        (f, n, line)
        for f in sorted((pred / "labels").glob("*.txt"))
        for n, line in enumerate(f.read_text().splitlines(), 1)
    ]
    assert lines
    for file, number, line in lines:
        parse_line(line, number, file, len(names))


@pytest.mark.slow
def test_tune_takes_data(source, tmp_path):
    folder, _ = source
    result = runner.invoke(
        app,
        [
            "tune", "--data", str(folder), "--trials", "1", "--output-dir", str(tmp_path / "study"), "--preset", "tiny",
            "--max-iter", "2", "--no-progress", "--search-only", "--search", "SOLVER.WARMUP_ITERS=0,1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "labelme (detected" in result.output
    trial = load_config(tmp_path / "study" / "trial-0000" / "config.yaml")
    assert trial.MASKINIT.DATA.FORMAT == "labelme" and trial.MASKINIT.DATA.VAL_FRACTION == 0.2


@pytest.mark.parametrize("key, value, message", [
    ("MASKINIT.DATA.VAL_FRACTION", "1.5", "MASKINIT.DATA.VAL_FRACTION must be in [0, 1)"),
    ("MASKINIT.DATA.FORMAT", "xml", "unknown data format 'xml'"),
])
def test_data_keys_are_checked(key, value, message):
    from maskinit import MaskinitError

    with pytest.raises(MaskinitError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(preset="tiny", overrides=[key, value])
