"""MASKINIT.AUGMENT.COPY_PASTE: pasted pixels, occluded masks, recomputed boxes, dropped leftovers, polygon
and RLE data, PROB 0 unchanged, config refusals, pickling into loader workers, training end to end."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetFromList, MapDataset, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from maskinit import MaskinitError, load_config
from maskinit import copy_paste as copy_paste_module
from maskinit.augment import build_train_mapper
from maskinit.copy_paste import CopyPasteMapper, bitmasks, copy_paste, paste_candidates
from maskinit.data.mapper import ImageMapper
from maskinit.data.synthetic import generate_coco_dataset
from maskinit.train import DataOptions, TrainOptions, train

CP = "MASKINIT.AUGMENT.COPY_PASTE."


def rect_masks(height, width, rects):
    """(N, height, width) bool masks, one per (row0, row1, col0, col1) rectangle."""
    masks = torch.zeros((len(rects), height, width), dtype=torch.bool)
    for i, (r0, r1, c0, c1) in enumerate(rects):
        masks[i, r0:r1, c0:c1] = True
    return masks


def mapped(image, masks, boxes, classes):
    """A mapped dataset dict as the mapper gives it: (C, H, W) image and instances."""
    instances = Instances(tuple(image.shape[1:]), gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                          gt_classes=torch.tensor(classes), gt_masks=masks)
    return {"file_name": "x.png", "image": image, "instances": instances}


@pytest.fixture()
def pair():
    """A 20 x 24 target and a 16 x 30 source (shorter and wider: cropped and padded onto the target)."""
    gen = torch.Generator().manual_seed(0)
    target_image = torch.randint(0, 256, (3, 20, 24), generator=gen, dtype=torch.uint8)
    source_image = torch.randint(0, 256, (3, 16, 30), generator=gen, dtype=torch.uint8)
    # A: loses its lower rows (18 px left); B: fully covered; C: loses 4 of 16 px (12 < MIN_AREA 16).
    target_masks = rect_masks(20, 24, [(2, 8, 2, 8), (12, 16, 12, 16), (2, 6, 18, 22)])
    target = mapped(target_image, BitMasks(target_masks), [[2, 2, 8, 8], [12, 12, 16, 16], [18, 2, 22, 6]], [0, 1, 2])
    # S1 inside the canvas; S2 cropped by it to 4 x 4 = 16 px; S3 entirely beyond it.
    source_masks = rect_masks(16, 30, [(5, 16, 0, 17), (0, 4, 20, 30), (10, 12, 25, 28)])
    source = mapped(source_image, BitMasks(source_masks), [[0, 5, 17, 16], [20, 0, 30, 4], [25, 10, 28, 12]], [3, 4, 5])
    return target, source


def test_paste_composites_by_mask_and_updates_the_target(pair):
    target, source = pair
    target_image, target_masks = target["image"].clone(), target["instances"].gt_masks.tensor.clone()
    assert list(paste_candidates(source, 20, 24, min_area=16)) == [0, 1]  # S3 is off the canvas
    out = copy_paste(target, source, [0, 1], min_area=16)

    pasted = torch.zeros((2, 20, 24), dtype=torch.bool)
    pasted[:, :16, :] = source["instances"].gt_masks.tensor[:2, :, :24]
    alpha = pasted.any(0)
    canvas = torch.zeros_like(target_image)
    canvas[:, :16, :] = source["image"][:, :, :24]
    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape == target_image.shape
    assert torch.equal(image[:, alpha], canvas[:, alpha])  # the source's pixels inside the pasted masks
    assert torch.equal(image[:, ~alpha], target_image[:, ~alpha])  # the target's everywhere else

    instances = out["instances"]
    assert isinstance(instances.gt_masks, BitMasks)
    assert instances.gt_classes.tolist() == [0, 3, 4]  # B fully covered, C below MIN_AREA: dropped
    masks = instances.gt_masks.tensor
    assert torch.equal(masks[0], target_masks[0] & ~alpha)  # exactly the covered pixels removed
    assert int(masks[0].sum()) == 18
    assert torch.equal(masks[1:], pasted)
    # A and the cropped S2 changed: boxes from their masks; S1 did not: its own box
    assert instances.gt_boxes.tensor.tolist() == [[2, 2, 8, 5], [0, 5, 17, 16], [20, 0, 24, 4]]
    torch.testing.assert_close(instances.gt_boxes.tensor, instances.gt_masks.get_bounding_boxes().tensor)
    # the arguments are unchanged
    assert torch.equal(target["image"], target_image) and torch.equal(target["instances"].gt_masks.tensor, target_masks)
    assert len(target["instances"]) == 3 and len(source["instances"]) == 3


def test_min_area_keeps_a_partly_covered_instance(pair):
    target, source = pair
    out = copy_paste(target, source, [0, 1], min_area=12)
    assert out["instances"].gt_classes.tolist() == [0, 2, 3, 4]  # C keeps 12 px: enough now
    assert out["instances"].gt_boxes.tensor[1].tolist() == [18, 2, 22, 6]  # its lost pixels leave the box
    assert int(out["instances"].gt_masks.tensor[1].sum()) == 12


def test_polygon_target_masks_are_rasterized_as_detectron2_does(pair):
    target, source = pair
    polygons = PolygonMasks([[np.array([2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0])]])
    target = mapped(target["image"], polygons, [[2, 2, 8, 8]], [0])
    out = copy_paste(target, source, [0], min_area=1)
    expected = BitMasks.from_polygon_masks(polygons, 20, 24).tensor[0]
    alpha = torch.zeros((20, 24), dtype=torch.bool)
    alpha[:16, :] = source["instances"].gt_masks.tensor[0, :, :24]
    assert torch.equal(out["instances"].gt_masks.tensor[0], expected & ~alpha)


def test_mixed_image_kinds_paste_as_float(pair):
    target, source = pair
    source = {**source, "image": source["image"].to(torch.float32) * 256}
    out = copy_paste(target, source, [0], min_area=16)
    assert out["image"].dtype == torch.float32


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Polygon and RLE versions of a small generated set, as Detectron2 dataset dicts."""
    out = {}
    for kind in ("polygon", "rle"):
        files = generate_coco_dataset(tmp_path_factory.mktemp(kind), 3, seed=5, mask_format=kind)
        out[kind] = load_coco_json(str(files.json_file), str(files.image_root))
    return out


