"""A validation split held back from the training set (`maskinit tune --val-fraction`): the trials of a
search train on one part of the training images and are scored on the other, so the validation set the
user reports on is never what the search selected on (selection on it makes its AP optimistic), and a
set without a validation split can still be tuned.

The split is by image, seeded (the same seed gives the same split in every worker and on `--resume`),
drawn separately from the images with and without annotations so that both parts get their share of
each, and written as two COCO files beside the study; they name the training images where they are.
"""

from __future__ import annotations

import copy
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


def with_paths(data, **paths):
    """A copy of the data options `data` with `paths` set (as `sources.with_paths`, which imports this module's
    users: the data modules import one way)."""
    changed = copy.copy(data)
    for name, value in paths.items():
        setattr(changed, name, value)
    return changed


def held_back_count(total: int, fraction: float) -> int:
    """Images held back from `total`: the fraction rounded, at least one, and at least one left to train on."""
    return min(max(1, round(total * fraction)), total - 1)


def hold_back(data, fraction: float, seed: int, folder: Path) -> HeldBack:
    """Split the training COCO file of `data` (a `DataOptions`, not changed) into a part to train on and
    `fraction` of its images held back for validation, written into `folder`; returns the data options
    that use them (both parts read images from the training image folder)."""
    from ..atomic import write_atomically

    if not 0.0 < fraction < 1.0:
        raise MaskinitError(
            f"--val-fraction must be between 0 and 1 (the share of training images held back), got {fraction}"
        )
    if getattr(data, "dataset", None):
        raise MaskinitError("--val-fraction splits COCO files: give --train-json and --train-images, not --dataset")
    if not data.train_json:
        raise MaskinitError("--val-fraction needs the training data (--train-json and --train-images)")
    source = Path(data.train_json)
    try:
        coco = json.loads(source.read_text())
    except (OSError, ValueError) as error:
        raise MaskinitError(f"--val-fraction: cannot read {source}: {error}") from error
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
        raise MaskinitError(f"--val-fraction: cannot write the split into {folder}: {error.strerror}") from error
    n_train, n_held = len(train_part["images"]), len(held_part["images"])
    note = (f"--val-fraction {fraction:g}: trials train on {n_train} of the {len(images)} training images and are "
            f"scored on the other {n_held} (seed {seed}, {folder}); a validation set given is not used by the search")
    split_data = with_paths(data, train_json=str(folder / TRAIN_PART), val_json=str(folder / HELD_BACK),
                            val_images=data.train_images)
    return HeldBack(split_data, n_train, n_held, note)


class SplitChoice(NamedTuple):
    """The images a seeded split holds back, and what it could not do (a class left out of one part)."""

    held: set
    notes: list[str]


def choose_split(coco: dict, fraction: float, seed: int, where: str = "the data") -> SplitChoice:
    """Hold back `fraction` of the images of a COCO dict (by image, seeded), keeping every class in both
    parts where it can: first, rarest class first, one image of each class not yet held back (when
    holding it back leaves every one of its classes an image to train on), then images in seeded
    order, each only when it takes no class's last training image. Images without annotations are
    cut on their own, their share held back. The held-back part never outgrows the fraction; the notes
    say which class could not be in both parts, and why."""
    if not 0.0 < fraction < 1.0:
        raise MaskinitError(f"--val-fraction must be between 0 and 1 (the share of images held back), got {fraction}")
    images = coco.get("images") or []
    classes_of: dict = {}
    for annotation in coco.get("annotations") or []:
        if not annotation.get("iscrowd", 0):
            classes_of.setdefault(annotation["image_id"], set()).add(annotation["category_id"])
    ids = [image["id"] for image in images]
    annotated = sorted(i for i in ids if i in classes_of)
    if len(annotated) < 2:
        raise MaskinitError(f"--val-fraction: {where} has {len(annotated)} annotated images; "
                            "a split needs at least 2 (one to train on, one to validate on)")
    rng = random.Random(seed)
    order = list(annotated)
    rng.shuffle(order)
    images_with: dict = {}
    for image_id in annotated:
        for category in classes_of[image_id]:
            images_with[category] = images_with.get(category, 0) + 1
    held, held_with, notes = set(), {}, []
    names = {c.get("id"): c.get("name") for c in coco.get("categories") or []}

    def can_hold(image_id) -> bool:
        return all(images_with[c] - held_with.get(c, 0) > 1 for c in classes_of[image_id])

    def hold(image_id) -> None:
        held.add(image_id)
        for c in classes_of[image_id]:
            held_with[c] = held_with.get(c, 0) + 1

    target = held_back_count(len(annotated), fraction)
    alone, no_room = [], []
    for category in sorted(images_with, key=lambda c: (images_with[c], str(c))):
        if held_with.get(category):
            continue
        name = str(names.get(category, category))
        candidates = [i for i in order if i not in held and category in classes_of[i] and can_hold(i)]
        # the one bringing the most classes not yet held back (the first in seeded order among equals)
        candidate = max(candidates, key=lambda i: sum(not held_with.get(c) for c in classes_of[i]), default=None)
        if candidate is None:
            alone.append(f"{name} ({images_with[category]} {'image' if images_with[category] == 1 else 'images'})")
        elif len(held) >= target:
            no_room.append(name)
        else:
            hold(candidate)
    for image_id in order:
        if len(held) >= target:
            break
        if image_id not in held and can_hold(image_id):
            hold(image_id)
    if alone:
        notes.append(f"only in the training part, too few images to be in both: {', '.join(alone)}")
    if no_room:
        notes.append(
            f"not in the {len(held)} held-back images (a larger --val-fraction makes room): {', '.join(no_room)}"
        )
    without = sorted(i for i in ids if i not in classes_of)
    rng.shuffle(without)
    held.update(without[:round(len(without) * fraction)])
    return SplitChoice(held, notes)


def split_coco(coco: dict, fraction: float, seed: int, where: str = "the data") -> tuple[dict, dict, list[str]]:
    """(training part, held-back part, notes) of a COCO dict split by `choose_split`."""
    choice = choose_split(coco, fraction, seed, where)

    def part(keep) -> dict:
        kept = [image for image in coco.get("images") or [] if keep(image["id"])]
        ids = {image["id"] for image in kept}
        return {
            **coco,
            "images": kept,
            "annotations": [a for a in coco.get("annotations") or [] if a["image_id"] in ids],
        }

    return part(lambda i: i not in choice.held), part(lambda i: i in choice.held), choice.notes
