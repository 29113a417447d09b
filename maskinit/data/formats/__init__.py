"""Annotation formats maskinit reads, each into the same COCO-format `Dataset` (see `common.py`).

One module per format; each has `NAME`, `LAYOUT` (the layout it expects, one line), `detect(path)`
(a short description of what it found there, or None) and `read(path) -> Dataset`. `detect_format`
asks every format and refuses a path that none or several of them claim; `read_dataset` reads with
the format named or detected. No module here imports torch or Detectron2 (`check-data` starts
without them).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

from ...errors import MaskinitError
from .common import Dataset

# name -> module, in the order detection reports them
_MODULES = {
    "coco": "coco_json",
    "label-image": "label_image",
    "instance-masks": "instance_masks",
    "yolo": "yolo",
    "labelme": "labelme",
    "via": "via",
    "cvat": "cvat",
    "voc": "voc",
}
FORMAT_NAMES = tuple(_MODULES)


def format_module(name: str):
    """The module of format `name`; `MaskinitError` listing the known ones for another name."""
    if name not in _MODULES:
        raise MaskinitError(f"unknown format {name!r} (known: {', '.join(FORMAT_NAMES)})")
    return importlib.import_module(f".{_MODULES[name]}", __name__)


class Detected(NamedTuple):
    name: str
    evidence: str


def detect_format(path: str | Path) -> Detected:
    """The one format whose layout `path` (a folder, a data.yaml, a JSON or XML file) has; a
    `MaskinitError` naming the candidates when there are several, and the known layouts when none."""
    path = Path(path)
    if not path.exists():
        raise MaskinitError(f"--data {path}: not found")
    found = []
    for name in FORMAT_NAMES:
        evidence = format_module(name).detect(path)
        if evidence:
            found.append(Detected(name, evidence))
    if len(found) == 1:
        return found[0]
    if found:
        candidates = "; ".join(f"{d.name} ({d.evidence})" for d in found)
        raise MaskinitError(f"{path}: ambiguous layout, it fits {candidates}: name one with --format")
    raise MaskinitError(f"{path}: no known annotation layout (known formats: {', '.join(FORMAT_NAMES)}); "
                        "name one with --format, docs/data-formats.md shows each layout")


def read_dataset(path: str | Path, format_name: str | None = None) -> Dataset:
    """`path` read as COCO with format `format_name` (detected when None)."""
    path = Path(path)
    if not path.exists():
        raise MaskinitError(f"--data {path}: not found")
    if format_name is None:
        format_name = detect_format(path).name
    module = format_module(format_name)
    if not module.detect(path):
        raise MaskinitError(f"{path}: not a {format_name} layout ({module.LAYOUT})")
    return module.read(path)


def layouts() -> dict[str, str]:
    """Each format's expected layout, one line each (for help texts)."""
    return {name: format_module(name).LAYOUT for name in FORMAT_NAMES}
