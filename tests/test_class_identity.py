"""Class identity: the training set's category names and ids travel with the run (config.yaml), and
eval, predict and train match other files' categories to them by name, never by id or position."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from conftest import replay_detector, save_untrained_checkpoint
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from maskinit import MaskinitError, load_config
from maskinit.config import dump_yaml
from maskinit.data import DatasetInfo, apply_dataset_to_cfg, generate_coco_dataset, register_coco_dataset
from maskinit.data.coco import model_classes
from maskinit.data.sources import VAL_NAME, resolve_data
from maskinit.data.synthetic import CLASS_NAMES
from maskinit.evaluation import evaluate_run
from maskinit.train import DataOptions
from maskinit.visualize import _categories, predict

# The generated sets have ids 1..5 for CLASS_NAMES; this permutation keeps every name, moves every id.
PERMUTED = {1: 4, 2: 5, 3: 1, 4: 3, 5: 2}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Copies with the model's categories go under the maskinit cache: a temporary one here."""
    monkeypatch.setenv("MASKINIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    return generate_coco_dataset(tmp_path_factory.mktemp("identity"), 3, seed=31)


def rewrite(json_file, out, ids=None, names=None, drop=()):
    """A variant of a COCO file: category ids mapped by `ids`, names by `names` (keyed by the old
    id), categories in `drop` left out with their annotations."""
    ids, names = ids or {}, names or {}
    coco = json.loads(json_file.read_text())
    coco["categories"] = [
        {**c, "id": ids.get(c["id"], c["id"]), "name": names.get(c["id"], c["name"])}
        for c in coco["categories"] if c["id"] not in drop
    ]
    coco["annotations"] = [
        {**a, "category_id": ids.get(a["category_id"], a["category_id"])}
        for a in coco["annotations"] if a["category_id"] not in drop
    ]
    out.write_text(json.dumps(coco))
    return out


def trained_cfg(info, folder):
    """The config `train` writes for a model trained on `info`, read back from its config.yaml."""
    cfg = apply_dataset_to_cfg(load_config(preset="tiny", overrides=["TEST.DETECTIONS_PER_IMAGE", "20"]), info)
    path = folder / "config.yaml"
    path.write_text(dump_yaml(cfg))
    return load_config(path=path)


@pytest.fixture
def replay(val_set, monkeypatch, tmp_path):
    """`maskinit eval` with the replayed predictions as the trained model: returns eval(cfg, val_json)."""
    detector = replay_detector(val_set.json_file)  # fixed predictions, in the training set's class ids
    monkeypatch.setattr("maskinit.evaluation.load_trained_model", lambda cfg, weights: detector)
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"replayed")

    def run(cfg, json_file=None, dataset=None):
        if dataset:
            data = DataOptions(dataset=dataset)
        else:
            data = DataOptions(val_json=str(json_file), val_images=str(val_set.image_root))
        return evaluate_run(cfg, weights, data, device="cpu")

    return run


def same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        first[task].keys() == second[task].keys()
        and all(a == b or (a is None and b is None) for a, b in zip(first[task].values(), second[task].values()))
        for task in first
    )


# ---------------------------------------------------------------------------------------------
# The classes are stored with the run


@pytest.mark.slow
def test_training_classes_are_stored_in_config_yaml(val_set, tmp_path):
    odd = rewrite(val_set.json_file, tmp_path / "odd.json", ids={1: 1, 2: 5, 3: 90, 4: 91, 5: 200})
    cfg = trained_cfg(register_coco_dataset("maskinit_test_id_store", odd, val_set.image_root), tmp_path)
    assert list(cfg.MASKINIT.CLASS_NAMES) == list(CLASS_NAMES)
    assert list(cfg.MASKINIT.CLASS_IDS) == [1, 5, 90, 91, 200]
    assert model_classes(cfg) == dict(zip(CLASS_NAMES, [1, 5, 90, 91, 200]))
    assert model_classes(load_config(preset="tiny")) == {}  # a config that does not say


def test_stored_classes_must_agree_with_the_model():
    cfg = load_config(preset="tiny")
    cfg.MASKINIT.CLASS_NAMES, cfg.MASKINIT.CLASS_IDS = ["a", "b"], [1, 2]
    with pytest.raises(MaskinitError, match=r"CLASS_NAMES \(2\).*NUM_CLASSES \(80\)"):
        model_classes(cfg)


# ---------------------------------------------------------------------------------------------
# eval


