"""Layouts as the tools and public sets lay them out (Roboflow, cellpose, VIA project files, LabelMe
rectangles and circles, CVAT rotated boxes and ellipses, VOC's own classes): detected, read, and their
shapes turned into the masks they stand for."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import format_writers as w
import numpy as np
import pytest
import yaml

from maskinit.data.formats import detect_format, read_dataset
from maskinit.data.formats.common import TRAIN, VAL, circle_points


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return w.source_set(tmp_path_factory.mktemp("src"), num_train=3, num_val=2, mask_format="polygon")


@pytest.fixture(scope="module")
def rle_parts(tmp_path_factory):
    return w.source_set(tmp_path_factory.mktemp("rle"), num_train=3, num_val=2, mask_format="rle")


def pictures(tmp_path, count=2, size=(48, 64)):
    """Plain pictures a.png, b.png, ... of height x width `size` in `tmp_path`."""
    names = []
    for index in range(count):
        name = f"{chr(ord('a') + index)}.png"
        cv2.imwrite(str(tmp_path / name), np.full((*size, 3), 40 * index, np.uint8))
        names.append(name)
    return names


def rasterized(annotation, height, width):
    return w.decode(annotation["segmentation"], height, width)


def test_roboflow_coco_export(parts, tmp_path):
    for split, folder in (("train", "train"), ("val", "valid")):
        coco, root = parts[split]
        shutil.copytree(root, tmp_path / folder)
        (tmp_path / folder / "_annotations.coco.json").write_text(json.dumps(coco))
    (tmp_path / "test").mkdir()
    assert detect_format(tmp_path).name == "coco"
    dataset = read_dataset(tmp_path)
    assert dataset.splits[VAL].image_root == tmp_path / "valid"
    assert w.masks_by_picture(dataset.coco(TRAIN)) == w.masks_by_picture(parts["train"][0])
    assert any("test" in note for note in dataset.notes)


def test_roboflow_yolo_export(parts, tmp_path):
    w.write_yolo(parts, tmp_path / "flat")
    for split, folder in (("train", "train"), ("val", "valid")):
        shutil.copytree(tmp_path / "flat" / "images" / split, tmp_path / "export" / folder / "images")
        shutil.copytree(tmp_path / "flat" / "labels" / split, tmp_path / "export" / folder / "labels")
    names = [c["name"] for c in parts["train"][0]["categories"]]
    (tmp_path / "export" / "data.yaml").write_text(
        yaml.safe_dump(
            {
                "train": "../train/images",
                "val": "../valid/images",
                "test": "../test/images",
                "nc": len(names),
                "names": names,
            }
        )
    )
    assert detect_format(tmp_path / "export").evidence == "YOLO data.yaml"
    dataset = read_dataset(tmp_path / "export")
    for split in (TRAIN, VAL):
        assert w.masks_by_picture(dataset.coco(split)) == w.masks_by_picture(parts[split][0])
    assert any("test split is left out" in note for note in dataset.notes)


def test_yolo_without_data_yaml_uses_classes_txt(parts, tmp_path):
    w.write_yolo({"train": parts["train"]}, tmp_path)
    (tmp_path / "data.yaml").unlink()
    for split_dir in ("images", "labels"):
        for file in (tmp_path / split_dir / "train").iterdir():
            file.rename(tmp_path / split_dir / file.name)
        (tmp_path / split_dir / "train").rmdir()
    (tmp_path / "classes.txt").write_text("\n".join(c["name"] for c in parts["train"][0]["categories"]))
    assert detect_format(tmp_path).evidence == "images/ + labels/*.txt"
    dataset = read_dataset(tmp_path)
    assert w.masks_by_picture(dataset.coco(TRAIN)) == w.masks_by_picture(parts["train"][0])


def test_cellpose_masks_beside_pictures(rle_parts, tmp_path):
    import tifffile

    coco, root = rle_parts["train"]
    for image, own in w.instances(coco):
        picture = w.copy_picture(image, root, tmp_path, ".tif")
        label = np.zeros((image["height"], image["width"]), np.uint16)
        for value, (_, mask) in enumerate(own, 1):
            label[mask] = value
        tifffile.imwrite(tmp_path / f"{picture.stem}_masks.tif", label)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": {"1": "nucleus"}}))
    assert "NAME_masks beside NAME" in detect_format(tmp_path).evidence
    dataset = read_dataset(tmp_path)
    assert [c["name"] for c in dataset.categories] == ["nucleus"]
    expected = {name: sorted(("nucleus", m) for _, m in masks) for name, masks in w.masks_by_picture(coco).items()}
    assert w.masks_by_picture(dataset.coco(TRAIN)) == expected


def test_labelme_rectangles_circles_groups_and_lines(tmp_path):
    pictures(tmp_path, 1, (48, 64))
    shapes = [
        {"label": "box", "points": [[50, 40], [10, 5]], "shape_type": "rectangle", "group_id": None},
        {"label": "disc", "points": [[30, 24], [30, 34]], "shape_type": "circle", "group_id": None},
        {"label": "pair", "points": [[1, 1], [6, 1], [6, 6]], "shape_type": "polygon", "group_id": 3},
        {"label": "pair", "points": [[40, 40], [46, 40], [46, 46]], "shape_type": "polygon", "group_id": 3},
        {"label": "edge", "points": [[0, 0], [10, 10]], "shape_type": "line", "group_id": None},
    ]
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "version": "5.4.1",
                "shapes": shapes,
                "imagePath": "..\\\\elsewhere\\\\a.png",
                "imageData": None,
                "imageHeight": 48,
                "imageWidth": 64,
            }
        )
    )
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\npair\nbox\ndisc\n")
    dataset = read_dataset(tmp_path)
    assert [c["name"] for c in dataset.categories] == ["pair", "box", "disc"]  # labels.txt's order
    annotations = {a["category_id"]: a for a in dataset.coco()["annotations"]}
    assert len(dataset.coco()["annotations"]) == 3 and any("left out" in n for n in dataset.notes)
    assert annotations[2]["segmentation"] == [[10, 5, 50, 5, 50, 40, 10, 40]]
    assert annotations[2]["bbox"] == [10, 5, 40, 35]
    circle = np.asarray(annotations[3]["segmentation"][0]).reshape(-1, 2)
    assert len(circle) == circle_points(10)
    assert np.allclose(np.hypot(circle[:, 0] - 30, circle[:, 1] - 24), 10)
    yy, xx = np.mgrid[:48, :64] + 0.5  # pixel centres, COCO's continuous coordinates
    disc = (xx - 30) ** 2 + (yy - 24) ** 2 <= 100
    got = rasterized(annotations[3], 48, 64)
    assert (got & disc).sum() / (got | disc).sum() > 0.9
    assert len(annotations[1]["segmentation"]) == 2  # one instance of two polygons (group_id 3)


def test_via_project_file_with_rect_circle_ellipse(tmp_path):
    pictures(tmp_path, 2, (48, 64))
    regions = [
        {
            "shape_attributes": {"name": "rect", "x": 5, "y": 6, "width": 20, "height": 10},
            "region_attributes": {"kind": "car"},
        },
        {"shape_attributes": {"name": "circle", "cx": 40, "cy": 20, "r": 6}, "region_attributes": {"kind": "wheel"}},
        {
            "shape_attributes": {"name": "ellipse", "cx": 30, "cy": 35, "rx": 12, "ry": 5, "theta": math.pi / 2},
            "region_attributes": {"kind": "wheel"},
        },
        {"shape_attributes": {"name": "point", "cx": 3, "cy": 3}, "region_attributes": {"kind": "car"}},
    ]
    project = {
        "_via_settings": {"core": {"default_filepath": ""}},
        "_via_img_metadata": {
            "a.png1": {"filename": "a.png", "size": 1, "regions": regions, "file_attributes": {}},
            "b.png1": {"filename": "b.png", "size": 1, "regions": regions[:1], "file_attributes": {}},
        },
        "_via_attributes": {
            "region": {"note": {"type": "text"}, "kind": {"type": "dropdown", "options": {"car": "", "wheel": ""}}}
        },
    }
    (tmp_path / "via_project.json").write_text(json.dumps(project))
    assert detect_format(tmp_path).name == "via"
    dataset = read_dataset(tmp_path / "via_project.json")
    coco = dataset.coco()
    assert [c["name"] for c in coco["categories"]] == ["car", "wheel"]
    assert len(coco["annotations"]) == 4
    rect, circle, ellipse = coco["annotations"][:3]
    assert rect["segmentation"] == [[5, 6, 25, 6, 25, 16, 5, 16]]
    assert rasterized(rect, 48, 64).sum() == 200
    x, y, width, height = ellipse["bbox"]  # turned by 90 degrees: 10 wide, 24 high
    assert (round(width), round(height)) == (10, 24) and (round(x + width / 2), round(y + height / 2)) == (30, 35)
    assert abs(rasterized(circle, 48, 64).sum() - math.pi * 36) < 12


def test_cvat_rotated_box_ellipse_default_subset_and_polyline(tmp_path):
    (tmp_path / "images").mkdir()
    pictures(tmp_path / "images", 1, (48, 64))
    (tmp_path / "annotations.xml").write_text("""<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<meta><project><labels><label><name>plate</name></label><label><name>hole</name></label></labels></project></meta>
