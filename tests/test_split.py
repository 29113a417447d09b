"""The validation split held back from the training set (`maskinit tune --val-fraction`): by image,
seeded, both parts with annotated images, every annotation in exactly one part, refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskinit.data.split import HELD_BACK, TRAIN_PART, held_back_count, hold_back
from maskinit.errors import MaskinitError
from maskinit.run_options import DataOptions


def coco_file(path: Path, annotated: int, empty: int) -> Path:
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(1, annotated + empty + 1)]
    annotations = [{"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9.0, "iscrowd": 0,
                    "segmentation": [[1, 1, 4, 1, 4, 4]]} for i in range(1, annotated + 1) for k in range(2)]
    path.write_text(json.dumps({"info": {"v": 1}, "images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def test_the_split_is_by_image_seeded_and_keeps_every_annotation_once(tmp_path):
    source = coco_file(tmp_path / "train.json", annotated=17, empty=3)
    data = DataOptions(str(source), str(tmp_path / "images"), str(tmp_path / "val.json"), str(tmp_path / "val"))
    split = hold_back(data, 0.25, seed=3, folder=tmp_path / "split")
    train, held = (json.loads((tmp_path / "split" / name).read_text()) for name in (TRAIN_PART, HELD_BACK))
    original = json.loads(source.read_text())
    # the trials train on one part and are scored on the other; both read the training images
    assert split.data.train_json == str(tmp_path / "split" / TRAIN_PART) and split.data.val_json == str(
        tmp_path / "split" / HELD_BACK
    )
    assert split.data.train_images == split.data.val_images == str(tmp_path / "images")
    assert data.val_json == str(tmp_path / "val.json")  # the caller's options are not changed
    ids = [{i["id"] for i in part["images"]} for part in (train, held)]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {i["id"] for i in original["images"]}
    # 25 % of each kind: 4 of the 17 annotated images, 1 of the 3 without objects
    assert len(ids[1] & set(range(1, 18))) == 4 and len(ids[1] - set(range(1, 18))) == 1
    assert (split.train_images, split.held_back_images) == (15, 5) and "15 of the 20" in split.note
    for part, part_ids in zip((train, held), ids):
        assert all(a["image_id"] in part_ids for a in part["annotations"])
        assert part["categories"] == original["categories"] and part["info"] == original["info"]
    assert len(train["annotations"]) + len(held["annotations"]) == len(original["annotations"])
    # the same seed, the same split (every worker, a resumed study); another seed, another split
    again = hold_back(data, 0.25, seed=3, folder=tmp_path / "again")
    assert (tmp_path / "again" / HELD_BACK).read_text() == (tmp_path / "split" / HELD_BACK).read_text()
    other = hold_back(data, 0.25, seed=4, folder=tmp_path / "other")
    assert json.loads((tmp_path / "other" / HELD_BACK).read_text())["images"] != held["images"]
    assert again.held_back_images == other.held_back_images == 5


def test_each_part_keeps_an_annotated_image_however_small_the_set_or_fraction():
    assert held_back_count(2, 0.01) == 1 and held_back_count(2, 0.99) == 1
    assert held_back_count(100, 0.2) == 20


@pytest.mark.parametrize("fraction, annotated, message", [
    (0.0, 5, "between 0 and 1"),
    (1.0, 5, "between 0 and 1"),
    (0.2, 1, "1 annotated images; a split needs at least 2"),
])
def test_bad_splits_are_refused_in_one_line(tmp_path, fraction, annotated, message):
    source = coco_file(tmp_path / "train.json", annotated=annotated, empty=0)
    with pytest.raises(MaskinitError, match=message) as error:
        hold_back(DataOptions(str(source), str(tmp_path)), fraction, 0, tmp_path / "split")
    assert "\n" not in str(error.value)
    with pytest.raises(MaskinitError, match="not --dataset"):
        hold_back(DataOptions(dataset="coco_2017_train"), 0.2, 0, tmp_path / "split")
