"""benchmarks/plain_shapes.py (the second synthetic generator, RLE masks) and stock Detectron2 on RLE data:
the comparator of the recipe benchmark must train on any COCO set a user brings, RLE included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import plain_shapes  # noqa: E402
from common import CocoSet, parse_data  # noqa: E402
from stock_detectron2 import mask_format  # noqa: E402


def generate(folder: Path, train: int = 6, val: int = 3, seed: int = 0) -> Path:
    plain_shapes.main([str(folder), "--train", str(train), "--val", str(val), "--seed", str(seed)])
    return folder


@pytest.mark.slow
def test_each_visible_mask_covers_one_flat_colour_and_instances_do_not_overlap(tmp_path):
    import cv2

    folder = generate(tmp_path / "set", train=12)
    data = json.loads((folder / "train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(plain_shapes.CLASS_NAMES)
    assert len(data["images"]) == 12 and data["annotations"]
    for image in data["images"]:
        pixels = cv2.imread(str(folder / "train" / image["file_name"]))
        covered = np.zeros(pixels.shape[:2], bool)
        for annotation in (a for a in data["annotations"] if a["image_id"] == image["id"]):
            assert isinstance(annotation["segmentation"], dict)  # RLE
            mask = mask_util.decode(annotation["segmentation"]).astype(bool)
            assert mask.sum() == annotation["area"] >= 16
            ys, xs = np.nonzero(mask)
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert len(np.unique(pixels[mask], axis=0)) == 1  # the visible part is one solid shape
            assert not (covered & mask).any()
            covered |= mask
        # everything not covered by an instance is the one background colour (or a hidden sliver under 16 px)
        assert len(np.unique(pixels[~covered], axis=0)) <= 2


def test_a_seed_gives_the_same_bytes_and_another_seed_other_images(tmp_path):
    first, again, other = (generate(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert (first / "train.json").read_bytes() == (again / "train.json").read_bytes()
    assert (first / "train" / "00001.png").read_bytes() == (again / "train" / "00001.png").read_bytes()
    assert (first / "train" / "00001.png").read_bytes() != (other / "train" / "00001.png").read_bytes()
    assert (first / "val.json").read_bytes() != (first / "train.json").read_bytes()


def test_the_comparator_reads_rle_masks_as_bitmasks_and_polygons_as_stock_detectron2_does(tmp_path):
    from maskinit.data.synthetic import generate_coco_dataset

    rle = parse_data(f"shapes={generate(tmp_path / 'set')}")
    assert mask_format(rle) == ["INPUT.MASK_FORMAT", "bitmask"]
    polygons = generate_coco_dataset(tmp_path / "polygons", 2, seed=1)
    as_set = CocoSet("p", polygons.json_file, polygons.image_root, polygons.json_file, polygons.image_root)
    assert mask_format(as_set) == []  # Detectron2's default, polygon: nothing added


@pytest.mark.slow
def test_stock_detectron2_trains_and_evaluates_on_an_rle_set(tmp_path):
    folder = generate(tmp_path / "set", train=4, val=2)
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "benchmarks" / "stock_detectron2.py"), "scratch-gn", str(out), "--lr", "0.02",
               "--iters", "2", "--train-json", str(folder / "train.json"), "--train-images", str(folder / "train"),
               "--val-json", str(folder / "val.json"), "--val-images", str(folder / "val"), "MODEL.DEVICE", "cpu"]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["num_classes"] == 3
    assert "MASK_FORMAT: bitmask" in (out / "config.yaml").read_text()


def test_synthetic_marks_sets_given_by_path_for_the_synthetic_goal(tmp_path):
    import argparse

    from recipes import GOAL_REAL, GOAL_SYNTHETIC, data_sets

    folder = generate(tmp_path / "set", train=2, val=1)
    for flag, goal in ((True, GOAL_SYNTHETIC), (False, GOAL_REAL)):
        args = argparse.Namespace(train_json=None, train_images=None, val_json=None, val_images=None, name=None,
                                  data=[f"shapes={folder}"], synthetic=flag, heldout=False)
        (dataset,) = data_sets(args, argparse.ArgumentParser())
        assert dataset.synthetic is flag and (GOAL_SYNTHETIC if dataset.synthetic else GOAL_REAL) == goal
