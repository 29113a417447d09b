"""Writers of each annotation format, for the tests: a generated COCO set written the way each tool
writes it (independently of maskinit's readers), and the masks every reader must give back.

`source_set` makes a small COCO set (64x64 pictures, RLE masks that do not overlap, train and val);
`masks_by_picture` is what a reader's dataset must hold, pixel for pixel, keyed by picture name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_util

from maskinit.data.synthetic import CLASS_NAMES, generate_coco_dataset, mask_polygons

SIZE = 64


def source_set(root: Path, num_train: int = 6, num_val: int = 3, mask_format: str = "rle") -> dict:
    """{"train": (coco dict, image folder), "val": ...}: generated shapes whose masks do not overlap
    (overlapping instances are dropped, so that label images can hold every one)."""
    parts = {}
    for split, count, seed, first in (("train", num_train, 3, 1), ("val", num_val, 4, 100)):
        files = generate_coco_dataset(root / f"coco-{split}", count, seed=seed, image_size=SIZE, mask_format="rle",
                                      first_image_id=first)
        coco = json.loads(files.json_file.read_text())
        kept, taken = [], {}
        for annotation in coco["annotations"]:
            mask = decode(annotation["segmentation"], SIZE, SIZE)
            used = taken.setdefault(annotation["image_id"], np.zeros((SIZE, SIZE), bool))
            if (mask & used).any():
                continue
            used |= mask
            if mask_format == "polygon":
                polygons = mask_polygons(mask)
                if len(polygons) != 1:
                    continue
                annotation = {**annotation, "segmentation": polygons}
            kept.append(annotation)
        coco["annotations"] = kept
        parts[split] = (coco, files.image_root)
    return parts


def decode(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_util.decode(rle).astype(bool)


def masks_by_picture(coco: dict) -> dict[str, list[tuple[str, bytes]]]:
    """{picture stem: sorted [(class name, mask bytes)]}: what two datasets must share, pixel for pixel."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {i["id"]: i for i in coco["images"]}
    found: dict[str, list] = {Path(i["file_name"]).stem: [] for i in coco["images"]}
    for a in coco["annotations"]:
        image = images[a["image_id"]]
        mask = decode(a["segmentation"], image["height"], image["width"])
        found[Path(image["file_name"]).stem].append((names[a["category_id"]], np.packbits(mask).tobytes()))
    return {name: sorted(masks) for name, masks in found.items()}


