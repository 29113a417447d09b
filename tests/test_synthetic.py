"""The embedded synthetic dataset: determinism, content, valid COCO polygons, atomic cached generation."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from maskinit import MaskinitError
from maskinit.data import synthetic
from maskinit.data.synthetic import (
    CLASS_NAMES,
    MIN_VISIBLE_AREA,
    ensure_synthetic_dataset,
    generate_coco_dataset,
    synthetic_predictions,
)

SIZE = 128


@pytest.fixture(scope="module")
def polygon_set(tmp_path_factory):
    files = generate_coco_dataset(tmp_path_factory.mktemp("polygon"), 24, seed=3)
    return json.loads(files.json_file.read_text()), files


@pytest.fixture(scope="module")
def rle_set(tmp_path_factory):
    files = generate_coco_dataset(tmp_path_factory.mktemp("rle"), 24, seed=3, mask_format="rle")
    return json.loads(files.json_file.read_text()), files


def decode(segmentation, height=SIZE, width=SIZE) -> np.ndarray:
    if isinstance(segmentation, list):
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(segmentation, height, width))).astype(bool)
    return mask_util.decode(segmentation).astype(bool)


def by_image(coco) -> dict[int, list[dict]]:
    groups = defaultdict(list)
    for annotation in coco["annotations"]:
        groups[annotation["image_id"]].append(annotation)
    return groups


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = generate_coco_dataset(tmp_path / "a", 4, seed=7)
    second = generate_coco_dataset(tmp_path / "b", 4, seed=7)
    other = generate_coco_dataset(tmp_path / "c", 4, seed=8)
    assert first.json_file.read_bytes() == second.json_file.read_bytes()
    for image in sorted(first.image_root.glob("*.png")):
        assert image.read_bytes() == (second.image_root / image.name).read_bytes()
    assert first.json_file.read_bytes() != other.json_file.read_bytes()


def test_an_image_does_not_depend_on_the_set_size(tmp_path):
    small = generate_coco_dataset(tmp_path / "small", 2, seed=1)
    large = generate_coco_dataset(tmp_path / "large", 5, seed=1)
    assert (small.image_root / "000002.png").read_bytes() == (large.image_root / "000002.png").read_bytes()


@pytest.mark.slow
def test_images_and_categories(polygon_set):
    coco, files = polygon_set
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert len(CLASS_NAMES) >= 4
    assert len(coco["images"]) == 24
    for image in coco["images"]:
        pixels = cv2.imread(str(files.image_root / image["file_name"]))
        assert pixels.shape == (image["height"], image["width"], 3) == (SIZE, SIZE, 3)
    used = {a["category_id"] for a in coco["annotations"]}
    assert used == {c["id"] for c in coco["categories"]}


def test_backgrounds_are_textured_not_flat(polygon_set):
    _, files = polygon_set
    for path in sorted(files.image_root.glob("*.png")):
        pixels = cv2.imread(str(path)).astype(np.float32)
        assert pixels.std(axis=(0, 1)).max() > 5, path


def test_several_instances_per_image_with_varied_sizes(polygon_set):
    coco, _ = polygon_set
    counts = [len(group) for group in by_image(coco).values()]
    assert max(counts) >= 3
    areas = [a["area"] for a in coco["annotations"]]
    assert min(areas) >= MIN_VISIBLE_AREA
    assert max(areas) > 4 * min(areas)


@pytest.mark.slow
def test_masks_are_visible_parts_disjoint_and_occluding(rle_set):
    coco, _ = rle_set
    touching_pairs = 0
    for image_annotations in by_image(coco).values():
        masks = [decode(a["segmentation"]) for a in image_annotations]
        for i, first in enumerate(masks):
            for second in masks[i + 1:]:
                assert not (first & second).any(), "visible masks must not overlap"
                grown = cv2.dilate(first.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                touching_pairs += bool((grown & second).any())
    assert touching_pairs >= 5, "shapes should often overlap (occlusion), not only sit apart"


def test_rle_annotations_match_area_and_bbox(rle_set):
    coco, _ = rle_set
    for annotation in coco["annotations"]:
        segmentation = annotation["segmentation"]
        assert isinstance(segmentation["counts"], str) and segmentation["size"] == [SIZE, SIZE]
        mask = decode(segmentation)
        assert mask.sum() == annotation["area"]
        ys, xs = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_polygons_are_valid_and_inside_the_image(polygon_set):
    coco, _ = polygon_set
    for annotation in coco["annotations"]:
        assert annotation["segmentation"], annotation["id"]
        for polygon in annotation["segmentation"]:
            assert len(polygon) % 2 == 0 and len(polygon) >= 6
            points = np.asarray(polygon).reshape(-1, 2)
            assert points.min() >= 0 and points[:, 0].max() <= SIZE and points[:, 1].max() <= SIZE
        x, y, w, h = annotation["bbox"]
        assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE and w > 0 and h > 0


def test_polygons_rasterize_close_to_the_visible_masks(polygon_set, rle_set):
    polygons, _ = polygon_set
    rles, _ = rle_set
    exact = {(a["image_id"], a["bbox"][0], a["bbox"][1]): decode(a["segmentation"]) for a in rles["annotations"]}
    ious = []
    for annotation in polygons["annotations"]:
        mask = exact[(annotation["image_id"], annotation["bbox"][0], annotation["bbox"][1])]
        drawn = decode(annotation["segmentation"])
        ious.append((mask & drawn).sum() / (mask | drawn).sum())
    assert min(ious) > 0.6 and np.mean(ious) > 0.85


def test_unknown_mask_format_is_refused(tmp_path):
    with pytest.raises(MaskinitError, match="mask format"):
        generate_coco_dataset(tmp_path, 1, mask_format="png")


def test_ensure_generates_once_and_reuses_the_cache(tmp_path, monkeypatch):
    dataset = ensure_synthetic_dataset(root=tmp_path, num_train=3, num_val=2, seed=5)
    assert dataset.root.parent == tmp_path and dataset.root.name.startswith("synthetic-")
    train = json.loads(dataset.train.json_file.read_text())
    val = json.loads(dataset.val.json_file.read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 2
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}
    assert len(list(dataset.train.image_root.glob("*.png"))) == 3

    def must_not_generate(*args, **kwargs):
        raise AssertionError("the cached dataset should have been reused")

    monkeypatch.setattr(synthetic, "generate_coco_dataset", must_not_generate)
    again = ensure_synthetic_dataset(root=tmp_path, num_train=3, num_val=2, seed=5)
    assert again == dataset
    with pytest.raises(AssertionError):  # other parameters are another cache entry
        ensure_synthetic_dataset(root=tmp_path, num_train=3, num_val=2, seed=6)


def test_ensure_defaults_to_the_maskinit_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKINIT_CACHE", str(tmp_path))
    dataset = ensure_synthetic_dataset(num_train=1, num_val=1)
    assert dataset.root.parent == tmp_path
    assert dataset.train.json_file.is_file() and dataset.val.json_file.is_file()


def test_interrupted_generation_leaves_nothing_half_written(tmp_path, monkeypatch):
    real = synthetic.generate_coco_dataset

    def dies_after_train(out_dir, *args, **kwargs):
        if Path(out_dir).name == "val":
            raise KeyboardInterrupt
        return real(out_dir, *args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_coco_dataset", dies_after_train)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(root=tmp_path, num_train=2, num_val=1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "generate_coco_dataset", real)
    dataset = ensure_synthetic_dataset(root=tmp_path, num_train=2, num_val=1)
    assert dataset.val.json_file.is_file()


def test_synthetic_predictions_are_coco_results(polygon_set):
    coco, files = polygon_set
    results = synthetic_predictions(files.json_file, seed=0)
    image_ids = {image["id"] for image in coco["images"]}
    category_ids = {c["id"] for c in coco["categories"]}
    assert len(results) > len(coco["annotations"]) // 2
    for result in results:
        assert result["image_id"] in image_ids and result["category_id"] in category_ids
        assert 0 <= result["score"] <= 1 and len(result["bbox"]) == 4
        assert decode(result["segmentation"]).shape == (SIZE, SIZE)


@pytest.mark.parametrize("damage", ["truncate_image", "delete_image", "corrupt_json", "no_manifest"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    dataset = ensure_synthetic_dataset(root=tmp_path, num_train=3, num_val=2, seed=5)
    pristine = {p.relative_to(dataset.root): p.read_bytes() for p in dataset.root.rglob("*") if p.is_file()}
    image = sorted(dataset.train.image_root.glob("*.png"))[1]
    if damage == "truncate_image":
        image.write_bytes(image.read_bytes()[:100])
    elif damage == "delete_image":
        image.unlink()
    elif damage == "corrupt_json":
        dataset.val.json_file.write_text("{\"images\": [")
    else:
        (dataset.root / synthetic.MANIFEST_FILE).unlink()
    assert synthetic.cache_damage(dataset.root)
    with caplog.at_level("WARNING", logger="maskinit"):
        again = ensure_synthetic_dataset(root=tmp_path, num_train=3, num_val=2, seed=5)
    assert "damaged" in caplog.text and "rebuilding" in caplog.text
    assert again == dataset
    assert {p.relative_to(again.root): p.read_bytes() for p in again.root.rglob("*") if p.is_file()} == pristine
    assert synthetic.cache_damage(again.root) is None
    assert [p.name for p in tmp_path.iterdir()] == [again.root.name]  # nothing left aside
