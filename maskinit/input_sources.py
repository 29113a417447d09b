"""What `maskinit predict` runs on: `input_sources(spec)` turns what the user points at into images.

- an image file (every kind `maskinit.data.images.read_image` reads: 8/16-bit, float, 1 to 16
  channels, TIFF, .npy);
- a folder: its images, sorted (`recursive=True`: also those in its subfolders);
- a glob pattern (`"scans/**/*.tif"`, quoted so the shell leaves it alone; `**` spans folders);
- a text file (`.txt`, `.lst`) listing image paths, one per line (relative to the list's folder;
  empty lines and lines starting with `#` are skipped);
- a video file (what OpenCV's `VideoCapture` decodes): every `every`-th frame, named by its index.

Each image is an `InputItem` with a unique output name; iterating an `InputSources` yields
`(item, image)` pairs, where `image` is the (H, W, C) array or the `MaskinitError` of a file that could
not be read (predict skips it and records it). Nothing matching, a folder without images, a list
without entries and a video that cannot be opened are each one `MaskinitError` line.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MaskinitError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
LIST_SUFFIXES = (".txt", ".lst")
GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class InputItem:
    path: Path  # the image file, or the video a frame comes from
    label: str  # how outputs name its source: the path as found (relative to a folder or list), or the video's
    name: str  # the stem of its output files (unique among the items)
    frame: int | None = None  # the frame index in a video


@dataclass
class InputSources:
    """The images of one `--input`: a list of files, or the sampled frames of one video."""

    spec: str
    kind: str  # "image", "folder", "glob", "list" or "video"
    items: list[InputItem] = field(default_factory=list)  # the image files (empty for a video)
    video: Path | None = None
    every: int = 1
    frame_count: int = 0  # as the video's header says (0 when it does not)

    @property
    def total(self) -> int | None:
        """How many images iterating yields (a video's from its header, so possibly off; None when unknown)."""
        if self.video is None:
            return len(self.items)
        return math.ceil(self.frame_count / self.every) if self.frame_count > 0 else None

    def describe(self) -> str:
        if self.video is not None:
            frames = f"{self.frame_count} frames" if self.frame_count > 0 else "frames"
            return f"video {self.video} ({'every frame' if self.every == 1 else f'every {self.every}th'} of {frames})"
        count = f"{len(self.items)} image{'s' if len(self.items) != 1 else ''}"
        return {
            "image": f"image {self.spec}",
            "folder": f"{count} in {self.spec}",
            "glob": f"{count} matching {self.spec}",
            "list": f"{count} listed in {self.spec}",
        }[self.kind]

    def __iter__(self) -> Iterator[tuple[InputItem, np.ndarray | MaskinitError]]:
        if self.video is not None:
            yield from _video_frames(self.video, self.every)
            return
        from .data.images import read_image

        for item in self.items:
            try:
                yield item, read_image(item.path)
            except MaskinitError as error:
                yield item, error
            except Exception as error:  # noqa: BLE001 - OpenCV and tifffile raise their own types for a bad file
                yield item, MaskinitError(f"cannot read image {item.path}: {one_line(error)}")


def _named(paths: list[Path], labels: list[str]) -> list[InputItem]:
    """Items whose output names are the file stems, made unique with the item's number when repeated."""
    items, used = [], set()
    for number, (path, label) in enumerate(zip(paths, labels), start=1):
        name = path.stem if path.stem not in used else f"{path.stem}_{number}"
        used.add(name)
        items.append(InputItem(path, label, name))
    return items


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _folder(folder: Path, recursive: bool) -> InputSources:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    paths = sorted((p for p in candidates if _is_image(p)), key=lambda p: p.relative_to(folder).as_posix())
    if not paths:
        where = f"{folder} or its subfolders" if recursive else str(folder)
        hint = (
            "" if recursive or not any(p.is_dir() for p in folder.iterdir()) else " (images in subfolders: --recursive)"
        )
        raise MaskinitError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {where}{hint}")
    return InputSources(str(folder), "folder", _named(paths, [p.relative_to(folder).as_posix() for p in paths]))


def _glob(pattern: str) -> InputSources:
    matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    if not matches:
        raise MaskinitError(f"no file matches {pattern}")
    paths = [p for p in matches if _is_image(p)]
    if not paths:
        raise MaskinitError(f"{pattern} matches {len(matches)} path{'s' if len(matches) != 1 else ''} "
                            f"(e.g. {matches[0]}), none of them an image ({' '.join(IMAGE_SUFFIXES)})")
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS)), len(parts))
    base = Path(*parts[:fixed]) if fixed else Path()
    labels = [p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p) for p in paths]
    return InputSources(pattern, "glob", _named(paths, labels))


def _listed(list_file: Path) -> InputSources:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MaskinitError(f"cannot read the list of images {list_file}: {one_line(error)}") from error
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise MaskinitError(f"the list of images {list_file} names no file")
    paths = [Path(entry) if Path(entry).is_absolute() else list_file.parent / entry for entry in entries]
    return InputSources(str(list_file), "list", _named(paths, entries))


def _video(path: Path, every: int) -> InputSources:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise MaskinitError(f"cannot open video {path}: OpenCV cannot decode it (damaged, or a codec it lacks)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()
    return InputSources(str(path), "video", video=path, every=every, frame_count=max(count, 0))


def _video_frames(path: Path, every: int) -> Iterator[tuple[InputItem, np.ndarray]]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise MaskinitError(f"cannot open video {path}: OpenCV cannot decode it (damaged, or a codec it lacks)")
    try:
        index, read = 0, 0
        while capture.grab():
            if index % every == 0:
                ok, frame = capture.retrieve()
                if ok and frame is not None:
                    read += 1
                    frame = frame if frame.ndim == 3 else frame[:, :, None]
                    yield InputItem(path, path.name, f"{path.stem}_f{index:06d}", frame=index), frame
            index += 1
        if read == 0:
            raise MaskinitError(f"video {path}: no frame could be decoded")
    finally:
        capture.release()


def input_sources(spec: str | Path, recursive: bool = False, every: int = 1) -> InputSources:
    """The images `spec` points at (see the module docstring); a `MaskinitError` when there are none."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise MaskinitError(f"--every must be a positive number of frames, got {every!r}")
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists() and any(character in text for character in GLOB_CHARACTERS):
        return _glob(str(path))
    if path.is_dir():
        return _folder(path, recursive)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return _video(path, every)
        if suffix in LIST_SUFFIXES:
            return _listed(path)
        return InputSources(text, "image", [InputItem(path, path.name, path.stem)])
    raise MaskinitError(f"input {text} not found")
