"""Dataset checks: a corpus of broken COCO sets, each found under the right kind and severity, and speed
(the policy and the cleaned copy: test_report.py; `validate_data`: test_sources.py)."""

from __future__ import annotations

import json
import shutil
import time

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from maskinit import MaskinitError
from maskinit.data import generate_coco_dataset
from maskinit.data.report import (
    FATAL,
    FIXABLE,
    INFO,
    KINDS,
    MAX_EXAMPLES,
    WARNING,
    enforce_data_policy,
)
from maskinit.data.validate import check_coco, check_coco_data, compressed_rle_runs


@pytest.fixture(scope="module")
def rle_set(tmp_path_factory):
    return generate_coco_dataset(tmp_path_factory.mktemp("rle"), 4, seed=3, mask_format="rle")


def load(files) -> dict:
    return json.loads(files.json_file.read_text())


def write(tmp_path, data, name="broken.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def own_images(tmp_path, files):
    """A private copy of the image folder, to break files in."""
    return shutil.copytree(files.image_root, tmp_path / "images")


def first_annotation_of(data, image_id):
    return next(a for a in data["annotations"] if a["image_id"] == image_id)


# ---------------------------------------------------------------------------------------------
# Clean sets


@pytest.mark.parametrize("fixture", ["polygon_set", "rle_set"])
def test_generated_sets_are_ok(fixture, request):
    files = request.getfixturevalue(fixture)
    report = check_coco(files.json_file, files.image_root)
    assert report.ok, report.to_dict()
    assert report.images_checked
    assert not report.fatal and not report.fixable
    assert not report.bad_annotation_ids and not report.bad_image_ids
    data = load(files)
    assert (report.num_images, report.num_annotations, report.num_categories) == (
        len(data["images"]), len(data["annotations"]), len(data["categories"]))
    assert enforce_data_policy(report, skip_bad=False) == []


# ---------------------------------------------------------------------------------------------
# The corpus: one thing broken in the JSON each


def break_duplicate_image_id(data):
    data["images"].append(dict(data["images"][0], file_name="other.png"))


def break_duplicate_annotation_id(data):
    data["annotations"][1]["id"] = data["annotations"][0]["id"]


def break_duplicate_category_id(data):
    data["categories"][1]["id"] = data["categories"][0]["id"]


def break_annotation_without_bbox(data):
    del data["annotations"][0]["bbox"]


def break_annotation_without_segmentation(data):
    del data["annotations"][0]["segmentation"]


def break_annotation_without_id(data):
    del data["annotations"][0]["id"]


def break_image_without_file_name(data):
    del data["images"][0]["file_name"]


def break_image_with_zero_height(data):
    data["images"][0]["height"] = 0


def break_no_images(data):
    data["images"] = []


def break_no_categories(data):
    data["categories"] = []


def break_no_annotations(data):
    data["annotations"] = []


def break_annotation_not_object(data):
    data["annotations"].append([1, 2, 3])


def break_unknown_image(data):
    data["annotations"][0]["image_id"] = 999


def break_unknown_category(data):
    data["annotations"][0]["category_id"] = 999


def break_zero_width_box(data):
    data["annotations"][0]["bbox"][2] = 0


def break_nan_box(data):
    data["annotations"][0]["bbox"][1] = float("nan")


def break_three_number_box(data):
    data["annotations"][0]["bbox"] = [1, 2, 3]


def break_box_outside(data):
    data["annotations"][0]["bbox"] = [500, 500, 10, 10]  # images are 128x128


def break_box_partly_outside(data):
    data["annotations"][0]["bbox"] = [120, 120, 30, 30]


def break_two_point_polygon(data):
    data["annotations"][0]["segmentation"] = [[1.0, 1.0, 20.0, 20.0]]


def break_odd_polygon(data):
    data["annotations"][0]["segmentation"] = [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0, 5.0]]


def break_flat_polygon(data):
    data["annotations"][0]["segmentation"] = [1.0, 1.0, 20.0, 1.0, 20.0, 20.0]


def break_segmentation_type(data):
    data["annotations"][0]["segmentation"] = "not a mask"


def break_ignore_flag(data):
    data["annotations"][0]["ignore"] = 1


def break_crowd(data):
    data["annotations"][0]["iscrowd"] = 1


def break_image_without_annotations(data):
    first = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]


