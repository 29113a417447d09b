"""COCO instances JSON: a file, or a folder of them (COCO's own `annotations/instances_train2017.json` +
`train2017/`, `train.json` + `val.json` + `images/`, Roboflow's `train/_annotations.coco.json`).

A file whose name says train or val is that split; a folder with one COCO file trains on it. The
pictures are looked for, in order, in the folder named like the file (`instances_val2017.json` ->
`val2017/`), `images/` and `images/<split>/` beside it, the file's own folder and its parent. The
files are used in place; a validation file's category ids are matched to the training file's by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import (
    TEST_NAMES,
    TRAIN,
    VAL,
    VAL_NAMES,
    Dataset,
    Split,
    bad_file,
    detect_with_splits,
    json_kind,
    split_folders,
)

NAME = "coco"
LAYOUT = "COCO instances JSON: a file, annotations/instances_*.json + images, or train.json + val.json + images/"


def _coco_files(folder: Path) -> list[Path]:
    candidates = sorted(folder.glob("*.json")) + sorted(folder.glob("annotations/*.json"))
    return [path for path in candidates if path.is_file() and json_kind(path) == "coco"]


def _detect_one(path: Path) -> str | None:
    if path.is_file():
        return f"COCO JSON {path.name}" if path.suffix.lower() == ".json" and json_kind(path) == "coco" else None
    files = _coco_files(path)
    if files:
        return f"COCO JSON {', '.join(str(f.relative_to(path)) for f in files[:3])}"
    return None


def detect(path: Path) -> str | None:
    return detect_with_splits(path, _detect_one)


def _split_of(path: Path) -> str | None:
    """train, val, test or None from a file name (instances_val2017.json, val.json, _annotations.coco.json)."""
    words = path.stem.lower().replace("-", "_").replace(".", "_").split("_")
    for word in words:
        for split, names in ((VAL, VAL_NAMES), ("test", ("test",)), (TRAIN, ("train", "training"))):
            if any(word == n.lower() or (word.startswith(n.lower()) and word[len(n):].isdigit()) for n in names):
                return split
    return None


def image_root_for(json_file: Path, coco: dict, split: str | None = None) -> Path:
    """The folder the file's `file_name`s are relative to (see the module's docstring)."""
    folder = json_file.parent
    base = folder.parent if folder.name == "annotations" else folder
    stem = json_file.stem.removeprefix("instances_")
    candidates = [base / stem, base / "images" / stem]
    if split:
        candidates += [base / "images" / split, base / split]
    candidates += [base / "images", folder, base]
    named = [image.get("file_name") for image in coco.get("images", [])[:3] if isinstance(image, dict)]
    named = [name for name in named if isinstance(name, str)]
    for candidate in candidates:
        if candidate.is_dir() and named and all((candidate / name).is_file() for name in named):
            return candidate
    if not named:
        return folder
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise bad_file(json_file, f"its pictures (e.g. {named[0]}) are in none of {looked}")


def load_coco(json_file: Path) -> dict:
    try:
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise bad_file(json_file, f"not readable COCO JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise bad_file(json_file, "not COCO instances JSON (no images list)")
    return data


def _files_by_split(path: Path, notes: list[str]) -> dict[str, Path]:
    if path.is_file():
        return {TRAIN: path}
    folders = split_folders(path)
    if folders and not _coco_files(path):
        found = {}
        for split, folder in folders.items():
            files = _coco_files(folder)
            if len(files) != 1:
                raise bad_file(folder, f"holds {len(files)} COCO files; a split folder needs exactly one")
            found[split] = files[0]
        for name in TEST_NAMES:
            if (path / name).is_dir():
                notes.append(f"{path / name} left out: a run trains on train and validates on val")
        return found
    files = _coco_files(path)
    if len(files) == 1:
        return {TRAIN: files[0]}
    by_split: dict[str, Path] = {}
    for file in files:
        split = _split_of(file)
        if split is None:
            names = ", ".join(f.name for f in files)
            raise bad_file(path, f"several COCO files ({names}) and {file.name} names no split: "
                                 "name them train*.json and val*.json, or give one file as --data")
        if split in by_split:
            raise bad_file(path, f"two COCO files for {split}: {by_split[split].name} and {file.name}")
        by_split[split] = file
    if "test" in by_split:
        notes.append(f"{by_split.pop('test')} left out: a run trains on train and validates on val")
    if TRAIN not in by_split:
        raise bad_file(path, f"COCO files {', '.join(f.name for f in files)} but none for training (train*.json)")
    return by_split


def read(path: Path) -> Dataset:
    notes: list[str] = []
    splits, categories = {}, None
    for split, json_file in _files_by_split(Path(path), notes).items():
        data = load_coco(json_file)
        own = [c for c in data.get("categories", []) if isinstance(c, dict)]
        annotations = data.get("annotations") or []
        in_place = json_file
        if categories is None:
            categories = [{"id": c.get("id"), "name": c.get("name")} for c in own]
        else:  # the validation file's ids matched to the training file's by name
            ids = {c["name"]: c["id"] for c in categories}
            remap = {c.get("id"): ids.get(c.get("name")) for c in own}
            if any(new is None for new in remap.values()):
                unknown = [c.get("name") for c in own if ids.get(c.get("name")) is None]
                raise bad_file(json_file, f"categories the training file lacks: {', '.join(map(str, unknown))}")
            if any(old != new for old, new in remap.items()):
                annotations = [
                    {**a, "category_id": remap.get(a.get("category_id"), a.get("category_id"))} for a in annotations
                ]
                in_place = None
        splits[split] = Split(image_root_for(json_file, data, split), data["images"], annotations, in_place)
    return Dataset(NAME, Path(path), categories or [], splits, notes)
