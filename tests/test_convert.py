"""`maskinit convert`, `maskinit split`, the class-covering seeded split, and `check-data`/`analyze-data --data`."""

from __future__ import annotations

import json
import shutil

import format_writers as w
import pytest
from typer.testing import CliRunner

from maskinit import MaskinitError
from maskinit.cli import app
from maskinit.data.convert import convert, read_source
from maskinit.data.formats import read_dataset
from maskinit.data.formats.common import TRAIN, VAL
from maskinit.data.split import choose_split

runner = CliRunner()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return w.source_set(tmp_path_factory.mktemp("src"), num_train=8, num_val=3, mask_format="polygon")


def test_convert_writes_a_checked_coco_folder_that_reads_back(parts, tmp_path):
    w.write_via(parts, tmp_path / "via")
    result = runner.invoke(app, ["convert", str(tmp_path / "via"), "-o", str(tmp_path / "coco")])
    assert result.exit_code == 0, result.output
    assert "via (detected: VIA JSON via_region_data.json" in result.output
    assert "check-data: ok" in result.output
    assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == ["train.json", "val.json"]
    coco = json.loads((tmp_path / "coco" / "train.json").read_text())
    assert coco["images"][0]["file_name"].startswith("../via/train/")  # referenced where they are, relative
    again = read_dataset(tmp_path / "coco")
    assert again.format == "coco"
    for split in (TRAIN, VAL):
        assert w.masks_by_picture(again.coco(split)) == w.masks_by_picture(parts[split][0])


def test_convert_copy_images_is_portable(parts, tmp_path):
    w.write_labelme({"train": parts["train"]}, tmp_path / "labelme")
    written = convert(tmp_path / "labelme", tmp_path / "out", val_fraction=0.25, seed=3, copy_images=True)
    assert set(written.files) == {TRAIN, VAL}
    shutil.move(tmp_path / "out", tmp_path / "moved")
    shutil.rmtree(tmp_path / "labelme")
    again = read_dataset(tmp_path / "moved")
    assert len(again.splits[VAL].images) == 2 and len(again.splits[TRAIN].images) == 6
    assert all((again.splits[TRAIN].image_root / i["file_name"]).is_file() for i in again.splits[TRAIN].images)
    merged = {**w.masks_by_picture(again.coco(TRAIN)), **w.masks_by_picture(again.coco(VAL))}
    assert merged == w.masks_by_picture(parts["train"][0])


def test_one_split_source_is_not_split_by_convert_unless_asked(parts, tmp_path):
    w.write_labelme({"train": parts["train"]}, tmp_path / "labelme")
    written = convert(tmp_path / "labelme", tmp_path / "out")
    assert list(written.files) == [TRAIN]


def coco_with_classes(images_classes: list[list[int]]) -> dict:
    """A COCO dict whose image i holds one annotation of each class in images_classes[i]."""
    annotations = [{"id": len(images_classes) * 10 + i * 10 + k, "image_id": i + 1, "category_id": c, "iscrowd": 0}
                   for i, classes in enumerate(images_classes) for k, c in enumerate(classes)]
    categories = sorted({c for classes in images_classes for c in classes})
    return {"images": [{"id": i + 1} for i in range(len(images_classes))], "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def test_split_is_seeded_and_by_image():
    classes = [[1], [1, 2], [2], [1], [3], [3, 1], [2], [1], [], []]
    coco = coco_with_classes(classes)
    first, again = choose_split(coco, 0.3, 7), choose_split(coco, 0.3, 7)
    assert first.held == again.held
    assert any(choose_split(coco, 0.3, seed).held != first.held for seed in range(8, 14))
    annotated_held = [i for i in first.held if classes[i - 1]]
    assert len(annotated_held) == 2 and len(first.held) == 3  # 0.3 of 8 annotated and of 2 without, rounded
    assert {1, 2, 3} <= {c for i in annotated_held for c in classes[i - 1]}
    assert not first.notes


def test_split_keeps_every_class_in_both_parts_when_it_can():
    classes = [[1]] * 8 + [[2], [2], [3], [3]]
    coco = coco_with_classes(classes)
    for seed in range(10):
        choice = choose_split(coco, 0.25, seed)
        held = [classes[i - 1] for i in choice.held]
        kept = [classes[i - 1] for i in range(1, 13) if i not in choice.held]
        for c in (1, 2, 3):
            assert any(c in cl for cl in held) and any(c in cl for cl in kept), (seed, choice.held)
        assert len(choice.held) == 3 and not choice.notes


def test_split_says_when_it_cannot():
    coco = coco_with_classes([[1]] * 9 + [[2]] + [[3], [3]])
    choice = choose_split(coco, 0.1, 0)
    assert "c2 (1 image)" in choice.notes[0]
    assert len(choice.held) == 1
    assert any("c3" in note or "c1" in note for note in choice.notes[1:])
    with pytest.raises(MaskinitError, match="between 0 and 1"):
        choose_split(coco, 1.0, 0)


def test_split_command(parts, tmp_path):
    coco, root = parts["train"]
    (tmp_path / "all.json").write_text(json.dumps(coco))
    args = ["split", str(tmp_path / "all.json"), "--images", str(root), "--val-fraction", "0.25", "--seed", "5"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "b")]).exit_code == 0
    for name in ("train.json", "val.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    val = json.loads((tmp_path / "a" / "val.json").read_text())
    train = json.loads((tmp_path / "a" / "train.json").read_text())
    assert len(val["images"]) == 2 and len(train["images"]) == 6
    assert not {i["id"] for i in val["images"]} & {i["id"] for i in train["images"]}
    again = read_dataset(tmp_path / "a")
    merged = {**w.masks_by_picture(again.coco(TRAIN)), **w.masks_by_picture(again.coco(VAL))}
    assert merged == w.masks_by_picture(coco)


def test_read_source_default_split_and_its_own_split(parts, tmp_path):
    w.write_via(parts, tmp_path / "two")
    w.write_via({"train": parts["train"]}, tmp_path / "one")
    assert read_source(tmp_path / "two").val_fraction == 0.0
    one = read_source(tmp_path / "one")
    assert one.val_fraction == 0.2 and set(one.dataset.splits) == {TRAIN, VAL}
    assert any("(default) 0.2" in line for line in one.lines)
    assert read_source(tmp_path / "one", val_fraction=0).dataset.splits.keys() == {TRAIN}
    with pytest.raises(MaskinitError, match="has its own val split"):
        read_source(tmp_path / "two", val_fraction=0.2)


@pytest.mark.slow
def test_check_data_and_analyze_data_take_data(parts, tmp_path):
    w.write_yolo(parts, tmp_path / "yolo")
    result = runner.invoke(app, ["check-data", "--data", str(tmp_path / "yolo")])
    assert result.exit_code == 0, result.output
    assert "yolo (detected: YOLO data.yaml" in result.output and result.output.count("ok: nothing stops training") == 2
    result = runner.invoke(app, ["analyze-data", "--data", str(tmp_path / "yolo"), "--sample", "2"])
    assert result.exit_code == 0, result.output
    assert "keys fitted to the data" in result.output
