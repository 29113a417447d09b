"""Pictures and predictions: comparison PNGs, and `predict` writing drawings plus a COCO results JSON."""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import pytest
from conftest import save_untrained_checkpoint
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from maskinit import MaskinitError, load_config
from maskinit.data import apply_dataset_to_cfg, generate_coco_dataset, register_coco_dataset
from maskinit.model import build_model
from maskinit.visualize import PREDICTIONS_FILE, predict, save_comparisons

DATASET = "maskinit_test_vis"
# Category ids 3, 5, ..., 11: predictions must come back with the dataset's ids, not 0..4.
ODD_IDS = {i: 2 * i + 1 for i in range(1, 6)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    files = generate_coco_dataset(tmp_path_factory.mktemp("vis"), 3, seed=21)
    coco = json.loads(files.json_file.read_text())
    for category in coco["categories"]:
        category["id"] = ODD_IDS[category["id"]]
    for annotation in coco["annotations"]:
        annotation["category_id"] = ODD_IDS[annotation["category_id"]]
    files.json_file.write_text(json.dumps(coco))
    return files, register_coco_dataset(DATASET, files.json_file, files.image_root)


@pytest.fixture(scope="module")
def cfg(dataset):
    # Score threshold 0: an untrained model's scores are low, and the test needs some instances.
    cfg = load_config(preset="tiny", overrides=["TEST.DETECTIONS_PER_IMAGE", "5"])
    return apply_dataset_to_cfg(cfg, dataset[1], dataset[1])


@pytest.fixture(scope="module")
def checkpoint(cfg, tmp_path_factory):
    return save_untrained_checkpoint(cfg, tmp_path_factory.mktemp("weights"))


@pytest.mark.slow
def test_save_comparisons_writes_side_by_side_pngs(cfg, tmp_path):
    model = build_model(cfg)
    paths = save_comparisons(cfg, model, DATASET, tmp_path / "vis", count=2, score_threshold=0.0)
    assert len(paths) == 2 and all(path.parent == tmp_path / "vis" for path in paths)
    for path in paths:
        image = cv2.imread(str(path))
        height, width = image.shape[:2]
        assert width > 1.9 * (height - 30)  # two panels of a square image, next to each other
    assert model.training, "drawing must leave the model's mode as it was"


@pytest.mark.slow
def test_predict_writes_drawings_and_coco_results(cfg, checkpoint, dataset, tmp_path):
    files, _ = dataset
    json_path = predict(cfg, checkpoint, files.image_root, tmp_path / "pred", score_threshold=0.0)
    assert json_path == tmp_path / "pred" / PREDICTIONS_FILE
    result = json.loads(json_path.read_text())
    assert [image["file_name"] for image in result["images"]] == sorted(p.name for p in files.image_root.glob("*.png"))
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3
    assert [c["id"] for c in result["categories"]] == sorted(ODD_IDS.values())
    assert result["annotations"], "score threshold 0 keeps the untrained model's detections"
    sizes = {image["id"]: (image["height"], image["width"]) for image in result["images"]}
    for annotation in result["annotations"]:
        assert annotation["category_id"] in ODD_IDS.values()
        assert isinstance(annotation["segmentation"]["counts"], str)
        assert mask_util.decode(annotation["segmentation"]).shape == sizes[annotation["image_id"]]
        assert len(annotation["bbox"]) == 4 and 0 <= annotation["score"] <= 1
    # Image ids follow sorted file order, so the results load against the matching ground truth.
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(files.json_file)).loadRes(result["annotations"])
    assert len(loaded.anns) == len(result["annotations"])


@pytest.mark.slow
def test_predict_applies_the_score_threshold(cfg, checkpoint, dataset, tmp_path):
    files, _ = dataset
    image = sorted(files.image_root.glob("*.png"))[0]
    result = json.loads(predict(cfg, checkpoint, image, tmp_path, score_threshold=0.999).read_text())
    assert len(result["images"]) == 1
    assert all(annotation["score"] >= 0.999 for annotation in result["annotations"])


@pytest.mark.slow
def test_predict_skips_corrupt_images_in_a_folder(cfg, checkpoint, dataset, tmp_path):
    files, _ = dataset
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted(files.image_root.glob("*.png"))[0]
    (folder / "a_good.png").write_bytes(good.read_bytes())
    (folder / "b_corrupt.png").write_bytes(good.read_bytes()[:100])
    (folder / "notes.txt").write_text("not an image, not considered")
    result = json.loads(predict(cfg, checkpoint, folder, tmp_path / "out").read_text())
    assert [image["file_name"] for image in result["images"]] == ["a_good.png"]
    assert [entry["file_name"] for entry in result["skipped"]] == [str(folder / "b_corrupt.png")]


@pytest.mark.slow
def test_predict_errors_name_the_input(cfg, checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(MaskinitError, match="corrupt.jpg"):
        predict(cfg, checkpoint, corrupt, tmp_path / "out")
    with pytest.raises(MaskinitError, match="not found"):
        predict(cfg, checkpoint, tmp_path / "absent", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MaskinitError, match="no images"):
        predict(cfg, checkpoint, empty, tmp_path / "out")