@pytest.mark.slow
def test_val_ids_permuted_with_same_names_give_the_same_ap(val_set, replay, tmp_path):
    cfg = trained_cfg(register_coco_dataset("maskinit_test_id_train", val_set.json_file, val_set.image_root), tmp_path)
    permuted = rewrite(val_set.json_file, tmp_path / "permuted.json", ids=PERMUTED)
    original = replay(cfg, val_set.json_file)
    assert 5 < original["segm"]["AP"] < 95  # hits and misses: a mis-mapping would show
    assert {key[3:] for key in original["segm"] if key.startswith("AP-")} == set(CLASS_NAMES)
    assert same(replay(cfg, permuted), original)
    # Without the stored classes (an old config), the permuted file is read by its own ids: wrong.
    old = cfg.clone()
    old.defrost()
    old.MASKINIT.CLASS_NAMES, old.MASKINIT.CLASS_IDS = [], []
    assert replay(old, permuted)["segm"]["AP"] < original["segm"]["AP"] - 5


def test_val_registration_maps_categories_by_name(val_set, tmp_path, cache):
    classes = dict(zip(CLASS_NAMES, range(1, 6)))
    permuted = rewrite(val_set.json_file, tmp_path / "permuted.json", ids=PERMUTED)
    info = register_coco_dataset("maskinit_test_id_mapped", permuted, val_set.image_root, classes=classes)
    assert info.class_names == CLASS_NAMES and info.category_ids == (1, 2, 3, 4, 5)
    assert info.json_file.parent == cache / "classes" and permuted.read_text() != info.json_file.read_text()
    metadata = MetadataCatalog.get(info.name)
    assert metadata.thing_classes == list(CLASS_NAMES)
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    # Each annotation, as Detectron2 loads it, has the model's class of its own category's name.
    coco = json.loads(permuted.read_text())
    name_of = {c["id"]: c["name"] for c in coco["categories"]}
    in_file = Counter((a["image_id"], tuple(a["bbox"]), name_of[a["category_id"]]) for a in coco["annotations"])
    loaded = Counter(
        (record["image_id"], tuple(a["bbox"]), CLASS_NAMES[a["category_id"]])
        for record in DatasetCatalog.get(info.name)
        for a in record["annotations"]
    )
    assert loaded == in_file


def test_val_file_with_the_same_classes_is_registered_as_it_is(val_set):
    classes = dict(zip(CLASS_NAMES, range(1, 6)))
    info = register_coco_dataset("maskinit_test_id_same", val_set.json_file, val_set.image_root, classes=classes)
    assert info.json_file == val_set.json_file


def test_val_names_the_model_never_learned_are_refused(val_set, replay, tmp_path):
    cfg = trained_cfg(register_coco_dataset("maskinit_test_id_train2", val_set.json_file, val_set.image_root), tmp_path)
    renamed = rewrite(val_set.json_file, tmp_path / "renamed.json", names={2: "hexagon", 4: "oval"})
    with pytest.raises(MaskinitError) as error:
        replay(cfg, renamed)
    message = str(error.value)
    assert "not trained on: 'hexagon', 'oval'" in message and str(renamed) in message and "\n" not in message


@pytest.mark.slow
def test_val_set_without_one_class_is_evaluated_on_the_others(val_set, replay, tmp_path):
    cfg = trained_cfg(register_coco_dataset("maskinit_test_id_train3", val_set.json_file, val_set.image_root), tmp_path)
    without_star = rewrite(val_set.json_file, tmp_path / "without_star.json", drop={4})
    results = replay(cfg, without_star)
    assert MetadataCatalog.get(VAL_NAME).thing_classes == list(CLASS_NAMES)
    assert results["segm"]["AP-star"] is None  # no ground truth: left out of the mean, not scored 0
    others = [results["segm"][f"AP-{name}"] for name in CLASS_NAMES if name != "star"]
    assert math.isclose(results["segm"]["AP"], float(np.mean([v for v in others if v is not None])), abs_tol=1e-6)


@pytest.mark.slow
def test_registered_dataset_names_are_matched_by_name_too(val_set, replay, tmp_path):
    cfg = trained_cfg(register_coco_dataset("maskinit_test_id_train4", val_set.json_file, val_set.image_root), tmp_path)
    permuted = rewrite(val_set.json_file, tmp_path / "permuted.json", ids=PERMUTED)
    register_coco_instances("maskinit_test_d2_permuted", {}, str(permuted), str(val_set.image_root))
    assert same(replay(cfg, dataset="maskinit_test_d2_permuted"), replay(cfg, val_set.json_file))
    # A dataset that is not a COCO file cannot be rewritten: another order of the names is refused.
    DatasetCatalog.register("maskinit_test_d2_dicts", lambda: [])
    MetadataCatalog.get("maskinit_test_d2_dicts").thing_classes = list(reversed(CLASS_NAMES))
    with pytest.raises(MaskinitError, match="model's categories in another order"):
        replay(cfg, dataset="maskinit_test_d2_dicts")


# ---------------------------------------------------------------------------------------------
# train


