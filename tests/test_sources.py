"""maskinit.data.sources: which data a run uses. `validate_data` checks the COCO files (a cleaned copy with
--skip-bad), `resolve_data` registers them (or the embedded default), `record_data`/`recorded_data` keep
them in the run's config, `evaluation_data` picks what `eval` evaluates on."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from detectron2.data import DatasetCatalog
from test_report import broken_fixable_set
from test_validate import break_duplicate_annotation_id, load, write

from maskinit import MaskinitError, load_config
from maskinit.data import generate_coco_dataset, register_coco_dataset
from maskinit.data.sources import (
    VAL_NAME,
    evaluation_data,
    record_data,
    recorded_data,
    register_from_options,
    resolve_data,
    validate_data,
)
from maskinit.run_options import DataOptions


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    return generate_coco_dataset(tmp_path_factory.mktemp("identity"), 3, seed=31)


# ---------------------------------------------------------------------------------------------
# validate_data: what train and eval call before registering


def test_validate_data_registers_a_cleaned_copy_with_skip_bad(tmp_path, polygon_set):
    data, path, images, bad_image, dropped = broken_fixable_set(tmp_path, polygon_set)
    options = SimpleNamespace(train_json=str(path), train_images=str(images), val_json=None, val_images=None)
    with pytest.raises(MaskinitError, match="--skip-bad"):
        validate_data(options, skip_bad=False, clean_dir=tmp_path / "clean")
    assert options.train_json == str(path)

    cleaned, lines = validate_data(options, skip_bad=True, clean_dir=tmp_path / "clean")
    assert options.train_json == str(path)  # the options given are left as they were
    assert cleaned.train_json != str(path) and cleaned.train_json.startswith(str(tmp_path / "clean"))
    assert cleaned.train_json in lines[-1]
    register_coco_dataset("maskinit_test_validate", cleaned.train_json, cleaned.train_images)
    records = DatasetCatalog.get("maskinit_test_validate")
    expected = {}
    for annotation in data["annotations"]:
        if annotation["id"] not in dropped:
            expected[annotation["image_id"]] = expected.get(annotation["image_id"], 0) + 1
    loaded = {record["image_id"]: len(record["annotations"]) for record in records if record["annotations"]}
    assert loaded == expected
    assert bad_image not in {record["image_id"] for record in records}
    # The same data cleaned again lands on the same content-named copy.
    again = SimpleNamespace(train_json=str(path), train_images=str(images), val_json=None, val_images=None)
    assert validate_data(again, skip_bad=True, clean_dir=tmp_path / "clean").data.train_json == cleaned.train_json


def test_validate_data_checks_val_and_keeps_good_files(tmp_path, polygon_set):
    data = load(polygon_set)
    break_duplicate_annotation_id(data)
    options = SimpleNamespace(train_json=str(polygon_set.json_file), train_images=str(polygon_set.image_root),
                              val_json=str(write(tmp_path, data, "val.json")), val_images=str(polygon_set.image_root))
    with pytest.raises(MaskinitError, match="val.json: 1 duplicate annotation id"):
        validate_data(options, skip_bad=True, clean_dir=tmp_path / "clean")
    options.val_json = None
    checked = validate_data(options, skip_bad=True, clean_dir=tmp_path / "clean")
    assert checked.notes == []
    assert checked.data.train_json == str(polygon_set.json_file)
    assert not (tmp_path / "clean").exists()
    options.train_images = None
    with pytest.raises(MaskinitError, match="--train-json needs --train-images"):
        validate_data(options, skip_bad=False)

# ---------------------------------------------------------------------------------------------
# resolve_data and register_from_options


@pytest.mark.slow
def test_resolve_data_returns_the_data_to_register_and_leaves_its_argument_alone(val_set):
    given = DataOptions()  # no data: the embedded default set
    cfg, data = resolve_data(load_config(preset="tiny"), given)
    assert given == DataOptions()
    assert data.train_json and data.val_json and data.train_images and data.val_images
    assert cfg.DATASETS.TRAIN == ("maskinit_train",) and cfg.DATASETS.TEST == (VAL_NAME,)
    explicit = DataOptions(str(val_set.json_file), str(val_set.image_root))
    _, same = resolve_data(load_config(preset="tiny"), explicit)
    assert same == explicit


def test_resolve_data_refuses_sources_that_exclude_each_other(val_set):
    cfg = load_config(preset="tiny")
    json_file, images = str(val_set.json_file), str(val_set.image_root)
    with pytest.raises(MaskinitError, match="--dataset and --train-json/--val-json are exclusive"):
        resolve_data(cfg, DataOptions(train_json=json_file, train_images=images, dataset="coco_2017_train"))
    with pytest.raises(MaskinitError, match="--val-json without --train-json"):
        resolve_data(cfg, DataOptions(val_json=json_file, val_images=images))
    with pytest.raises(MaskinitError, match="--val-json needs --val-images"):
        register_from_options(DataOptions(train_json=json_file, train_images=images, val_json=json_file))


# ---------------------------------------------------------------------------------------------
# What a run's config records, and what eval evaluates on


def test_recorded_data_gives_back_what_record_data_wrote(tmp_path):
    cfg = load_config(preset="tiny")
    files = DataOptions(train_json="train.json", train_images="images", val_json=str(tmp_path / "val.json"),
                        val_images=str(tmp_path))
    recorded = record_data(cfg, files)
    assert cfg.MASKINIT.DATA.TRAIN_JSON == ""  # the config given is left alone
    assert recorded.MASKINIT.DATA.TRAIN_JSON == str(Path("train.json").resolve())  # made absolute
    again = recorded_data(recorded)
    assert again.val_json == str(tmp_path / "val.json") and again.train_images == str(Path("images").resolve())
    source = record_data(cfg, DataOptions(source=str(tmp_path), format="yolo", val_fraction=0.25, split_seed=3))
    assert recorded_data(source) == DataOptions(source=str(tmp_path), format="yolo", val_fraction=0.25, split_seed=3)
    assert recorded_data(cfg) is None  # nothing recorded: the embedded default set


def test_evaluation_data_is_the_validation_set_or_says_there_is_none():
    assert evaluation_data(DataOptions(val_json="v.json", val_images="i"), "run") == DataOptions(
        val_json="v.json", val_images="i"
    )
    assert evaluation_data(DataOptions(dataset="a", val_dataset="b"), "run") == DataOptions(dataset="b")
    whole = DataOptions(source="folder", train_json="t.json", train_images="i")
    assert evaluation_data(whole, "run", whole_if_one_split=True) == DataOptions(val_json="t.json", val_images="i")
    with pytest.raises(MaskinitError, match="^run: the run validated on no dataset"):
        evaluation_data(DataOptions(dataset="a"), "run")
    with pytest.raises(MaskinitError, match="^out/x: the run held no validation data"):
        evaluation_data(DataOptions(train_json="t.json", train_images="i"), "out/x")