def tiny(*overrides):
    return load_config(preset="tiny", overrides=list(overrides))


@pytest.mark.parametrize("kind", ["polygon", "rle"])
def test_mapper_pastes_one_source_object(records, kind):
    """On real data through the real mapper (no random augmentation, so each image maps the same twice):
    the one pasted object (MAX_INSTANCES 1) is a source object, its pixels the source's, and every target
    mask loses exactly what it covers."""
    cfg = tiny("INPUT.MASK_FORMAT", "bitmask" if kind == "rle" else "polygon")
    target_record, source_record = records[kind][0], records[kind][1]
    plain = ImageMapper(cfg, is_train=True, augmentations=[])
    mapper = CopyPasteMapper(plain, [source_record], prob=1.0, max_instances=1, min_area=16)
    target, source = plain(target_record), plain(source_record)
    assert len(target["instances"]) and len(source["instances"])
    checked = 0
    for seed in range(4):
        np.random.seed(seed)
        out = mapper(target_record)
        instances = out["instances"]
        alpha = instances.gt_masks.tensor[-1]
        source_masks = bitmasks(source["instances"])
        index = [i for i in range(len(source_masks)) if torch.equal(source_masks[i], alpha)]
        assert len(index) == 1 and instances.gt_classes[-1] == source["instances"].gt_classes[index[0]]
        assert torch.equal(out["image"], torch.where(alpha, source["image"], target["image"]))
        left = [m & ~alpha for m in bitmasks(target["instances"])]
        kept = [m for m, before in zip(left, bitmasks(target["instances"])) if torch.equal(m, before) or m.sum() >= 16]
        assert len(instances) == len(kept) + 1
        assert all(torch.equal(a, b) for a, b in zip(instances.gt_masks.tensor[:-1], kept))
        checked += 1
    assert checked == 4


