"""Measure a COCO training set: image sizes, instance boxes, instances per image, class balance, image
kind and pixel statistics of a deterministic sample of the images (`analyze_coco`), the boxes as the model
sees them at an input size (`scaled_box_sides`), and the report of a measurement with the keys fitted to it
(`write_analysis_json`, `plot_analysis`). Fitting the config is `data/fit.py`.

Only numpy, OpenCV, tifffile and (for the plot) matplotlib are imported: no torch, no Detectron2. A
config is any Detectron2/yacs `CfgNode`; nothing here builds one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cfgkeys import get_key as config_get
from ..errors import MaskinitError
from .images import describe_kind, image_kind, read_image

# Images read for the pixel statistics: the mean and std of a set's pixels settle within about 1 %
# long before 100 images (each image holds 10^4 to 10^6 pixels); reading every image of a big set
# would take minutes for nothing.
DEFAULT_SAMPLE = 100
# Percentiles the summary shows: of box height/width, and of instances per image (the crowded end).
RATIO_PERCENTILES = (10, 50, 90)
CROWD_PERCENTILE = 90
# Pixels per sampled image kept for the histogram of the plot, and its bins.
HISTOGRAM_PIXELS = 4096
HISTOGRAM_BINS = 64


@dataclass(frozen=True, eq=False)
class DataAnalysis:
    """What `analyze_coco` measured. Pixel values are in the images' own units and channel order
    (`read_image`'s: BGR for colour); instances are the non-crowd annotations, as Detectron2 trains on."""

    json_file: str
    image_root: str
    file_names: tuple[str, ...]
    image_sizes: np.ndarray  # (images, 2) int: height, width, from the JSON
    box_sizes: np.ndarray  # (instances, 2) float: width, height of each instance's box
    box_images: np.ndarray  # (instances,) int: index into file_names of each box's image
    instances_per_image: np.ndarray  # (images,) int
    class_counts: dict[str, int]  # instances per category name, in category-id order (Detectron2's)
    mask_format: str  # "polygon", or "bitmask" when any instance mask is RLE
    channels: int
    dtype: str
    pixel_mean: tuple[float, ...]  # per channel
    pixel_std: tuple[float, ...]
    pixel_min: tuple[float, ...]
    pixel_max: tuple[float, ...]
    pixel_histogram: np.ndarray  # (channels, HISTOGRAM_BINS) counts of a subsample of the pixels
    pixel_bin_edges: np.ndarray  # (HISTOGRAM_BINS + 1,)
    sampled_files: tuple[str, ...]
    num_crowd: int = 0
    num_left_out: int = 0  # annotations of bad entries (as check-data finds them) left out
    seed: int = 0

    @property
    def num_images(self) -> int:
        return len(self.file_names)

    @property
    def num_instances(self) -> int:
        return len(self.box_sizes)

    @property
    def num_sampled(self) -> int:
        return len(self.sampled_files)

    @property
    def box_sides(self) -> np.ndarray:
        """sqrt(width * height) of each instance box, in the image's own pixels."""
        return np.sqrt(self.box_sizes[:, 0] * self.box_sizes[:, 1])

    @property
    def box_ratios(self) -> np.ndarray:
        """height / width of each instance box (Detectron2's aspect ratio)."""
        return self.box_sizes[:, 1] / self.box_sizes[:, 0]

    @property
    def channel_names(self) -> tuple[str, ...]:
        if self.channels == 1:
            return ("gray",)
        if self.channels in (3, 4):
            return ("B", "G", "R", "A")[: self.channels]
        return tuple(f"ch{index}" for index in range(self.channels))

    def summary(self) -> list[tuple[str, str]]:
        """(statistic, value) rows: what `maskinit analyze-data` prints."""
        heights, widths = self.image_sizes[:, 0], self.image_sizes[:, 1]
        counts = self.instances_per_image
        rows = [
            ("images", f"{self.num_images}"),
            ("image height (min / median / max)", _spread(heights)),
            ("image width (min / median / max)", _spread(widths)),
            (
                "instances",
                f"{self.num_instances} (+{self.num_crowd} crowd)" if self.num_crowd else f"{self.num_instances}",
            ),
        ]
        if self.num_left_out:
            rows.append(("left out (bad annotations, see check-data)", f"{self.num_left_out}"))
        if self.num_instances:
            sides, ratios = self.box_sides, self.box_ratios
            rows += [
                (
                    "box side sqrt(w*h) (p2 / p5 / median / p98)",
                    " / ".join(f"{v:.1f}" for v in np.percentile(sides, (2, 5, 50, 98))),
                ),
                (
                    "box height/width (p10 / median / p90)",
                    " / ".join(f"{v:.2f}" for v in np.percentile(ratios, RATIO_PERCENTILES)),
                ),
            ]
        most = int(np.argmax(counts))
        rows += [
            (
                "instances per image (min / median / p90 / max)",
                f"{counts.min()} / {np.median(counts):g} / {np.percentile(counts, CROWD_PERCENTILE):g} / "
                f"{counts.max()} ({self.file_names[most]})",
            ),
            ("images without instances", f"{int((counts == 0).sum())}"),
            ("classes", f"{len(self.class_counts)}: {_balance(self.class_counts)}"),
            ("mask format", self.mask_format),
            (
                "image kind",
                f"{self.channels} channel{'s' if self.channels > 1 else ''} ({'/'.join(self.channel_names)}), "
                f"{self.dtype}",
            ),
            (
                f"pixel mean ({self.num_sampled} of {self.num_images} images)",
                _per_channel(self.channel_names, self.pixel_mean),
            ),
            ("pixel std", _per_channel(self.channel_names, self.pixel_std)),
            (
                "pixel min / max",
                _per_channel(self.channel_names, [f"{a:g}..{b:g}" for a, b in zip(self.pixel_min, self.pixel_max)]),
            ),
        ]
        return rows

    def to_dict(self) -> dict:
        """The statistics as plain JSON values (percentiles, not the per-instance arrays)."""
        sides, ratios, counts = self.box_sides, self.box_ratios, self.instances_per_image
        result = {
            "json_file": self.json_file,
            "image_root": self.image_root,
            "images": self.num_images,
            "instances": self.num_instances,
            "crowd": self.num_crowd,
            "left_out": self.num_left_out,
            "image_height": _quantiles(self.image_sizes[:, 0]),
            "image_width": _quantiles(self.image_sizes[:, 1]),
            "box_side": _quantiles(sides),
            "box_height_over_width": _quantiles(ratios),
            "instances_per_image": {**_quantiles(counts), "largest_image": self.file_names[int(np.argmax(counts))]},
            "class_counts": dict(self.class_counts),
            "mask_format": self.mask_format,
            "channels": self.channels,
            "channel_names": list(self.channel_names),
            "dtype": self.dtype,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "pixel_min": list(self.pixel_min),
            "pixel_max": list(self.pixel_max),
            "pixel_histogram": {"bin_edges": self.pixel_bin_edges.tolist(), "counts": self.pixel_histogram.tolist()},
            "sampled_images": list(self.sampled_files),
            "seed": self.seed,
        }
        return result


def _quantiles(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    points = dict(
        zip(
            ("min", "p2", "p5", "p10", "median", "p90", "p98", "max"),
            np.percentile(values, (0, 2, 5, 10, 50, 90, 98, 100)).tolist(),
        )
    )
    return {key: round(value, 4) for key, value in points.items()}


def _spread(values: np.ndarray) -> str:
    return f"{values.min():g} / {np.median(values):g} / {values.max():g}"


def _per_channel(names: Sequence[str], values: Sequence) -> str:
    return ", ".join(
        f"{name} {value if isinstance(value, str) else f'{value:.4g}'}" for name, value in zip(names, values)
    )


def _balance(class_counts: dict[str, int]) -> str:
    ranked = sorted(class_counts.items(), key=lambda item: -item[1])
    if len(ranked) <= 6:
        return ", ".join(f"{name} {count}" for name, count in ranked)
    head = ", ".join(f"{name} {count}" for name, count in ranked[:3])
    tail = ", ".join(f"{name} {count}" for name, count in ranked[-3:])
    return f"most {head}; least {tail}"


def _significant(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


# ---------------------------------------------------------------------------------------------
# Measuring


def _load_coco(json_file: Path) -> tuple[dict, int]:
    """The parsed JSON without the entries check-data calls bad (what training with --skip-bad sees),
    and how many annotations that left out; fatal problems raise."""
    from .validate import DataReport, check_coco_data, clean_coco_data, read_coco_file

    coco = read_coco_file(json_file)
    if isinstance(coco, DataReport):
        raise MaskinitError(f"{json_file}: {coco.fatal[0].summary()}")
    report = check_coco_data(coco, check_images=False, source=str(json_file))
    if report.fatal:
        raise MaskinitError(f"{json_file}: " + "; ".join(problem.summary() for problem in report.fatal))
    if report.fixable:
        coco = clean_coco_data(coco, report)
    if not coco["images"]:
        raise MaskinitError(f"{json_file}: no usable image entries (maskinit check-data lists the problems)")
    return coco, report.annotations_dropped


def _pixel_statistics(paths: Sequence[Path], seed: int) -> dict:
    """Mean and std per channel over every pixel of the images (each image's own mean and variance,
    combined exactly), min and max, and a histogram of a random subsample of the pixels."""
    rng = np.random.default_rng(seed)
    first_kind = first_path = None
    sizes, means, variances, minima, maxima, subsample = [], [], [], [], [], []
    for path in paths:
        array = read_image(path)
        kind = image_kind(array)
        if first_kind is None:
            first_kind, first_path = kind, path
        elif kind != first_kind:
            raise MaskinitError(
                f"images of different kinds: {first_path} is {describe_kind(first_kind)}, {path} is "
                f"{describe_kind(kind)}; one model takes one kind of image (convert them to one)"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise MaskinitError(f"image {path} has NaN or infinite pixels")
        # channels first and contiguous: numpy reduces a long contiguous row 20x faster than a strided column
        planes = np.ascontiguousarray(np.moveaxis(array, 2, 0)).reshape(array.shape[2], -1)
        sizes.append(planes.shape[1])
        means.append(planes.mean(axis=1, dtype=np.float64))
        variances.append(planes.var(axis=1, dtype=np.float64))
        minima.append(planes.min(axis=1).astype(np.float64))
        maxima.append(planes.max(axis=1).astype(np.float64))
        subsample.append(planes[:, rng.choice(planes.shape[1], min(HISTOGRAM_PIXELS, planes.shape[1]), replace=False)])
    weights = np.asarray(sizes, dtype=np.float64)[:, None] / sum(sizes)
    means, variances = np.asarray(means), np.asarray(variances)
    mean = (weights * means).sum(axis=0)
    # total variance = mean of the images' variances + variance of their means (pixel-weighted)
    variance = (weights * (variances + (means - mean) ** 2)).sum(axis=0)
    low, high = float(np.min(minima)), float(np.max(maxima))
    if np.dtype(first_kind[1]).kind in "ui":  # whole numbers: bins of equal integer width, centred on integers
        width = max(1, math.ceil((high - low + 1) / HISTOGRAM_BINS))
        edges = low - 0.5 + width * np.arange(math.ceil((high - low + 1) / width) + 1)
    else:
        edges = np.linspace(low, high if high > low else low + 1, HISTOGRAM_BINS + 1)
    pixels = np.concatenate(subsample, axis=1).astype(np.float64)
    histogram = np.stack([np.histogram(channel, edges)[0] for channel in pixels])
    return dict(
        channels=first_kind[0],
        dtype=first_kind[1],
        pixel_mean=tuple(mean.tolist()),
        pixel_std=tuple(np.sqrt(variance).tolist()),
        pixel_min=tuple(np.min(minima, axis=0).tolist()),
        pixel_max=tuple(np.max(maxima, axis=0).tolist()),
        pixel_histogram=histogram,
        pixel_bin_edges=edges,
    )


def analyze_coco(
    json_file: str | Path, image_root: str | Path, sample: int | None = DEFAULT_SAMPLE, seed: int = 0
) -> DataAnalysis:
    """Measure a COCO instances training set: sizes and boxes from the JSON, image kind and pixel
    statistics from `sample` images drawn with `seed` (None, or at least the number of images: all).

    Entries `check-data` calls fixable (bad boxes, unknown ids) are left out, as `train --skip-bad`
    leaves them out; fatal problems, unreadable sampled images and a sample mixing image kinds
    (channels or dtypes) raise `MaskinitError`.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    if not image_root.is_dir():
        raise MaskinitError(f"image folder {image_root} for {json_file} not found")
    if sample is not None and sample < 1:
        raise MaskinitError(f"the pixel sample needs at least 1 image, got {sample}")
    coco, left_out = _load_coco(json_file)
    images = coco["images"]
    index = {image["id"]: position for position, image in enumerate(images)}
    names = {category["id"]: str(category["name"]) for category in coco["categories"]}
    category_order = sorted(names)  # Detectron2's contiguous ids follow the sorted category ids
    class_counts = dict.fromkeys((names[c] for c in category_order), 0)
    boxes, box_images, crowd, rle = [], [], 0, False
    for annotation in coco["annotations"]:
        if annotation.get("iscrowd", 0):
            crowd += 1
            continue
        boxes.append(annotation["bbox"][2:4])
        box_images.append(index[annotation["image_id"]])
        class_counts[names[annotation["category_id"]]] += 1
        rle = rle or isinstance(annotation["segmentation"], dict)
    box_images = np.asarray(box_images, dtype=np.int64)
    count = len(images) if sample is None else min(sample, len(images))
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    sampled = tuple(str(images[i]["file_name"]) for i in chosen)
    return DataAnalysis(
        json_file=str(json_file),
        image_root=str(image_root),
        file_names=tuple(str(image["file_name"]) for image in images),
        image_sizes=np.array([[int(image["height"]), int(image["width"])] for image in images], dtype=np.int64),
        box_sizes=np.asarray(boxes, dtype=np.float64).reshape(-1, 2),
        box_images=box_images,
        instances_per_image=np.bincount(box_images, minlength=len(images)),
        class_counts=class_counts,
        mask_format="bitmask" if rle else "polygon",
        sampled_files=sampled,
        num_crowd=crowd,
        num_left_out=left_out,
        seed=seed,
        **_pixel_statistics([image_root / name for name in sampled], seed),
    )


# ---------------------------------------------------------------------------------------------
# The data at an input size


def resize_factors(analysis: DataAnalysis, min_size: float, max_size: float) -> np.ndarray:
    """Per image, the factor Detectron2's ResizeShortestEdge(min_size, max_size) scales it by (min_size 0: none)."""
    if not min_size:
        return np.ones(analysis.num_images)
    shorter, longer = analysis.image_sizes.min(axis=1), analysis.image_sizes.max(axis=1)
    return np.minimum(min_size / shorter, max_size / longer)


def scaled_box_sides(analysis: DataAnalysis, min_size: float, max_size: float) -> np.ndarray:
    """sqrt(w*h) of each instance box as the model sees it at this test input size."""
    return analysis.box_sides * resize_factors(analysis, min_size, max_size)[analysis.box_images]


# ---------------------------------------------------------------------------------------------
# Output


def write_analysis_json(
    path: str | Path, analysis: DataAnalysis, rows: Iterable[tuple] = (), fit: dict | None = None
) -> Path:
    """The statistics and the fitted keys (`rows`: key, preset value, fitted value, reason) as JSON;
    `fit`: the fit's mode and cost (`FitReport.to_dict`)."""
    from ..atomic import write_atomically

    payload = {
        "statistics": analysis.to_dict(),
        "summary": [{"statistic": name, "value": value} for name, value in analysis.summary()],
        "fits": [{"key": key, "preset": old, "value": new, "reason": reason} for key, old, new, reason in rows],
        "fit": fit or {},
    }
    path = Path(path)
    if path.is_dir():
        raise MaskinitError(f"cannot write {path}: it is a directory")
    try:
        return write_atomically(path, json.dumps(payload, indent=2) + "\n")
    except OSError as error:
        raise MaskinitError(f"cannot write {path}: {error.strerror}") from error


def plot_analysis(path: str | Path, analysis: DataAnalysis, cfg=None, fitted: dict | None = None) -> Path:
    """A PNG of image sizes, box sides against the anchors (the config's and the fitted ones, each at
    its own test input size), box aspect ratios, instances per image, class balance and pixel values."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fitted = fitted or {}
    figure = Figure(figsize=(18, 10), tight_layout=True)
    FigureCanvasAgg(figure)
    (sizes, boxes, ratios), (counts, classes, pixels) = figure.subplots(2, 3)

    shapes, repeats = np.unique(analysis.image_sizes, axis=0, return_counts=True)
    sizes.scatter(shapes[:, 1], shapes[:, 0], s=12 * np.sqrt(repeats), alpha=0.5)
    sizes.set(
        title=f"image sizes ({analysis.num_images} images, {len(shapes)} distinct; area ~ count)",
        xlabel="width (px)",
        ylabel="height (px)",
    )

    settings = []
    if cfg is not None:
        settings.append(
            (
                "config",
                "tab:gray",
                "--",
                config_get(cfg, "INPUT.MIN_SIZE_TEST"),
                config_get(cfg, "INPUT.MAX_SIZE_TEST"),
                config_get(cfg, "MODEL.ANCHOR_GENERATOR.SIZES"),
                config_get(cfg, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"),
            )
        )
        if fitted:
            settings.append(
                (
                    "fitted",
                    "tab:blue",
                    "-",
                    fitted.get("INPUT.MIN_SIZE_TEST", settings[0][3]),
                    fitted.get("INPUT.MAX_SIZE_TEST", settings[0][4]),
                    fitted.get("MODEL.ANCHOR_GENERATOR.SIZES", settings[0][5]),
                    fitted.get("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", settings[0][6]),
                )
            )
    if analysis.num_instances:
        if not settings:
            sides = analysis.box_sides
            bins = np.geomspace(max(sides.min(), 0.5), sides.max() * 1.01, 40)
            boxes.hist(sides, bins=bins, color="tab:blue", alpha=0.6, label="box sides (image pixels)")
        for name, colour, style, min_size, max_size, anchors, aspect in settings:
            sides = scaled_box_sides(analysis, min_size, max_size) if min_size else analysis.box_sides
            bins = np.geomspace(max(sides.min(), 0.5), sides.max() * 1.01, 40)
            boxes.hist(sides, bins=bins, color=colour, alpha=0.45, label=f"boxes at {name} size {min_size}/{max_size}")
            for index, size in enumerate(value for level in anchors for value in level):
                boxes.axvline(size, color=colour, linestyle=style, label=f"{name} anchors" if index == 0 else None)
            for index, ratio in enumerate(value for level in aspect for value in level):
                ratios.axvline(
                    ratio, color=colour, linestyle=style, label=f"{name} aspect ratios" if index == 0 else None
                )
        boxes.set_xscale("log")
        ratio_values = analysis.box_ratios
        ratios.hist(
            ratio_values,
            bins=np.geomspace(ratio_values.min(), ratio_values.max() * 1.01, 40),
            color="tab:green",
            alpha=0.6,
        )
        ratios.set_xscale("log")
        boxes.legend(fontsize="small")
        if settings:
            ratios.legend(fontsize="small")
    boxes.set(
        title=f"box sides sqrt(w*h) ({analysis.num_instances} instances)", xlabel="px (input scale)", ylabel="boxes"
    )
    ratios.set(title="box height / width", xlabel="height / width", ylabel="boxes")

    per_image = analysis.instances_per_image
    counts.hist(
        per_image, bins=np.arange(per_image.max() + 2) - 0.5 if per_image.max() < 60 else 40, color="tab:orange"
    )
    counts.set(title="instances per image", xlabel="instances", ylabel="images")

    ranked = sorted(analysis.class_counts.items(), key=lambda item: -item[1])
    shown = ranked[:40]
    classes.barh(range(len(shown)), [count for _, count in shown], color="tab:purple")
    classes.set_yticks(
        range(len(shown)), [name for name, _ in shown], fontsize="small" if len(shown) <= 20 else "x-small"
    )
    classes.invert_yaxis()
    more = f", {len(ranked) - len(shown)} more not shown" if len(ranked) > len(shown) else ""
    classes.set(title=f"class balance ({len(ranked)} classes{more})", xlabel="instances")

    centres = (analysis.pixel_bin_edges[:-1] + analysis.pixel_bin_edges[1:]) / 2
    colours = {"B": "tab:blue", "G": "tab:green", "R": "tab:red", "gray": "black", "A": "tab:gray"}
    for name, histogram in zip(analysis.channel_names, analysis.pixel_histogram):
        pixels.plot(centres, histogram, label=name, color=colours.get(name))
    pixels.set(
        title=f"pixel values ({analysis.dtype}, {analysis.num_sampled} sampled images)",
        xlabel="value",
        ylabel="pixels (subsample)",
    )
    pixels.legend(fontsize="small")

    from ..curves import save_figure

    return save_figure(figure, path, dpi=80)
