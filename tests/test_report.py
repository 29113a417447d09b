"""maskinit.data.report: the policy on what check-data found (fatal refused in one line, fixable refused unless
--skip-bad, never everything dropped), the cleaned copy, and the report as JSON."""

from __future__ import annotations

import json

import pytest
from test_validate import (
    break_annotation_without_bbox,
    break_duplicate_image_id,
    break_unknown_category,
    load,
    own_images,
    write,
)

from maskinit import MaskinitError
from maskinit.data import inspect_coco
from maskinit.data.report import FATAL, FIXABLE, clean_coco_data, enforce_data_policy
from maskinit.data.validate import check_coco, check_coco_data, write_clean_json


def test_fatal_problems_raise_one_line_naming_each_kind(tmp_path, polygon_set):
    data = load(polygon_set)
    break_duplicate_image_id(data)
    break_annotation_without_bbox(data)
    break_unknown_category(data)  # fixable: not part of a fatal message
    path = write(tmp_path, data, "train.json")
    report = check_coco(path, polygon_set.image_root)
    for skip_bad in (False, True):
        with pytest.raises(MaskinitError) as caught:
            enforce_data_policy(report, skip_bad)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: ")
        annotation_id = data["annotations"][0]["id"]
        assert (
            f"1 duplicate image id (e.g. {data['images'][0]['id']}); 1 annotation missing bbox (e.g. id {annotation_id}"
            in message
        )
        assert "unknown category" not in message


def broken_fixable_set(tmp_path, polygon_set):
    """Two bad annotations and one missing image file, and the ids that must be dropped."""
    images = own_images(tmp_path, polygon_set)
    data = load(polygon_set)
    bad_image = data["images"][1]["id"]
    (images / data["images"][1]["file_name"]).unlink()
    kept = [a for a in data["annotations"] if a["image_id"] != bad_image]
    kept[0]["category_id"] = 999
    kept[-1]["bbox"] = [0, 0, 0, 0]
    dropped = {kept[0]["id"], kept[-1]["id"]} | {a["id"] for a in data["annotations"] if a["image_id"] == bad_image}
    return data, write(tmp_path, data), images, bad_image, dropped


def test_fixable_problems_raise_and_name_skip_bad(tmp_path, polygon_set):
    data, path, images, _, dropped = broken_fixable_set(tmp_path, polygon_set)
    report = check_coco(path, images)
    with pytest.raises(MaskinitError) as caught:
        enforce_data_policy(report, skip_bad=False)
    message = str(caught.value)
    assert "\n" not in message and "--skip-bad" in message
    for kind in ("missing_image_file", "unknown_category", "invalid_box"):
        assert report.problems[kind].summary() in message
    assert f"{len(dropped)} annotations and 1 image" in message


def test_skip_bad_drops_exactly_the_bad_items(tmp_path, polygon_set):
    data, path, images, bad_image, dropped = broken_fixable_set(tmp_path, polygon_set)
    report = check_coco(path, images)
    lines = enforce_data_policy(report, skip_bad=True)
    assert lines[0] == f"{path}: --skip-bad leaves out {len(dropped)} annotations and 1 image"
    assert len(lines) == 1 + len(report.fixable)
    assert report.annotations_dropped == len(dropped)
    cleaned = clean_coco_data(data, report)
    assert [i["id"] for i in cleaned["images"]] == [i["id"] for i in data["images"] if i["id"] != bad_image]
    assert [a["id"] for a in cleaned["annotations"]] == [a["id"] for a in data["annotations"] if a["id"] not in dropped]
    assert cleaned["categories"] == data["categories"]
    out = write_clean_json(path, report, tmp_path / "clean" / "train.json")
    assert json.loads(out.read_text()) == cleaned
    assert check_coco(out, images).ok
    assert inspect_coco(out).num_annotations == len(cleaned["annotations"])


def test_skip_bad_refuses_to_drop_everything(polygon_set):
    data = load(polygon_set)
    for annotation in data["annotations"]:
        annotation["bbox"] = [0, 0, -1, 5]
    report = check_coco_data(data, check_images=False, source="all-bad.json")
    with pytest.raises(MaskinitError, match="would drop every annotation"):
        enforce_data_policy(report, skip_bad=True)


def test_report_to_dict_is_json(tmp_path, polygon_set):
    _, path, images, bad_image, dropped = broken_fixable_set(tmp_path, polygon_set)
    report = check_coco(path, images)
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["ok"] is False
    blocking = {p["kind"]: p["severity"] for p in as_dict["problems"] if p["severity"] in (FATAL, FIXABLE)}
    assert blocking == {"unknown_category": FIXABLE, "invalid_box": FIXABLE, "missing_image_file": FIXABLE}
    assert as_dict["bad_image_ids"] == [bad_image]
    assert as_dict["skip_bad_drops"] == {"annotations": len(dropped), "images": 1}
