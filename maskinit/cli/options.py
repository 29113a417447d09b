"""Options several commands share, declared once (help text, flags, `Annotated` aliases), and the
helpers that read them: old option names, the data options, a command taking another's options."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import MaskinitError
from ..printing import print_data_lines

FIT_HELP = (
    "Fit the config to your training data: safe (default: pixel statistics, anchors, counts; a larger input or "
    "RoI batch only within 1.2x the preset's s/iter), full (the input and RoIs the objects need, at any cost), off."
)


PRESET_HELP = "Named starting point under configs/ (r50-fpn, tiny, ...)."
RECIPE_HELP = "Published from-scratch recipe under configs/recipes/, in place of --preset (see `maskinit list`)."
NORM_HELP = "Norm variant NAME[:key=value] (GN, GNWS, SyncBN, BN, naiveSyncBN, none)."
INIT_HELP = "Initializer NAME[:key=value] (kaiming_normal, xavier_uniform, c2, ...)."
PLUGIN_HELP = "Python module (or .py file) registering initializers/norms; repeatable."
OVERRIDES_HELP = "Trailing KEY VALUE pairs overriding config keys, as Detectron2's opts."
# Commands with trailing KEY VALUE overrides: a negative value (`SOLVER.MAX_ITER -1`) is an argument, not an option.
OVERRIDES_CONTEXT = {"ignore_unknown_options": True}
DATA_HELP = (
    "Your annotations: a folder (or data.yaml) in any format maskinit reads: COCO, label images, one mask per "
    "instance, YOLO-seg, LabelMe, VIA, CVAT, Pascal VOC; the format is detected (docs/data-formats.md)."
)
FORMAT_HELP = (
    "The format of --data, when detection cannot tell: coco, label-image, instance-masks, yolo, labelme, via, cvat, "
    "voc."
)
VAL_FRACTION_HELP = (
    "Share of the images of a --data source with one split held back for validation (seeded, by image; "
    "default 0.2; 0: none); a source with a val split keeps it."
)
SPLIT_SEED_HELP = "Seed of the --val-fraction split (the same seed holds back the same images)."
# Options several commands share, declared once (typer reads the help and the flag from the annotation).
Overrides = Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP)]
Preset = Annotated[str | None, typer.Option(help=PRESET_HELP)]
Norm = Annotated[str | None, typer.Option(help=NORM_HELP)]
Init = Annotated[str | None, typer.Option(help=INIT_HELP)]
Plugins = Annotated[list[str] | None, typer.Option(help=PLUGIN_HELP)]
DataFormat = Annotated[str | None, typer.Option("--format", help=FORMAT_HELP)]
SplitSeed = Annotated[int, typer.Option("--split-seed", help=SPLIT_SEED_HELP)]
IMS_PER_BATCH_HELP = (
    "Total batch; iterations rescale against it, the LR linearly for SGD and by the square root for Adam/AdamW."
)


def renamed(value, old_value, name: str, old_name: str, required: bool = False):
    """The value given under an option's name or under its old, hidden one (not two different ones)."""
    if value is not None and old_value is not None and value != old_value:
        raise MaskinitError(f"{old_name} is the old name of {name}: give it once")
    value = old_value if value is None else value
    if value is None and required:
        raise MaskinitError(f"{name} is required")
    return value


def data_options(data=None, format=None, val_fraction=None, split_seed=0, **paths):
    """The data options of a command: `--data` (with --format, --val-fraction, --split-seed) or the COCO
    paths and registered names; `--data` and the others exclude each other."""
    from ..run_options import DataOptions

    given = {name: value for name, value in paths.items() if value}
    if data is None:
        if format is not None:
            raise MaskinitError("--format names the format of --data: give --data PATH")
        if val_fraction is not None:
            raise MaskinitError("--val-fraction splits a --data source with one split: give --data PATH")
        return DataOptions(**{name: str(value) for name, value in given.items()})
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise MaskinitError(f"--data and {flags} exclude each other: give the data one way")
    return DataOptions(source=str(data), format=format, val_fraction=val_fraction, split_seed=split_seed)


def resolved_data(data):
    """`data` with a --data source converted to COCO files (the format and the split printed)."""
    from ..data.convert import resolve_source

    resolved = resolve_source(data)
    print_data_lines(resolved.notes)
    return resolved.data


def shares_options(source, exclude=()):
    """Give a command the options of `source` (another command) that it does not declare itself, but
    `exclude`: the shared ones arrive in its `**kwargs`, and are declared (help, defaults) once."""
    import inspect

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        mine = [p for p in own.parameters.values() if p.kind != p.VAR_KEYWORD]
        shared = [
            p
            for name, p in inspect.signature(source, eval_str=True).parameters.items()
            if name not in own.parameters and name not in exclude
        ]
        command.__signature__ = own.replace(parameters=mine + shared)
        return command

    return decorate
