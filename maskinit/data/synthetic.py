"""The embedded default dataset: deterministic synthetic shapes for instance segmentation.

Each 128x128 image has a textured background (smooth noise, gradient, stripes or checker) and a few
shapes of varied size, colour and rotation drawn in z-order, so later shapes occlude earlier ones.
An instance's mask is its *visible* part; instances left with a tiny visible area are dropped.
Annotations are COCO instances JSON (polygons from `cv2.findContours`, or RLE on request), so the
set goes through exactly the same Detectron2 loading path as a user's COCO dataset.

Image `i` is drawn from its own random stream `(seed, image id)`, so a set is reproducible byte for
byte and does not depend on how many images are generated around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from ..atomic import write_atomically
from ..errors import MaskinitError

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross")
# Bump when the drawing changes: it is part of the cache key, so stale caches are not reused.
GENERATOR_VERSION = 1
DEFAULT_NUM_TRAIN = 300
DEFAULT_NUM_VAL = 60
DEFAULT_IMAGE_SIZE = 128
MIN_VISIBLE_AREA = 48  # pixels; smaller visible remnants are not worth labelling
ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
MASK_FORMATS = ("polygon", "rle")
_SUBPIXEL_BITS = 4  # cv2.fillPoly `shift`: vertices with 1/16-pixel precision


@dataclass(frozen=True)
class CocoFiles:
    """A COCO instances JSON and the folder its `file_name`s are relative to."""

    json_file: Path
    image_root: Path


@dataclass(frozen=True)
class SyntheticDataset:
    """The cached default dataset: a train and a val split."""

    root: Path
    train: CocoFiles
    val: CocoFiles
    class_names: tuple[str, ...] = CLASS_NAMES


# ---------------------------------------------------------------------------------------------
# Drawing


def _rotated(points: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def _shape_outline(name: str, radius: float, angle: float) -> np.ndarray | None:
    """Vertices (relative to the centre) of a polygonal shape; None for the circle."""
    if name == "circle":
        return None
    if name == "square":
        half = radius * 0.8
        points = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    elif name == "triangle":
        turns = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        points = radius * np.stack([np.cos(turns), -np.sin(turns)], axis=1)
    elif name == "star":
        turns = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
        points = radii[:, None] * np.stack([np.cos(turns), -np.sin(turns)], axis=1)
    elif name == "cross":
        arm, side = radius * 0.32, radius
        points = np.array(
            [[-arm, -side], [arm, -side], [arm, -arm], [side, -arm], [side, arm], [arm, arm],
             [arm, side], [-arm, side], [-arm, arm], [-side, arm], [-side, -arm], [-arm, -arm]]
        )
    else:  # pragma: no cover - CLASS_NAMES is closed
        raise ValueError(name)
    return _rotated(points, angle)


def _shape_mask(name: str, center: np.ndarray, radius: float, angle: float, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    outline = _shape_outline(name, radius, angle)
    if outline is None:
        cx, cy = np.round(center * scale).astype(int)
        cv2.circle(mask, (int(cx), int(cy)), int(round(radius * scale)), 1, -1, cv2.LINE_8, _SUBPIXEL_BITS)
    else:
        vertices = np.round((outline + center) * scale).astype(np.int32)
        cv2.fillPoly(mask, [vertices], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return mask.astype(bool)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 HxWx3 texture, so the detector cannot find shapes by a flat background alone."""
    first, second = _random_colour(rng), _random_colour(rng)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(4)
    if kind == 0:  # smooth noise: a coarse random grid upsampled
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.float32)
        image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        angle = rng.uniform(0, np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        if kind == 1:  # linear gradient
            weight = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
        elif kind == 2:  # stripes
            weight = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 9) * along + rng.uniform(0, 2 * np.pi))
        else:  # checker
            cells = rng.uniform(3, 10)
            weight = ((np.floor(xs * cells) + np.floor(ys * cells)) % 2).astype(np.float32)
        weight = weight[..., None]
        image = first * weight + second * (1 - weight)
    image = image + rng.normal(0, 6, size=(size, size, 3))
    return image.astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour far from what the shape covers, else the shape would be invisible."""
    reference = under.mean(axis=0) if len(under) else np.full(3, 127.0)
    best, best_distance = None, -1.0
    for _ in range(12):
        colour = _random_colour(rng)
        distance = float(np.linalg.norm(colour - reference))
        if distance >= 90:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill with a shaded, slightly noisy colour: real objects are not flat either."""
    size = image.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    shading = rng.uniform(-25, 25) * (xs * np.cos(angle) + ys * np.sin(angle))
    fill = colour + shading[..., None] + rng.normal(0, 4, size=image.shape)
    image[mask] = fill[mask]