def break_category_without_annotations(data):
    data["categories"].append({"id": 99, "name": "unicorn"})


# Emptying or renumbering a list orphans the annotations that pointed into it.
ENTAILED = {"no_images": {"unknown_image"}, "no_categories": {"unknown_category"},
            "duplicate_category_id": {"unknown_category"}}

CORPUS = [
    (break_duplicate_image_id, "duplicate_image_id", FATAL),
    (break_duplicate_annotation_id, "duplicate_annotation_id", FATAL),
    (break_duplicate_category_id, "duplicate_category_id", FATAL),
    (break_annotation_without_bbox, "annotation_missing_bbox", FATAL),
    (break_annotation_without_segmentation, "annotation_missing_segmentation", FATAL),
    (break_annotation_without_id, "annotation_missing_id", FATAL),
    (break_image_without_file_name, "image_missing_file_name", FATAL),
    (break_image_with_zero_height, "image_missing_height", FATAL),
    (break_no_images, "no_images", FATAL),
    (break_no_categories, "no_categories", FATAL),
    (break_no_annotations, "no_annotations", FATAL),
    (break_annotation_not_object, "annotation_not_object", FATAL),
    (break_unknown_image, "unknown_image", FIXABLE),
    (break_unknown_category, "unknown_category", FIXABLE),
    (break_zero_width_box, "invalid_box", FIXABLE),
    (break_nan_box, "invalid_box", FIXABLE),
    (break_three_number_box, "invalid_box", FIXABLE),
    (break_box_outside, "box_outside", FIXABLE),
    (break_two_point_polygon, "invalid_polygon", FIXABLE),
    (break_odd_polygon, "invalid_polygon", FIXABLE),
    (break_flat_polygon, "invalid_polygon", FIXABLE),
    (break_segmentation_type, "invalid_segmentation", FIXABLE),
    (break_ignore_flag, "ignore_flag", FIXABLE),
    (break_box_partly_outside, "box_partly_outside", WARNING),
    (break_crowd, "crowd_annotation", INFO),
    (break_image_without_annotations, "image_without_annotations", INFO),
    (break_category_without_annotations, "category_without_annotations", INFO),
]


@pytest.mark.parametrize("breaker, kind, severity", CORPUS, ids=[kind + "-" + b.__name__[6:] for b, kind, _ in CORPUS])
def test_each_broken_json_is_found_under_its_kind(tmp_path, polygon_set, breaker, kind, severity):
    data = load(polygon_set)
    breaker(data)
    report = check_coco(write(tmp_path, data), polygon_set.image_root)
    assert kind in report.problems, report.to_dict()
    problem = report.problems[kind]
    assert problem.severity == severity == KINDS[kind].severity
    assert problem.count >= 1
    if KINDS[kind].countable:
        assert problem.examples and problem.summary().startswith(f"{problem.count} {problem.label} (e.g. ")
    else:  # whole-file kinds: "no images"
        assert problem.summary() == KINDS[kind].singular
    # Nothing unrelated stops training: only the broken kind and what it entails.
    blocking = {p.kind for p in report.fatal + report.fixable}
    assert blocking <= {kind} | ENTAILED.get(kind, set()), blocking
    assert report.ok == (severity in (WARNING, INFO))
    if severity == FIXABLE:
        assert report.bad_annotation_ids == {data["annotations"][0]["id"]}
        assert not report.bad_image_ids


def test_examples_name_the_annotation_and_its_image(tmp_path, polygon_set):
    data = load(polygon_set)
    annotation = data["annotations"][-1]
    annotation["bbox"][3] = -2
    problem = check_coco_data(data, check_images=False).problems["invalid_box"]
    assert problem.count == 1
    assert problem.examples[0].startswith(f"id {annotation['id']} (image {annotation['image_id']})")


def test_counts_every_case_but_keeps_a_few_examples(polygon_set):
    data = load(polygon_set)
    for annotation in data["annotations"]:
        annotation["category_id"] = 999
    report = check_coco_data(data, check_images=False)
    problem = report.problems["unknown_category"]
    assert problem.count == len(data["annotations"])
    assert len(problem.examples) == MAX_EXAMPLES
    assert report.bad_annotation_ids == {a["id"] for a in data["annotations"]}