def test_prob_zero_is_the_plain_mapper(records):
    cfg = tiny(CP + "PROB", "0.0")
    mapper = build_train_mapper(cfg)
    assert type(mapper) is ImageMapper  # not wrapped: the same draws, the same polygons
    record = records["polygon"][0]
    np.random.seed(3)
    got = mapper(record)
    np.random.seed(3)
    want = ImageMapper(cfg, is_train=True)(record)
    assert torch.equal(got["image"], want["image"])
    assert isinstance(got["instances"].gt_masks, PolygonMasks)
    assert torch.equal(got["instances"].gt_boxes.tensor, want["instances"].gt_boxes.tensor)
    pairs = list(zip(got["instances"].gt_masks.polygons, want["instances"].gt_masks.polygons, strict=True))
    assert all(np.array_equal(p, q) for a, b in pairs for p, q in zip(a, b, strict=True))
    # a wrapper whose coin never lands gives the wrapped mapper's output too
    np.random.seed(3)
    wrapped = CopyPasteMapper(mapper, [record], prob=0.0, max_instances=5, min_area=16)(record)
    assert torch.equal(wrapped["image"], want["image"]) and wrapped["instances"].gt_masks is not None


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([CP + "PROB", "1.5"], r"MASKINIT\.AUGMENT\.COPY_PASTE\.PROB must be in \[0, 1\]"),
        ([CP + "PROB", "-0.1"], r"COPY_PASTE\.PROB must be in \[0, 1\]"),
        ([CP + "MAX_INSTANCES", "0"], r"COPY_PASTE\.MAX_INSTANCES must be an integer of at least 1"),
        ([CP + "MIN_AREA", "0"], r"COPY_PASTE\.MIN_AREA must be an integer of at least 1"),
        ([CP + "PROB", "0.5", "MODEL.MASK_ON", "False"], r"needs MODEL\.MASK_ON"),
    ],
)
def test_bad_copy_paste_values_are_refused_in_one_line(overrides, message):
    with pytest.raises(MaskinitError, match=message) as error:
        tiny(*overrides)  # load_config -> check_config -> check_augment
    assert "\n" not in str(error.value)


@pytest.fixture()
def registered(records):
    name = "maskinit_test_copy_paste"
    DatasetCatalog.register(name, lambda: records["polygon"])
    MetadataCatalog.get(name).set(thing_classes=[str(i) for i in range(10)])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_build_train_mapper_wraps_with_the_training_records(registered):
    cfg = tiny(CP + "PROB", "0.5", CP + "MAX_INSTANCES", "3", "DATASETS.TRAIN", f"('{registered}',)")
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, CopyPasteMapper) and isinstance(mapper.mapper, ImageMapper)
    assert (mapper.prob, mapper.max_instances, mapper.min_area) == (0.5, 3, 16)
    assert len(mapper.sources) == 3
    refused = tiny(CP + "PROB", "0.5", "DATASETS.TRAIN", "('maskinit_no_such_set',)")
    with pytest.raises(MaskinitError, match="not registered"):
        build_train_mapper(refused)


@pytest.mark.slow
def test_mapper_pickles_and_runs_in_spawned_loader_workers(registered, records):
    cfg = tiny(CP + "PROB", "1.0", "MASKINIT.AUGMENT.NAME", "lsj", "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "96",
               "DATASETS.TRAIN", f"('{registered}',)")
    mapper = build_train_mapper(cfg)
    clone = pickle.loads(pickle.dumps(mapper))
    np.random.seed(7)
    a = mapper(records["polygon"][0])
    np.random.seed(7)
    b = clone(records["polygon"][0])
    assert torch.equal(a["image"], b["image"]) and torch.equal(
        a["instances"].gt_masks.tensor, b["instances"].gt_masks.tensor
    )
    # spawn, not fork: the worker gets the mapper by pickle. Its numpy RNG is seeded (with its id, 0), as
    # Detectron2's loader seeds each worker: unseeded, LSJ's 0.1x draws sometimes shrink every source
    # object below MIN_AREA and the image is left unpasted, by chance.
    dataset = MapDataset(DatasetFromList(records["polygon"], copy=False), mapper)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn",
                                         worker_init_fn=np.random.seed)
    items = list(loader)
    assert len(items) == 3
    for item in items:
        assert tuple(item["image"].shape) == (3, 96, 96)
        assert isinstance(item["instances"].gt_masks, BitMasks) and len(item["instances"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["default", "lsj"])
def test_training_with_copy_paste(tmp_path, monkeypatch, augment):
    files = generate_coco_dataset(tmp_path / "train", 4, seed=3)
    val = generate_coco_dataset(tmp_path / "val", 2, seed=4, first_image_id=100)
    pasted, original = [], copy_paste_module.copy_paste

    def counting(*args, **kwargs):  # the trainer's loader runs in this process (tiny: NUM_WORKERS 0)
        pasted.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(copy_paste_module, "copy_paste", counting)
    overrides = [CP + "PROB", "1.0", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2"]
    if augment == "lsj":
        overrides += ["MASKINIT.AUGMENT.NAME", "lsj", "MASKINIT.AUGMENT.LSJ_IMAGE_SIZE", "128"]
    data = DataOptions(str(files.json_file), str(files.image_root), str(val.json_file), str(val.image_root))
    options = TrainOptions(output_dir=str(tmp_path / "out"), data=data, seed=0, progress=False, max_iter=3,
                           checkpoint_period=3)
    summary = train(tiny(*overrides), options)
    assert summary["status"] == "finished" and summary["iterations"] == 3
    assert len(pasted) >= 4  # every training image of the 3 batches of 2 (LSJ may crop a source bare)
