"""COCO files for Detectron2: inspection, errors, registration, id mapping, config wiring."""

from __future__ import annotations

import json

import pytest
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.structures import BitMasks, PolygonMasks

from maskinit import MaskinitError, load_config
from maskinit.data import (
    apply_dataset_to_cfg,
    generate_coco_dataset,
    inspect_coco,
    register_coco_dataset,
    registered_dataset,
)

SQUARE = [[10.0, 10.0, 40.0, 10.0, 40.0, 40.0, 10.0, 40.0]]
RLE = {"size": [64, 64], "counts": "Zd0n0R1000000000000000000000000000000000000000000000000000000000f_1"}  # the square


def coco_file(path, category_ids=(3, 7, 11), segmentations=None, crowd=()):
    """A small COCO file: one 64x64 image, one annotation per segmentation, categories in reverse id order."""
    segmentations = segmentations or [SQUARE] * len(category_ids)
    names = {3: "cat", 7: "dog", 11: "bird"}
    data = {
        "images": [{"id": 5, "file_name": "a.png", "height": 64, "width": 64}],
        "categories": [{"id": i, "name": names.get(i, f"c{i}")} for i in sorted(category_ids, reverse=True)],
        "annotations": [
            {"id": n + 1, "image_id": 5, "category_id": category_ids[n % len(category_ids)], "bbox": [10, 10, 30, 30],
             "area": 900, "iscrowd": int(n in crowd), "segmentation": segmentation}
            for n, segmentation in enumerate(segmentations)
        ],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    return root


def test_inspect_maps_non_contiguous_ids_like_detectron2(tmp_path):
    summary = inspect_coco(coco_file(tmp_path / "a.json"))
    assert summary.num_classes == 3
    assert summary.class_names == ("cat", "dog", "bird")  # ordered by category id
    assert summary.dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    assert summary.mask_format == "polygon"
    assert (summary.num_images, summary.num_annotations) == (1, 3)


def test_any_rle_mask_means_bitmask(tmp_path):
    summary = inspect_coco(coco_file(tmp_path / "a.json", segmentations=[SQUARE, RLE]))
    assert summary.mask_format == "bitmask"


def test_crowd_rle_alone_keeps_polygons(tmp_path):
    # Detectron2's mapper drops crowd regions before reading masks (COCO stores them as RLE).
    summary = inspect_coco(coco_file(tmp_path / "a.json", segmentations=[SQUARE, RLE], crowd=(1,)))
    assert summary.mask_format == "polygon"


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"images": [], "categories": []}), "no annotations"),
        (json.dumps({"annotations": []}), "no images, categories"),
        (json.dumps({"images": [], "annotations": [], "categories": []}), "empty categories"),
        (json.dumps({"images": [], "annotations": [], "categories": [{"name": "x"}]}), "integer id"),
        (
            json.dumps({"images": [{"id": 1}], "categories": [{"id": 1, "name": "x"}],
                        "annotations": [{"image_id": 1, "category_id": 2, "segmentation": SQUARE}]}),
            "unknown category_id 2",
        ),
        (
            json.dumps({"images": [{"id": 1}], "categories": [{"id": 1, "name": "x"}],
                        "annotations": [{"image_id": 1, "category_id": 1}]}),
            "no segmentation",
        ),
    ],
)
def test_bad_files_name_the_file_and_problem_in_one_line(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MaskinitError) as error:
        inspect_coco(path)
    message = str(error.value)
    assert problem in message and str(path) in message and "\n" not in message


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(MaskinitError, match="not found"):
        inspect_coco(tmp_path / "absent.json")
    with pytest.raises(MaskinitError, match="directory"):
        inspect_coco(tmp_path)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MaskinitError, match="not valid JSON"):
        inspect_coco(binary)