def test_train_maps_a_val_set_with_other_ids_by_name(val_set, tmp_path):
    permuted = rewrite(val_set.json_file, tmp_path / "permuted.json", ids=PERMUTED)
    data = DataOptions(str(val_set.json_file), str(val_set.image_root), str(permuted), str(val_set.image_root))
    cfg, _ = resolve_data(load_config(preset="tiny"), data)
    assert cfg.DATASETS.TEST == (VAL_NAME,)
    assert list(cfg.MASKINIT.CLASS_NAMES) == list(CLASS_NAMES) and list(cfg.MASKINIT.CLASS_IDS) == [1, 2, 3, 4, 5]
    metadata = MetadataCatalog.get(VAL_NAME)
    assert metadata.thing_classes == list(CLASS_NAMES)
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}


def test_train_maps_a_registered_val_dataset_by_name(val_set, tmp_path):
    permuted = rewrite(val_set.json_file, tmp_path / "permuted.json", ids=PERMUTED)
    register_coco_instances("maskinit_test_d2_train", {}, str(val_set.json_file), str(val_set.image_root))
    register_coco_instances("maskinit_test_d2_val", {}, str(permuted), str(val_set.image_root))
    data = DataOptions(dataset="maskinit_test_d2_train", val_dataset="maskinit_test_d2_val")
    cfg, _ = resolve_data(load_config(preset="tiny"), data)
    assert cfg.DATASETS.TEST == ("maskinit_test_d2_val_as_trained",)
    assert list(cfg.MASKINIT.CLASS_NAMES) == list(CLASS_NAMES)
    assert MetadataCatalog.get("maskinit_test_d2_val_as_trained").thing_classes == list(CLASS_NAMES)


def test_train_refuses_val_names_missing_from_the_training_set(val_set, tmp_path):
    renamed = rewrite(val_set.json_file, tmp_path / "renamed.json", names={3: "hexagon"})
    data = DataOptions(str(val_set.json_file), str(val_set.image_root), str(renamed), str(val_set.image_root))
    with pytest.raises(MaskinitError, match="not trained on: 'hexagon'"):
        resolve_data(load_config(preset="tiny"), data)


# ---------------------------------------------------------------------------------------------
# Two categories, one name


def test_two_categories_with_one_name_are_refused(val_set, tmp_path):
    twice = rewrite(val_set.json_file, tmp_path / "twice.json", names={4: "circle"})
    with pytest.raises(MaskinitError) as error:
        register_coco_dataset("maskinit_test_id_twice", twice, val_set.image_root)
    message = str(error.value)
    assert "several categories with one name: 'circle' (ids 1, 4)" in message and str(twice) in message
    assert "\n" not in message
    info = DatasetInfo("maskinit_test_id_named", None, None, 2, ("a", "a"), "polygon", (1, 2))
    with pytest.raises(MaskinitError, match=r"'a' \(ids 1, 2\)"):
        apply_dataset_to_cfg(load_config(preset="tiny"), info)
    cfg = load_config(preset="tiny", overrides=["MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    cfg.MASKINIT.CLASS_NAMES, cfg.MASKINIT.CLASS_IDS = ["a", "a"], [1, 2]
    with pytest.raises(MaskinitError, match="several categories with one name"):
        model_classes(cfg)


# ---------------------------------------------------------------------------------------------
# predict


@pytest.mark.slow
def test_predict_writes_the_training_ids_and_names(val_set, tmp_path):
    three = rewrite(val_set.json_file, tmp_path / "three.json", ids={1: 1, 2: 5, 3: 90}, drop={4, 5})
    name = "maskinit_test_id_predict"
    cfg = trained_cfg(register_coco_dataset(name, three, val_set.image_root), tmp_path)
    for catalog in (DatasetCatalog, MetadataCatalog):  # `maskinit predict` runs in a new process
        catalog.remove(name)
    checkpoint = save_untrained_checkpoint(cfg, tmp_path)
    json_path = predict(cfg, checkpoint, val_set.image_root, tmp_path / "pred", score_threshold=0.0)
    result = json.loads(json_path.read_text())
    assert result["categories"] == [
        {"id": 1, "name": "circle"}, {"id": 5, "name": "square"}, {"id": 90, "name": "triangle"}
    ]
    assert result["annotations"], "score threshold 0 keeps the untrained model's detections"
    assert {a["category_id"] for a in result["annotations"]} <= {1, 5, 90}


def test_predict_falls_back_to_registered_metadata_then_class_n(val_set, tmp_path):
    odd = rewrite(val_set.json_file, tmp_path / "odd.json", ids={1: 2, 2: 4, 3: 6, 4: 8, 5: 10})
    cfg = trained_cfg(register_coco_dataset("maskinit_test_id_fallback", odd, val_set.image_root), tmp_path)
    cfg.defrost()
    cfg.MASKINIT.CLASS_NAMES, cfg.MASKINIT.CLASS_IDS = [], []  # a config written before they were stored
    assert _categories(cfg) == (list(CLASS_NAMES), [2, 4, 6, 8, 10])
    cfg.DATASETS.TRAIN = ()
    assert _categories(cfg) == ([f"class_{i}" for i in range(1, 6)], [1, 2, 3, 4, 5])