def _place(rng: np.random.Generator, placed: list[tuple[np.ndarray, float]], radius: float, size: int) -> np.ndarray:
    """A centre; often next to an earlier shape so that occlusion is common, not accidental."""
    if placed and rng.random() < 0.4:
        other_center, other_radius = placed[int(rng.integers(len(placed)))]
        angle = rng.uniform(0, 2 * np.pi)
        distance = (radius + other_radius) * rng.uniform(0.35, 0.85)
        center = other_center + distance * np.array([np.cos(angle), np.sin(angle)])
    else:
        center = rng.uniform(0, size, size=2)
    margin = radius * 0.5  # shapes may be cut by the border, but mostly inside
    return np.clip(center, margin, size - margin)


def draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One RGB uint8 image and its instances as `(class index, visible mask)` in z-order."""
    image = _background(rng, size)
    shapes: list[tuple[int, np.ndarray]] = []
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(int(rng.integers(2, 7))):
        label = int(rng.integers(len(CLASS_NAMES)))
        radius = float(rng.uniform(0.08, 0.24) * size)
        center = _place(rng, placed, radius, size)
        mask = _shape_mask(CLASS_NAMES[label], center, radius, rng.uniform(0, 2 * np.pi), size)
        if not mask.any():
            continue
        _paint(image, mask, _contrasting_colour(rng, image[mask]), rng)
        shapes.append((label, mask))
        placed.append((center, radius))
    visible = []
    covered = np.zeros((size, size), bool)
    for label, mask in reversed(shapes):  # top-most first: what is above hides what is below
        own = mask & ~covered
        covered |= mask
        visible.append((label, own))
    visible.reverse()
    return np.clip(image, 0, 255).round().astype(np.uint8), visible


# ---------------------------------------------------------------------------------------------
# COCO annotations


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a binary mask, one per connected outer contour of at least 3 points.

    The +0.5 puts the outline through pixel centres in COCO's continuous coordinates, which
    rasterizes back closer to the mask than integer pixel corners would.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    height, width = mask.shape
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64) + 0.5
        if len(points) < 3 or cv2.contourArea(contour) < 2:
            continue
        points[:, 0] = points[:, 0].clip(0, width)
        points[:, 1] = points[:, 1].clip(0, height)
        polygons.append([round(float(v), 2) for v in points.reshape(-1)])
    return polygons


def mask_rle(mask: np.ndarray) -> dict:
    """Compressed RLE with `counts` as str, as COCO JSON files store it."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _annotation(mask: np.ndarray, mask_format: str) -> dict | None:
    area = int(mask.sum())
    if area < MIN_VISIBLE_AREA:
        return None
    if mask_format == "rle":
        segmentation = mask_rle(mask)
    else:
        segmentation = mask_polygons(mask)
        if not segmentation:
            return None
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
    return {"segmentation": segmentation, "area": area, "bbox": bbox, "iscrowd": 0}


def generate_coco_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    mask_format: str = "polygon",
    first_image_id: int = 1,
) -> CocoFiles:
    """Write `num_images` PNGs under `out_dir/images` and `out_dir/annotations.json`.

    `mask_format` is "polygon" or "rle" (compressed RLE, to exercise Detectron2's bitmask path).
    Image ids run from `first_image_id`; image `id` is drawn from the random stream `(seed, id)`.
    """
    if mask_format not in MASK_FORMATS:
        raise MaskinitError(f"unknown mask format {mask_format!r} (known: {', '.join(MASK_FORMATS)})")
    if num_images < 1:
        raise MaskinitError(f"a synthetic set needs at least 1 image, got {num_images}")
    out_dir = Path(out_dir)
    image_dir = out_dir / IMAGES_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(first_image_id, first_image_id + num_images):
        rng = np.random.default_rng([seed, image_id])
        image, instances = draw_image(rng, image_size)
        file_name = f"{image_id:06d}.png"
        if not cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise MaskinitError(f"cannot write {image_dir / file_name}")
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for label, mask in instances:
            annotation = _annotation(mask, mask_format)
            if annotation is not None:
                annotation.update(id=len(annotations) + 1, image_id=image_id, category_id=label + 1)
                annotations.append(annotation)
    coco = {
        "info": {"description": "maskinit synthetic shapes", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)],
    }
    json_file = out_dir / ANNOTATIONS_FILE
    write_atomically(json_file, json.dumps(coco))
    return CocoFiles(json_file, image_dir)


# ---------------------------------------------------------------------------------------------
# The cached default set


def default_cache_root() -> Path:
    """`$MASKINIT_CACHE`, else `~/.cache/maskinit`."""
    return Path(os.environ.get("MASKINIT_CACHE") or Path.home() / ".cache" / "maskinit")


def _dataset_key(num_train: int, num_val: int, seed: int, image_size: int) -> str:
    params = {"version": GENERATOR_VERSION, "train": num_train, "val": num_val, "seed": seed, "size": image_size}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _splits(folder: Path) -> tuple[CocoFiles, CocoFiles]:
    return tuple(
        CocoFiles(folder / split / ANNOTATIONS_FILE, folder / split / IMAGES_DIR) for split in ("train", "val")
    )