def test_register_sets_metadata_that_detectron2_loading_agrees_with(tmp_path, image_root):
    info = register_coco_dataset("maskinit_test_noncontiguous", coco_file(tmp_path / "a.json"), image_root)
    assert (info.num_classes, info.class_names, info.mask_format) == (3, ("cat", "dog", "bird"), "polygon")
    metadata = MetadataCatalog.get(info.name)
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    records = DatasetCatalog.get(info.name)  # load_coco_json re-sets the metadata: it must agree
    assert sorted(a["category_id"] for a in records[0]["annotations"]) == [0, 1, 2]
    assert metadata.thing_classes == ["cat", "dog", "bird"]


def test_reregistering_a_name_replaces_it(tmp_path, image_root):
    register_coco_dataset("maskinit_test_again", coco_file(tmp_path / "a.json"), image_root)
    DatasetCatalog.get("maskinit_test_again")
    info = register_coco_dataset("maskinit_test_again", coco_file(tmp_path / "b.json", category_ids=(1, 2)), image_root)
    assert info.num_classes == 2
    assert MetadataCatalog.get("maskinit_test_again").thing_classes == ["c1", "c2"]
    assert len(DatasetCatalog.get("maskinit_test_again")[0]["annotations"]) == 2


def test_register_needs_the_image_folder(tmp_path):
    with pytest.raises(MaskinitError, match="image folder"):
        register_coco_dataset("maskinit_test_noimages", coco_file(tmp_path / "a.json"), tmp_path / "nowhere")


def test_apply_dataset_to_cfg(tmp_path, image_root):
    train = register_coco_dataset("maskinit_test_train", coco_file(tmp_path / "t.json"), image_root)
    with_rle = coco_file(tmp_path / "v.json", segmentations=[SQUARE, RLE, SQUARE])
    val = register_coco_dataset("maskinit_test_val", with_rle, image_root)
    cfg = apply_dataset_to_cfg(load_config(preset="tiny"), train, val)
    assert cfg.DATASETS.TRAIN == ("maskinit_test_train",) and cfg.DATASETS.TEST == ("maskinit_test_val",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert apply_dataset_to_cfg(load_config(preset="tiny"), train).INPUT.MASK_FORMAT == "polygon"


def test_apply_refuses_train_and_val_with_different_classes(tmp_path, image_root):
    train = register_coco_dataset("maskinit_test_train3", coco_file(tmp_path / "t.json"), image_root)
    val = register_coco_dataset("maskinit_test_val2", coco_file(tmp_path / "v.json", category_ids=(1, 2)), image_root)
    with pytest.raises(MaskinitError, match="different categories"):
        apply_dataset_to_cfg(load_config(preset="tiny"), train, val)


@pytest.mark.parametrize("mask_format, mask_type", [("polygon", PolygonMasks), ("rle", BitMasks)])
def test_detectron2_mapper_reads_the_masks_with_the_detected_format(tmp_path, mask_format, mask_type):
    files = generate_coco_dataset(tmp_path, 2, seed=0, mask_format=mask_format)
    info = register_coco_dataset(f"maskinit_test_mapper_{mask_format}", files.json_file, files.image_root)
    cfg = apply_dataset_to_cfg(load_config(preset="tiny"), info)
    record = DatasetCatalog.get(info.name)[0]
    instances = DatasetMapper(cfg, is_train=True)(record)["instances"]
    assert isinstance(instances.gt_masks, mask_type)
    assert len(instances) == len(record["annotations"])


def test_registered_dataset_suggests_close_names():
    with pytest.raises(MaskinitError) as error:
        registered_dataset("coco_2017_vall")
    assert "coco_2017_val" in str(error.value)


def test_registered_builtin_without_files_names_detectron2_datasets():
    with pytest.raises(MaskinitError, match="DETECTRON2_DATASETS"):
        registered_dataset("coco_2017_val")


def test_registered_dataset_returns_what_was_registered(tmp_path, image_root):
    register_coco_dataset("maskinit_test_lookup", coco_file(tmp_path / "a.json"), image_root)
    info = registered_dataset("maskinit_test_lookup")
    assert (info.num_classes, info.json_file, info.image_root) == (3, tmp_path / "a.json", image_root)