<image id="0" name="a.png" subset="default" width="64" height="48">
  <box label="plate" occluded="0" xtl="10" ytl="10" xbr="30" ybr="20" rotation="90" z_order="0"></box>
  <ellipse label="hole" occluded="0" cx="45" cy="30" rx="8" ry="4" z_order="0"></ellipse>
  <polyline label="hole" occluded="0" points="1,1;5,5;9,1" z_order="0"></polyline>
</image></annotations>""")
    dataset = read_dataset(tmp_path)
    assert dataset.format == "cvat" and list(dataset.splits) == [TRAIN]
    box, ellipse = dataset.coco()["annotations"]
    assert box["bbox"] == pytest.approx([15, 5, 10, 20])  # 20x10 turned upright around its centre (20, 15)
    assert ellipse["bbox"] == pytest.approx([37, 26, 16, 8], abs=0.01)
    assert any("left out" in note for note in dataset.notes)


def test_voc_with_its_own_twenty_classes(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for name in ("JPEGImages", "SegmentationObject", "SegmentationClass"):
        (root / name).mkdir(parents=True)
    cv2.imwrite(str(root / "JPEGImages" / "000032.jpg"), np.zeros((40, 50, 3), np.uint8))
    objects, classes = np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8)
    objects[5:15, 5:20], classes[5:15, 5:20] = 1, 15  # person
    objects[20:30, 25:45], classes[20:30, 25:45] = 2, 1  # aeroplane
    objects[4, 4:21] = classes[4, 4:21] = 255  # the void border
    w._palette_png(objects, root / "SegmentationObject" / "000032.png")
    w._palette_png(classes, root / "SegmentationClass" / "000032.png")
    dataset = read_dataset(tmp_path / "VOCdevkit")
    coco = dataset.coco()
    assert len(coco["categories"]) == 20
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert sorted(names[a["category_id"]] for a in coco["annotations"]) == ["aeroplane", "person"]
    assert sorted(a["area"] for a in coco["annotations"]) == [150, 200]
