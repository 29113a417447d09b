"""Annotations in any format maskinit reads (`maskinit.data.formats`) as COCO files: for a run
(`--data PATH`: `resolve_source`, the files written once into the cache, named by content) and for the
user (`maskinit convert`: `convert`, a COCO folder), and a COCO set split by image (`maskinit split`).

A source with one split is split by `--val-fraction` (seeded, by image, every class in both parts
where it can: `split.choose_split`); a source with a train and a val split keeps them. Every folder is
written whole or not at all: into a temporary folder beside it, then renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import MaskinitError
from .formats import detect_format, read_dataset
from .formats.common import TRAIN, VAL, Dataset, Split

logger = logging.getLogger("maskinit")

# The share of a one-split source's images a run validates on when --val-fraction is not given.
DEFAULT_VAL_FRACTION = 0.2
TRAIN_FILE, VAL_FILE = "train.json", "val.json"
CACHE_DIR = "data"


class Source(NamedTuple):
    """A source read and split: the dataset (train, and val when there is one), the format's name and the
    lines that say what was read (the format detected, the counts, the split)."""

    dataset: Dataset
    format: str
    val_fraction: float
    lines: list[str]


def split_dataset(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, list[str]]:
    """A one-split dataset with `fraction` of its images held back as its val split."""
    from .split import split_coco

    train = dataset.splits[TRAIN]
    kept, held, notes = split_coco(dataset.coco(TRAIN), fraction, seed, str(dataset.source))
    splits = {TRAIN: Split(train.image_root, kept["images"], kept["annotations"]),
              VAL: Split(train.image_root, held["images"], held["annotations"])}
    note = (f"--val-fraction {fraction:g} (seed {seed}): validating on {len(held['images'])} of the "
            f"{len(train.images)} images, training on the other {len(kept['images'])}")
    return replace(dataset, splits=splits), [note, *notes]


def read_source(path: str | Path, format_name: str | None = None, val_fraction: float | None = None, seed: int = 0,
                default_fraction: float = DEFAULT_VAL_FRACTION) -> Source:
    """Read `path` (format `format_name`, detected when None) and split it when it has one split:
    `val_fraction` of its images (`default_fraction` when None; 0: not split). A source with its own val
    split refuses a `val_fraction` above 0."""
    path = Path(path)
    if format_name is None:
        detected = detect_format(path)
        format_name, how = detected.name, f"detected: {detected.evidence}"
    else:
        how = "format named"
    dataset = read_dataset(path, format_name)
    lines = [f"{path}: {format_name} ({how}); {dataset.summary()}", *dataset.notes]
    if VAL in dataset.splits:
        if val_fraction:
            raise MaskinitError(f"--val-fraction {val_fraction:g}: {path} has its own val split "
                                f"({len(dataset.splits[VAL].images)} images); drop --val-fraction to use it")
        return Source(dataset, format_name, 0.0, lines)
    fraction = default_fraction if val_fraction is None else float(val_fraction)
    if fraction < 0 or fraction >= 1:
        raise MaskinitError(f"--val-fraction must be in [0, 1) (0: no validation split), got {fraction:g}")
    if fraction == 0:
        lines.append(f"{path} has one split and --val-fraction is 0: no validation during training")
        return Source(dataset, format_name, 0.0, lines)
    dataset, notes = split_dataset(dataset, fraction, seed)
    if val_fraction is None:
        notes[0] = notes[0].replace("--val-fraction", "one split: --val-fraction (default)", 1)
    return Source(dataset, format_name, fraction, lines + notes)


def _coco_text(dataset: Dataset, split: str, file_name=None) -> str:
    coco = dataset.coco(split)
    if file_name is not None:
        coco = {**coco, "images": [{**image, "file_name": file_name(image)} for image in coco["images"]]}
    return json.dumps(coco)


def _move_into_place(temporary: Path, out: Path) -> None:
    try:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.replace(temporary, out)
    except OSError as error:
        raise MaskinitError(f"cannot move the converted data into {out}: {error.strerror}") from error


def cache_root() -> Path:
    from .synthetic import default_cache_root

    return default_cache_root() / CACHE_DIR


def write_cached(dataset: Dataset, folder: Path | None = None) -> dict[str, tuple[Path, Path]]:
    """The dataset's splits as COCO files under `folder` (default `<maskinit cache>/data`), in a subfolder
    named by their content (reused when there); `{split: (json file, image root)}`. A split read from a
    COCO file that holds exactly it is used in place."""
    splits = dataset.splits
    if all(part.json_file is not None for part in splits.values()):
        return {name: (part.json_file, part.image_root) for name, part in splits.items()}
    texts = {name: _coco_text(dataset, name) for name in splits}
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(f"{name}\0{splits[name].image_root.resolve()}\0".encode() + texts[name].encode())
    folder = Path(folder) if folder is not None else cache_root()
    target = folder / f"{dataset.format}-{digest.hexdigest()[:16]}"
    files = {
        name: (target / (TRAIN_FILE if name == TRAIN else VAL_FILE), splits[name].image_root.resolve())
        for name in splits
    }
    if all(path.is_file() for path, _ in files.values()):
        return files
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder))
    except OSError as error:
        raise MaskinitError(f"cannot write the converted data under {folder}: {error.strerror}") from error
    try:
        for name, (path, _) in files.items():
            (temporary / path.name).write_text(texts[name])
        try:
            os.replace(temporary, target)
        except OSError:
            if not target.is_dir():  # another process wrote the same content first: theirs is used
                raise
    except OSError as error:
        raise MaskinitError(f"cannot write the converted data under {folder}: {error.strerror}") from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return files


class ResolvedSource(NamedTuple):
    data: Any  # the data options with the COCO files filled in
    notes: list[str]


def resolve_source(data) -> ResolvedSource:
    """The data options of a `--data` source (`data.source`, a `DataOptions` or alike, not changed) with
    its COCO files filled in: read in `data.format` (detected when empty), split by `data.val_fraction`
    when it has one split, written into the cache. Other data options come back as they are."""
    from .split import with_paths

    source = getattr(data, "source", None)
    if not source or data.train_json:
        return ResolvedSource(data, [])
    if data.dataset or data.val_json:
        raise MaskinitError("--data and --dataset/--val-json are exclusive: choose one source")
    read = read_source(source, data.format or None, data.val_fraction, data.split_seed or 0)
    files = write_cached(read.dataset)
    paths = {"train_json": str(files[TRAIN][0]), "train_images": str(files[TRAIN][1])}
    if VAL in files:
        paths.update(val_json=str(files[VAL][0]), val_images=str(files[VAL][1]))
    for line in read.lines:
        logger.info("%s", line)
    resolved = with_paths(data, source=str(Path(source).resolve()), format=read.format, val_fraction=read.val_fraction,
                          split_seed=data.split_seed or 0, **paths)
    return ResolvedSource(resolved, read.lines)


# ---------------------------------------------------------------------------------------------
# maskinit convert / maskinit split


class Written(NamedTuple):
    out: Path
    files: dict  # split -> json path
    lines: list[str]
    reports: dict  # split -> DataReport


def _temporary_beside(out: Path) -> Path:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise MaskinitError(f"{out} already exists: give a new (or empty) folder for the output")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise MaskinitError(f"cannot write into {out.parent}: {error.strerror}") from error


def write_coco_folder(dataset: Dataset, out: str | Path, copy_images: bool = False, check: bool = True) -> Written:
    """The dataset as `out/train.json` (+ `out/val.json`): file names relative to `out` (the pictures
    referenced where they are, or copied under `out/images/<split>/`), checked (`check_coco`: a fatal
    problem is refused and nothing is written), written to a temporary folder and renamed into place."""
    from .report import enforce_data_policy
    from .validate import check_coco

    out = Path(out).resolve()
    temporary = _temporary_beside(out)
    files, reports = {}, {}
    try:
        for split, part in dataset.splits.items():
            root = part.image_root.resolve()
            if copy_images:
                def file_name(image, split=split, root=root):
                    return (Path("images") / split / image["file_name"]).as_posix()

                for image in part.images:
                    target = temporary / file_name(image)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / image["file_name"], target)
            else:
                def file_name(image, root=root):  # the temporary folder and `out` share a parent
                    return Path(os.path.relpath(root / image["file_name"], out)).as_posix()

            name = TRAIN_FILE if split == TRAIN else VAL_FILE
            (temporary / name).write_text(_coco_text(dataset, split, file_name))
            files[split] = out / name
            if check:
                report = check_coco(temporary / name, temporary)
                report.source = str(out / name)
                if report.fatal:  # raises: one line naming every fatal kind; nothing is written
                    enforce_data_policy(report, skip_bad=False, can_skip=False)
                reports[split] = report
        _move_into_place(temporary, out)
    except OSError as error:
        raise MaskinitError(f"cannot write {out}: {error.strerror or error}") from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return Written(out, files, [], reports)


def convert(source: str | Path, out: str | Path, format_name: str | None = None, val_fraction: float | None = None,
            seed: int = 0, copy_images: bool = False) -> Written:
    """`maskinit convert`: `source` read (`read_source`; a one-split source is not split unless
    `val_fraction` is given) and written as a checked COCO folder `out` (`write_coco_folder`)."""
    read = read_source(source, format_name, val_fraction, seed, default_fraction=0.0)
    written = write_coco_folder(read.dataset, out, copy_images=copy_images)
    return written._replace(lines=[line for line in read.lines if "no validation during training" not in line])


def split_file(json_file: str | Path, images: str | Path, out: str | Path, fraction: float, seed: int = 0) -> Written:
    """`maskinit split`: a COCO file split by image (`split.choose_split`) into `out/train.json` and
    `out/val.json`, file names relative to `out`, checked, written whole or not at all."""
    from .formats import coco_json
    from .formats.common import Dataset as DatasetType

    json_file, images = Path(json_file), Path(images)
    if not images.is_dir():
        raise MaskinitError(f"--images {images}: not a folder")
    data = coco_json.load_coco(json_file)
    one = DatasetType(
        "coco",
        json_file,
        data.get("categories") or [],
        {TRAIN: Split(images, data["images"], data.get("annotations") or [])},
    )
    dataset, notes = split_dataset(one, fraction, seed)
    written = write_coco_folder(dataset, out)
    return written._replace(lines=notes)