def instances(coco: dict):
    """(image, [(class name, mask)]) per image."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for image in coco["images"]:
        own = [(names[a["category_id"]], decode(a["segmentation"], image["height"], image["width"]))
               for a in coco["annotations"] if a["image_id"] == image["id"]]
        yield image, own


def copy_picture(image: dict, image_root: Path, folder: Path, suffix: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    source = image_root / image["file_name"]
    target = folder / (Path(image["file_name"]).stem + (suffix or source.suffix))
    if suffix and suffix != source.suffix:
        cv2.imwrite(str(target), cv2.imread(str(source)))
    else:
        shutil.copy(source, target)
    return target


# ---------------------------------------------------------------------------------------------
# Each format


def write_label_images(
    parts: dict, out: Path, dtype=np.uint16, suffix: str = ".png", classes: str = "instances"
) -> None:
    """images/ + labels/ per split folder (train/, val/); classes: "instances" (classes.json per instance),
    "semantic" (semantic/ masks + names) or "single" (one class, all instances of it)."""
    class_ids = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}
    for split, (coco, image_root) in parts.items():
        folder = out / split
        per_instance = {}
        for image, own in instances(coco):
            copy_picture(image, image_root, folder / "images")
            label = np.zeros((image["height"], image["width"]), dtype)
            semantic = np.zeros((image["height"], image["width"]), np.uint8)
            mine = {}
            for value, (name, mask) in enumerate(own, start=7):  # labels need not start at 1 or be contiguous
                value = value * 3
                label[mask] = value
                semantic[mask] = class_ids[name]
                mine[str(value)] = name
            stem = Path(image["file_name"]).stem
            per_instance[stem] = mine
            (folder / "labels").mkdir(parents=True, exist_ok=True)
            if suffix == ".png":
                assert cv2.imwrite(str(folder / "labels" / f"{stem}.png"), label)
            else:
                import tifffile

                tifffile.imwrite(folder / "labels" / f"{stem}{suffix}", label)
            if classes == "semantic":
                (folder / "semantic").mkdir(exist_ok=True)
                cv2.imwrite(str(folder / "semantic" / f"{stem}.png"), semantic)
        names = {str(i): n for n, i in class_ids.items()}
        if classes == "instances":
            (folder / "classes.json").write_text(json.dumps({"classes": names, "instances": per_instance}))
        elif classes == "semantic":
            (folder / "classes.json").write_text(json.dumps({"classes": names}))


def write_instance_masks(parts: dict, out: Path, layout: str = "dsb") -> None:
    """One 0/255 PNG per instance: "dsb" (ID/images/ID.png + ID/masks/*.png) or "flat" (images/ + masks/NAME_k.png)."""
    for split, (coco, image_root) in parts.items():
        for image, own in instances(coco):
            stem = Path(image["file_name"]).stem
            if layout == "dsb":
                copy_picture(image, image_root, out / split / stem / "images")
                masks = out / split / stem / "masks"
            else:
                copy_picture(image, image_root, out / split / "images")
                masks = out / split / "masks"
            masks.mkdir(parents=True, exist_ok=True)
            for k, (_, mask) in enumerate(own):
                name = f"{k:04x}{stem[-2:]}.png" if layout == "dsb" else f"{stem}_{k}.png"
                assert cv2.imwrite(str(masks / name), mask.astype(np.uint8) * 255)


def write_yolo(parts: dict, out: Path) -> Path:
    """Ultralytics layout: data.yaml, images/{train,val}, labels/{train,val}; polygons normalized."""
    for split, (coco, image_root) in parts.items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        order = [c["name"] for c in coco["categories"]]
        for image in coco["images"]:
            copy_picture(image, image_root, out / "images" / split)
            lines = []
            for a in coco["annotations"]:
                if a["image_id"] != image["id"]:
                    continue
                for polygon in a["segmentation"]:
                    xy = [v / (image["width"] if i % 2 == 0 else image["height"]) for i, v in enumerate(polygon)]
                    lines.append(" ".join([str(order.index(names[a["category_id"]]))] + [repr(v) for v in xy]))
            (out / "labels" / split).mkdir(parents=True, exist_ok=True)
            (out / "labels" / split / (Path(image["file_name"]).stem + ".txt")).write_text("\n".join(lines) + "\n")
    data = {"path": str(out), "train": "images/train", "val": "images/val", "names": dict(enumerate(order))}
    (out / "data.yaml").write_text(yaml.safe_dump(data))
    return out / "data.yaml"


def write_labelme(parts: dict, out: Path) -> None:
    """One LabelMe JSON per picture, beside it (train/ and val/)."""
    names_of = {}
    for split, (coco, image_root) in parts.items():
        names_of = {c["id"]: c["name"] for c in coco["categories"]}
        for image in coco["images"]:
            picture = copy_picture(image, image_root, out / split)
            shapes = []
            for a in coco["annotations"]:
                if a["image_id"] == image["id"]:
                    for polygon in a["segmentation"]:
                        points = [[polygon[i], polygon[i + 1]] for i in range(0, len(polygon), 2)]
                        shapes.append({"label": names_of[a["category_id"]], "points": points, "group_id": a["id"],
                                       "shape_type": "polygon", "flags": {}})
            document = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": picture.name, "imageData": None,
                        "imageHeight": image["height"], "imageWidth": image["width"]}
            (out / split / f"{picture.stem}.json").write_text(json.dumps(document))


def write_via(parts: dict, out: Path) -> None:
    """The balloon layout: train/via_region_data.json (VIA 1.x/2.x export, regions as a dict) + pictures."""
    for split, (coco, image_root) in parts.items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        document = {}
        for image in coco["images"]:
            picture = copy_picture(image, image_root, out / split)
            regions = {}
            for a in coco["annotations"]:
                if a["image_id"] == image["id"]:
                    polygon = a["segmentation"][0]
                    regions[str(len(regions))] = {
                        "shape_attributes": {
                            "name": "polygon",
                            "all_points_x": polygon[0::2],
                            "all_points_y": polygon[1::2],
                        },
                        "region_attributes": {"shape": names[a["category_id"]]},
                    }
            size = picture.stat().st_size
            document[f"{picture.name}{size}"] = {"fileref": "", "size": size, "filename": picture.name,
                                                 "base64_img_data": "", "file_attributes": {}, "regions": regions}
        (out / split / "via_region_data.json").write_text(json.dumps(document))


def cvat_rle(mask: np.ndarray) -> tuple[list[int], int, int, int, int]:
    """CVAT's mask RLE: run lengths over the mask's box, row by row, background first;
    (counts, left, top, width, height)."""
    ys, xs = np.nonzero(mask)
    left, top, right, bottom = xs.min(), ys.min(), xs.max(), ys.max()
    flat = mask[top:bottom + 1, left:right + 1].reshape(-1)
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts, int(left), int(top), int(right - left + 1), int(bottom - top + 1)


def write_cvat(parts: dict, out: Path, masks: bool = False) -> None:
    """CVAT for images 1.1: annotations.xml (subsets Train and Validation) + images/; polygons or masks."""
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>", "  <meta><task><labels>",
    ]
    categories = next(iter(parts.values()))[0]["categories"]
    lines += [f"    <label><name>{c['name']}</name><type>any</type></label>" for c in categories]
    lines.append("  </labels></task></meta>")
    index = 0
    for split, (coco, image_root) in parts.items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        subset = "Train" if split == "train" else "Validation"
        for image, own in instances(coco):
            picture = copy_picture(image, image_root, out / "images")
            lines.append(
                f'  <image id="{index}" name="{picture.name}" subset="{subset}" '
                f'width="{image["width"]}" height="{image["height"]}">'
            )
            index += 1
            for a, (name, mask) in zip([a for a in coco["annotations"] if a["image_id"] == image["id"]], own):
                assert names[a["category_id"]] == name
                if masks:
                    counts, left, top, width, height = cvat_rle(mask)
                    lines.append(
                        f'    <mask label="{name}" source="manual" occluded="0" rle="{", ".join(map(str, counts))}" '
                        f'left="{left}" top="{top}" width="{width}" height="{height}" z_order="0"></mask>'
                    )
                else:
                    points = ";".join(
                        f"{x:.2f},{y:.2f}" for x, y in zip(a["segmentation"][0][0::2], a["segmentation"][0][1::2])
                    )
                    lines.append(
                        f'    <polygon label="{name}" source="manual" occluded="0" points="{points}" '
                        'z_order="0"></polygon>'
                    )
            lines.append("  </image>")
    lines.append("</annotations>")
    (out / "annotations.xml").write_text("\n".join(lines))


def _palette_png(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    palette = [0, 0, 0] + [v for i in range(1, 256) for v in ((i * 67) % 256, (i * 131) % 256, (i * 29) % 256)]
    image.putpalette(palette)
    image.save(path)


def write_voc(parts: dict, out: Path, border: bool = True) -> Path:
    """VOCdevkit/VOC2012: JPEGImages, SegmentationObject and SegmentationClass palette PNGs (255 on a
    one-pixel band around each instance when `border`, as VOC draws its void border: on the instance's own
    edge, so the expected mask is the instance without that band), ImageSets/Segmentation/{train,val}.txt,
    labelmap.txt. Returns the VOC2012 folder; `parts` masks are trimmed in place to what VOC keeps."""
    root = out / "VOCdevkit" / "VOC2012"
    for name in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / name).mkdir(parents=True, exist_ok=True)
    categories = next(iter(parts.values()))[0]["categories"]
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                       + "".join(f"{c['name']}:{c['id'] * 40},0,0::\n" for c in categories))
    index = {c["name"]: i + 1 for i, c in enumerate(categories)}
    for split, (coco, image_root) in parts.items():
        stems = []
        for image, own in instances(coco):
            stem = Path(image["file_name"]).stem
            stems.append(stem)
            copy_picture(image, image_root, root / "JPEGImages", ".jpg")
            objects = np.zeros((image["height"], image["width"]), np.uint8)
            classes = np.zeros_like(objects)
            kept = []
            for value, (name, mask) in enumerate(own, start=1):
                inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) if border else mask
                if not inner.any():
                    inner = mask
                band = mask & ~inner
                objects[inner], classes[inner] = value, index[name]
                objects[band], classes[band] = 255, 255
                kept.append(inner)
            _palette_png(objects, root / "SegmentationObject" / f"{stem}.png")
            _palette_png(classes, root / "SegmentationClass" / f"{stem}.png")
            mine = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            for a, inner in zip(mine, kept):
                rle = mask_util.encode(np.asfortranarray(inner.astype(np.uint8)))
                a["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root
