"""Every format maskinit reads: a generated COCO set written in the format (by the tests' own writers,
as each tool writes it), read back by maskinit's reader, and compared with the original pixel by pixel;
the format is detected on its own; the splits each layout carries are kept."""

from __future__ import annotations

import format_writers as w
import pytest

from maskinit.data.formats import FORMAT_NAMES, detect_format, read_dataset
from maskinit.data.formats.common import TRAIN, VAL


@pytest.fixture(scope="module")
def rle_parts(tmp_path_factory):
    return w.source_set(tmp_path_factory.mktemp("rle"), mask_format="rle")


@pytest.fixture(scope="module")
def polygon_parts(tmp_path_factory):
    return w.source_set(tmp_path_factory.mktemp("polygon"), mask_format="polygon")


def assert_same(dataset, parts):
    """Each split of the dataset holds exactly the masks (and classes) of the source's split."""
    assert set(dataset.splits) == set(parts)
    for split, (coco, _) in parts.items():
        got = w.masks_by_picture(dataset.coco(split))
        expected = w.masks_by_picture(coco)
        assert got.keys() == expected.keys()
        for name in expected:
            assert got[name] == expected[name], f"{split} {name}"
        assert sum(len(m) for m in expected.values()) > 0
    ids = [c["id"] for c in dataset.categories]
    assert ids == list(range(1, len(ids) + 1))
    assert len({c["name"] for c in dataset.categories}) == len(ids)


def read_back(path, expected_format):
    detected = detect_format(path)
    assert detected.name == expected_format, detected
    dataset = read_dataset(path)
    assert dataset.format == expected_format
    return dataset


@pytest.mark.parametrize(
    "dtype, suffix", [("uint8", ".png"), ("uint16", ".png"), ("uint32", ".tif"), ("uint16", ".tiff")]
)
def test_label_images_with_a_class_map(rle_parts, tmp_path, dtype, suffix):
    import numpy as np

    w.write_label_images(rle_parts, tmp_path, dtype=np.dtype(dtype).type, suffix=suffix, classes="instances")
    assert_same(read_back(tmp_path, "label-image"), rle_parts)


def test_label_images_with_semantic_masks(rle_parts, tmp_path):
    w.write_label_images(rle_parts, tmp_path, classes="semantic")
    assert_same(read_back(tmp_path, "label-image"), rle_parts)


def test_label_images_of_one_class(rle_parts, tmp_path):
    w.write_label_images(rle_parts, tmp_path, classes="single")
    dataset = read_back(tmp_path, "label-image")
    assert [c["name"] for c in dataset.categories] == ["object"]
    one_class = {split: ({**coco, "categories": [{"id": 1, "name": "object"}],
                          "annotations": [{**a, "category_id": 1} for a in coco["annotations"]]}, root)
                 for split, (coco, root) in rle_parts.items()}
    assert_same(dataset, one_class)


@pytest.mark.parametrize("layout", ["dsb", "flat"])
def test_one_mask_file_per_instance(rle_parts, tmp_path, layout):
    w.write_instance_masks(rle_parts, tmp_path, layout=layout)
    dataset = read_back(tmp_path, "instance-masks")
    one_class = {split: ({**coco, "categories": [{"id": 1, "name": "object"}],
                          "annotations": [{**a, "category_id": 1} for a in coco["annotations"]]}, root)
                 for split, (coco, root) in rle_parts.items()}
    assert_same(dataset, one_class)


def test_yolo_segmentation(polygon_parts, tmp_path):
    yaml_file = w.write_yolo(polygon_parts, tmp_path)
    for path in (tmp_path, yaml_file):
        dataset = read_back(path, "yolo")
        assert_same(dataset, polygon_parts)
        for annotation in dataset.coco(TRAIN)["annotations"]:
            assert isinstance(annotation["segmentation"], list)  # polygons stay polygons


def test_labelme(polygon_parts, tmp_path):
    w.write_labelme(polygon_parts, tmp_path)
    assert_same(read_back(tmp_path, "labelme"), polygon_parts)


def test_via_balloon_layout(polygon_parts, tmp_path):
    w.write_via(polygon_parts, tmp_path)
    dataset = read_back(tmp_path, "via")
    assert_same(dataset, polygon_parts)
    assert dataset.splits[TRAIN].image_root == tmp_path / "train"


@pytest.mark.parametrize("masks", [False, True])
def test_cvat_polygons_and_masks(polygon_parts, rle_parts, tmp_path, masks):
    parts = rle_parts if masks else polygon_parts
    w.write_cvat(parts, tmp_path, masks=masks)
    dataset = read_back(tmp_path, "cvat")
    if masks:
        assert_same(dataset, parts)
    else:  # the XML keeps two decimals
        for split, (coco, _) in parts.items():
            got, expected = dataset.coco(split), coco
            for a, b in zip(got["annotations"], expected["annotations"]):
                assert a["segmentation"][0] == pytest.approx(b["segmentation"][0], abs=0.006)


def test_pascal_voc(rle_parts, tmp_path):
    import copy

    parts = copy.deepcopy(rle_parts)
    w.write_voc(parts, tmp_path)
    for path in (tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        assert_same(read_back(path, "voc"), parts)


def test_coco_folder(rle_parts, tmp_path):
    import json
    import shutil

    for split, (coco, root) in rle_parts.items():
        shutil.copytree(root, tmp_path / f"{split}2017")
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    dataset = read_back(tmp_path, "coco")
    assert_same(dataset, rle_parts)
    assert dataset.splits[VAL].image_root == tmp_path / "val2017"
    assert dataset.splits[TRAIN].json_file == tmp_path / "annotations" / "instances_train2017.json"


def test_every_format_has_a_round_trip_here():
    tested = {"label-image", "instance-masks", "yolo", "labelme", "via", "cvat", "voc", "coco"}
    assert tested == set(FORMAT_NAMES)


def test_rle_from_pixels_is_pycocotools_rle_of_the_mask():
    import numpy as np

    from maskinit.data.formats.common import mask_to_rle, pixels_to_rle

    rng = np.random.default_rng(0)
    for height, width in ((1, 1), (5, 7), (33, 20)):
        for _ in range(20):
            mask = rng.random((height, width)) < rng.random()
            mask.flat[rng.integers(0, mask.size)] = True
            for corner in ((0, 0), (-1, -1)):
                if rng.random() < 0.5:
                    mask[corner] = True
            assert pixels_to_rle(np.flatnonzero(mask), height, width) == mask_to_rle(mask)