def test_duplicates_count_distinct_ids(polygon_set):
    data = load(polygon_set)
    extra = [dict(image, file_name="x.png") for image in data["images"][:2]]
    data["images"] += extra + [dict(extra[0])]  # image 1 three times, image 2 twice
    problem = check_coco_data(data, check_images=False).problems["duplicate_image_id"]
    assert problem.count == 2
    assert problem.examples == tuple(str(image["id"]) for image in extra)


# ---------------------------------------------------------------------------------------------
# RLE


@pytest.mark.parametrize(
    "breaker, detail",
    [
        (lambda rle: rle.update(counts=12345), "neither a list nor a string"),
        (lambda rle: rle.update(size=[64, 128]), "size 64x128"),
        (lambda rle: rle.update(size="128x128"), "not [height, width]"),
        (lambda rle: rle.update(counts=rle["counts"][: len(rle["counts"]) // 2]), "runs cover"),
        (lambda rle: rle.update(counts="\x7f\x7f"), "not COCO's compressed RLE"),
        (lambda rle: rle.update(counts=[10, 20]), "runs cover 30 pixels"),
        (lambda rle: rle.update(counts=[-1, 128 * 128 + 1]), "non-negative"),
    ],
    ids=[
        "counts-int", "size-mismatch", "size-not-pair", "short-string", "bad-characters", "short-list", "negative-run",
    ],
)
def test_malformed_rle(rle_set, breaker, detail):
    data = load(rle_set)
    breaker(data["annotations"][0]["segmentation"])
    report = check_coco_data(data, check_images=False)
    problem = report.problems["invalid_rle"]
    assert (problem.severity, problem.count) == (FIXABLE, 1)
    assert detail in problem.examples[0]
    assert report.bad_annotation_ids == {data["annotations"][0]["id"]}


def test_uncompressed_rle_of_a_crowd_region_is_fine(rle_set):
    data = load(rle_set)
    annotation = data["annotations"][0]
    image = next(i for i in data["images"] if i["id"] == annotation["image_id"])
    mask = mask_util.decode(dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode()))
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        runs = [0] + runs
    annotation.update(iscrowd=1, segmentation={"size": [image["height"], image["width"]], "counts": runs})
    report = check_coco_data(data, check_images=False)
    assert report.ok
    assert "crowd_annotation" in report.problems and "invalid_rle" not in report.problems


def test_compressed_runs_match_the_mask(rle_set):
    rng = np.random.default_rng(0)
    for height, width in ((1, 1), (7, 5), (64, 48), (300, 200)):
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        counts = mask_util.encode(np.asfortranarray(mask))["counts"].decode()
        flat = mask.flatten(order="F")
        changes = np.flatnonzero(np.diff(flat)) + 1
        expected = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
        if flat[0]:
            expected = [0] + expected
        assert compressed_rle_runs(counts) == expected


# ---------------------------------------------------------------------------------------------
# Files that are not COCO


@pytest.mark.parametrize(
    "text, detail",
    [
        ('{"images": [', "not valid JSON"),
        ("[1, 2, 3]", "a JSON array, not an object"),
        ('{"images": [], "categories": []}', "no 'annotations' list"),
        ('{"images": {}, "annotations": [], "categories": []}', "no 'images' list"),
        ('"just text"', "a JSON string"),
    ],
    ids=["malformed", "array", "missing-key", "wrong-type", "string"],
)
def test_not_coco_is_fatal(tmp_path, text, detail):
    report = check_coco(write(tmp_path, text), check_images=False)
    assert [p.kind for p in report.fatal] == ["not_coco"]
    assert detail in report.problems["not_coco"].summary()
    with pytest.raises(MaskinitError, match="not COCO instances JSON"):
        enforce_data_policy(report, skip_bad=True)


def test_missing_paths_are_errors_not_findings(tmp_path, polygon_set):
    with pytest.raises(MaskinitError, match="not found"):
        check_coco(tmp_path / "nope.json", check_images=False)
    with pytest.raises(MaskinitError, match="image folder .* not found"):
        check_coco(polygon_set.json_file, tmp_path / "no-images")
    with pytest.raises(MaskinitError, match="image folder is needed"):
        check_coco(polygon_set.json_file)


# ---------------------------------------------------------------------------------------------
# Image files


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_missing_image_file(tmp_path, polygon_set):
    images = own_images(tmp_path, polygon_set)
    data = load(polygon_set)
    (images / data["images"][1]["file_name"]).unlink()
    report = check_coco(polygon_set.json_file, images)
    assert report.problems["missing_image_file"].severity == FIXABLE
    assert report.bad_image_ids == {data["images"][1]["id"]}
    assert not report.bad_annotation_ids


def test_truncated_png(tmp_path, polygon_set):
    images = own_images(tmp_path, polygon_set)
    data = load(polygon_set)
    truncate(images / data["images"][2]["file_name"])
    report = check_coco(polygon_set.json_file, images)
    assert report.problems["unreadable_image"].count == 1
    assert report.bad_image_ids == {data["images"][2]["id"]}


def test_truncated_jpeg_and_garbage_file(tmp_path, polygon_set):
    images = own_images(tmp_path, polygon_set)
    data = load(polygon_set)
    for image in data["images"][:2]:
        picture = cv2.imread(str(images / image["file_name"]))
        image["file_name"] = image["file_name"].replace(".png", ".jpg")
        cv2.imwrite(str(images / image["file_name"]), picture)
    truncate(images / data["images"][0]["file_name"], keep=0.9)
    (images / data["images"][3]["file_name"]).write_bytes(b"not an image at all")
    report = check_coco(write(tmp_path, data), images)
    problem = report.problems["unreadable_image"]
    assert problem.count == 2
    assert "truncated JPEG" in problem.examples[0]
    assert report.bad_image_ids == {data["images"][0]["id"], data["images"][3]["id"]}  # the whole JPEG is fine


def test_image_size_differs_from_json(tmp_path, polygon_set):
    images = own_images(tmp_path, polygon_set)
    data = load(polygon_set)
    path = images / data["images"][0]["file_name"]
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (100, 128)))
    report = check_coco(polygon_set.json_file, images)
    problem = report.problems["image_size_mismatch"]
    assert problem.count == 1 and "100x128 on disk, 128x128 in the JSON" in problem.examples[0]
    assert report.bad_image_ids == {data["images"][0]["id"]}