MANIFEST_FILE = "manifest.json"


def _file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (but the manifest), by path relative to it."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


def cache_damage(folder: Path) -> str | None:
    """What is wrong with a cached set (a file missing, changed or added since it was generated), or None."""
    manifest = folder / MANIFEST_FILE
    try:
        expected = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"{MANIFEST_FILE} missing or unreadable"
    try:
        found = _file_digests(folder)
    except OSError as error:
        return f"unreadable file ({error.strerror}: {error.filename})"
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            return f"{name} missing"
        if expected.get(name) != found[name]:
            return f"{name} changed" if name in expected else f"{name} not part of the set"
    return None


def ensure_synthetic_dataset(
    root: str | Path | None = None,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> SyntheticDataset:
    """The default dataset under `root` (default `default_cache_root()`) as `synthetic-<params hash>/`.

    Generated on first use into a temporary folder that is renamed into place when complete, so an
    interrupted generation never leaves a half set. Later calls check the folder against the sha256
    manifest written with it (about 10 ms) and rebuild it, with a warning, when anything in it was
    damaged, so a corrupt cache is never trained on.
    Train images have ids 1..num_train and val images the ids after them (distinct random streams).
    """
    root = Path(root) if root is not None else default_cache_root()
    folder = root / f"synthetic-{_dataset_key(num_train, num_val, seed, image_size)}"
    if folder.is_dir():
        damage = cache_damage(folder)
        if damage:
            logging.getLogger("maskinit").warning(
                "the embedded dataset cache %s is damaged (%s): rebuilding it", folder, damage
            )
            _discard(folder)
    if not folder.is_dir():
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
        except OSError as error:
            raise MaskinitError(f"cannot create the dataset cache under {root}: {error.strerror}") from error
        try:
            train_dir, val_dir = staging / "train", staging / "val"
            generate_coco_dataset(train_dir, num_train, seed, image_size=image_size)
            generate_coco_dataset(val_dir, num_val, seed, image_size=image_size, first_image_id=num_train + 1)
            write_atomically(staging / MANIFEST_FILE, json.dumps(_file_digests(staging), indent=0))
            try:
                staging.rename(folder)
            except OSError:
                if not folder.is_dir():  # not a concurrent generation that finished first
                    raise
        except OSError as error:
            raise MaskinitError(f"cannot write the dataset cache under {root}: {error.strerror}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    train, val = _splits(folder)
    return SyntheticDataset(folder, train, val)


def _discard(folder: Path) -> None:
    """Move a damaged cache aside (atomically, so a concurrent reader sees it whole or not at all), then delete it."""
    trash = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        folder.rename(trash)
    except OSError as error:
        if folder.is_dir():
            raise MaskinitError(
                f"the embedded dataset cache {folder} is damaged and cannot be replaced: delete it"
            ) from error
        return
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Fake detector output, to check evaluators against each other


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_util.decode(rle).astype(bool)


def synthetic_predictions(json_file: str | Path, seed: int = 0) -> list[dict]:
    """COCO results for a COCO set: ground truth shifted, grown or shrunk, sometimes missed or
    mislabelled, scored with noise, plus false positives; a realistic mix of hits and misses."""
    coco = json.loads(Path(json_file).read_text())
    rng = np.random.default_rng(seed)
    images = {image["id"]: image for image in coco["images"]}
    category_ids = sorted(c["id"] for c in coco["categories"])
    results = []

    def add(image_id: int, category_id: int, mask: np.ndarray, score: float) -> None:
        if not mask.any():
            return
        ys, xs = np.nonzero(mask)
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        results.append(
            {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": round(score, 4),
             "segmentation": mask_rle(mask)}
        )

    for annotation in coco["annotations"]:
        if rng.random() < 0.15:  # missed
            continue
        image = images[annotation["image_id"]]
        mask = _decode(annotation["segmentation"], image["height"], image["width"]).astype(np.uint8)
        shift = rng.integers(-3, 4, size=2)
        mask = np.roll(mask, tuple(shift), axis=(0, 1))
        kernel = np.ones((3, 3), np.uint8)
        grow = rng.integers(-1, 2)
        if grow > 0:
            mask = cv2.dilate(mask, kernel)
        elif grow < 0:
            mask = cv2.erode(mask, kernel)
        category_id = annotation["category_id"]
        if rng.random() < 0.1:
            category_id = int(rng.choice(category_ids))
        add(annotation["image_id"], category_id, mask.astype(bool), float(rng.uniform(0.3, 1.0)))
    for image in coco["images"]:
        for _ in range(int(rng.integers(0, 3))):
            mask = np.zeros((image["height"], image["width"]), np.uint8)
            center = (int(rng.integers(image["width"])), int(rng.integers(image["height"])))
            cv2.circle(mask, center, int(rng.integers(4, 20)), 1, -1)
            add(image["id"], int(rng.choice(category_ids)), mask.astype(bool), float(rng.uniform(0.0, 0.6)))
    return results
