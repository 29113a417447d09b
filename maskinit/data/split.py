"""A validation split held back from the training set (`maskinit tune --val-fraction`): the trials of a
search train on one part of the training images and are scored on the other, so the validation set the
user reports on is never what the search selected on (selection on it makes its AP optimistic), and a
set without a validation split can still be tuned.

The split is by image, seeded (the same seed gives the same split in every worker and on `--resume`),
drawn separately from the images with and without annotations so that both parts get their share of
each, and written as two COCO files beside the study; they name the training images where they are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import NamedTuple

from ..errors import MaskinitError

TRAIN_PART, HELD_BACK = "train-part.json", "held-back.json"


class HeldBack(NamedTuple):
    data: object  # the data options of the trials: train on TRAIN_PART, validate on HELD_BACK
    train_images: int
    held_back_images: int
    note: str


def held_back_count(total: int, fraction: float) -> int:
    """Images held back from `total`: the fraction rounded, at least one, and at least one left to train on."""
    return min(max(1, round(total * fraction)), total - 1)


def hold_back(data, fraction: float, seed: int, folder: Path) -> HeldBack:
    """Split the training COCO file of `data` (a `DataOptions`, not changed) into a part to train on and
    `fraction` of its images held back for validation, written into `folder`; returns the data options
    that use them (both parts read images from the training image folder)."""
    from ..atomic import write_atomically
    from .sources import with_paths

    if not 0.0 < fraction < 1.0:
        raise MaskinitError(f"--val-fraction must be between 0 and 1 (the share of training images held back), got {fraction}")
    if getattr(data, "dataset", None):
        raise MaskinitError("--val-fraction splits COCO files: give --train-json and --train-images, not --dataset")
    if not data.train_json:
        raise MaskinitError("--val-fraction needs the training data (--train-json and --train-images)")
    source = Path(data.train_json)
    try:
        coco = json.loads(source.read_text())
    except (OSError, ValueError) as error:
        raise MaskinitError(f"--val-fraction: cannot read {source}: {error}") from None
    images = coco.get("images") or []
    annotations = coco.get("annotations") or []
    annotated = {a["image_id"] for a in annotations}
    with_objects = sorted(i["id"] for i in images if i["id"] in annotated)
    if len(with_objects) < 2:
        raise MaskinitError(f"--val-fraction: {source} has {len(with_objects)} annotated images; "
                            "a split needs at least 2 (one to train on, one to score on)")
    without = sorted(i["id"] for i in images if i["id"] not in annotated)
    rng = random.Random(seed)
    held = set()
    for ids, annotated_kind in ((with_objects, True), (without, False)):  # each kind cut on its own
        order = list(ids)
        rng.shuffle(order)
        # the annotated images: at least one in each part; the images without objects: their share
        count = held_back_count(len(order), fraction) if annotated_kind else round(len(order) * fraction)
        held.update(order[:count])

    def part(keep) -> dict:
        kept = [i for i in images if keep(i["id"])]
        ids = {i["id"] for i in kept}
        return {**coco, "images": kept, "annotations": [a for a in annotations if a["image_id"] in ids]}

    train_part, held_part = part(lambda i: i not in held), part(lambda i: i in held)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / TRAIN_PART, json.dumps(train_part))
        write_atomically(folder / HELD_BACK, json.dumps(held_part))
    except OSError as error:
        raise MaskinitError(f"--val-fraction: cannot write the split into {folder}: {error.strerror}") from None
    n_train, n_held = len(train_part["images"]), len(held_part["images"])
    note = (f"--val-fraction {fraction:g}: trials train on {n_train} of the {len(images)} training images and are "
            f"scored on the other {n_held} (seed {seed}, {folder}); a validation set given is not used by the search")
    split_data = with_paths(data, train_json=str(folder / TRAIN_PART), val_json=str(folder / HELD_BACK),
                            val_images=data.train_images)
    return HeldBack(split_data, n_train, n_held, note)