def test_exif_rotation_counts_as_detectron2_loads_it(tmp_path, polygon_set):
    """A phone photo stored 200x100 but turned by EXIF is 100x200 for Detectron2's read_image."""
    images = own_images(tmp_path, polygon_set)
    data = load(polygon_set)
    image = data["images"][0]
    image["file_name"] = "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    Image.new("RGB", (200, 100)).save(images / "rotated.jpg", exif=exif)
    image.update(width=100, height=200)
    for annotation in data["annotations"]:
        if annotation["image_id"] == image["id"]:
            annotation["bbox"] = [1, 1, 10, 10]
    assert "image_size_mismatch" not in check_coco(write(tmp_path, data), images).problems
    image.update(width=200, height=100)
    assert "image_size_mismatch" in check_coco(write(tmp_path, data), images).problems


def test_no_images_check_reads_no_file(tmp_path, polygon_set):
    report = check_coco(polygon_set.json_file, tmp_path / "absent", check_images=False)
    assert report.ok and not report.images_checked


# ---------------------------------------------------------------------------------------------
# Speed


@pytest.mark.slow
def test_100k_annotations_are_checked_in_seconds():
    rng = np.random.default_rng(0)
    num_images, num_annotations = 10_000, 100_000
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640} for i in range(1, num_images + 1)]
    xs, ys = rng.uniform(0, 560, num_annotations), rng.uniform(0, 400, num_annotations)
    ws, hs = rng.uniform(4, 80, num_annotations), rng.uniform(4, 80, num_annotations)
    annotations = []
    for n in range(num_annotations):
        x, y, w, h = float(xs[n]), float(ys[n]), float(ws[n]), float(hs[n])
        polygon = [x, y, x + w, y, x + w, y + h, x + w / 2, y + h, x, y + h / 2]
        annotations.append({"id": n + 1, "image_id": 1 + n % num_images, "category_id": 1 + n % 80,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(n % 500 == 0),
                            "segmentation": [polygon]})
    annotations[7]["bbox"][2] = -1.0
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": f"class{i}"} for i in range(1, 81)]}
    started = time.perf_counter()
    report = check_coco_data(coco, check_images=False)
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"{elapsed:.2f} s for {num_annotations} annotations"
    assert report.problems["invalid_box"].count == 1
    assert report.problems["crowd_annotation"].count == num_annotations // 500
    assert report.bad_annotation_ids == {8}
