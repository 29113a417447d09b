"""The named configs shipped under `configs/`: presets (`--preset NAME`) and published from-scratch
recipes (`--recipe NAME`). `config.build_config` merges them; nothing here builds a config.

A preset is a YAML under `configs/` (`_BASE_` inheritance over `Base-Scratch.yaml`). Each recipe is
a YAML under `configs/recipes/`, a transcription of a published config into Detectron2 YAML keys
plus `cfg.MASKINIT`, with its source and published COCO val2017 AP in the header. A recipe replaces
the preset stage of `build_config`; it is merged on Detectron2's default base
(`COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`, i.e. `Base-RCNN-FPN.yaml`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .errors import MaskinitError


def _configs_dir() -> Path:
    """configs/ of the checkout (editable install), else the copy a wheel ships as maskinit.configs."""
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    from importlib.resources import files

    return Path(str(files("maskinit.configs")))


CONFIGS_DIR = _configs_dir()
RECIPES_DIR = CONFIGS_DIR / "recipes"

_D2 = "detectron2 configs/"
_D2_SCRATCH = _D2 + "Misc/scratch_mask_rcnn_R_50_FPN_{}.yaml"
_D2_LSJ = _D2 + "new_baselines/mask_rcnn_R_50_FPN_{}_LSJ.py"


class Recipe(NamedTuple):
    file: str  # under configs/recipes/
    source: str
    box_ap: float  # published COCO val2017 box AP
    mask_ap: float  # published COCO val2017 mask AP
    description: str


RECIPES: dict[str, Recipe] = {
    "d2-scratch-gn-3x": Recipe(
        "d2-scratch-gn-3x.yaml", _D2_SCRATCH.format("3x_gn"), 39.9, 36.6,
        "R50-FPN, GN everywhere, 4conv1fc box head, 3x at batch 16, Detectron2 init",
    ),
    "d2-scratch-gn-9x": Recipe(
        "d2-scratch-gn-9x.yaml", _D2_SCRATCH.format("9x_gn"), 43.7, 39.6,
        "R50-FPN, GN everywhere, 4conv1fc box head, 9x at batch 64 (LR 0.08)",
    ),
    "d2-scratch-syncbn-9x": Recipe(
        "d2-scratch-syncbn-9x.yaml", _D2_SCRATCH.format("9x_syncbn"), 43.6, 39.3,
        "R50-FPN, SyncBN everywhere, 4conv1fc box head, 9x at batch 64, precise BN",
    ),
    "d2-lsj-100ep": Recipe(
        "d2-lsj-100ep.yaml", _D2_LSJ.format("100ep"), 44.6, 40.3,
        "R50-FPN SyncBN, large-scale jitter 1024, batch 64, LR 0.1, AMP, 100 epochs",
    ),
    "d2-lsj-200ep": Recipe(
        "d2-lsj-200ep.yaml", _D2_LSJ.format("200ep"), 46.3, 41.7,
        "d2-lsj-100ep trained twice as long (200 epochs)",
    ),
    "d2-lsj-400ep": Recipe(
        "d2-lsj-400ep.yaml", _D2_LSJ.format("400ep"), 47.4, 42.5,
        "d2-lsj-100ep trained four times as long (400 epochs)",
    ),
    "mmdet-gn-all-scratch-6x": Recipe(
        "mmdet-gn-all-scratch-6x.yaml", "mmdetection configs/scratch/mask_rcnn_r50_fpn_gn-all_scratch_6x_coco.py",
        41.2, 37.4,
        "mmdetection's R50-FPN GN-all from scratch, 73 epochs at batch 16, no weight decay on norms",
    ),
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def recipe_file(name: str) -> Path:
    """The YAML of a recipe; an unknown name is a MaskinitError listing the known ones."""
    if name not in RECIPES:
        raise MaskinitError(f"unknown recipe {name!r} (known: {', '.join(list_recipes())})")
    return RECIPES_DIR / RECIPES[name].file


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml") if not p.stem.startswith("Base"))


def preset_file(name: str) -> Path:
    """The YAML of a preset; an unknown name is a MaskinitError listing the known ones."""
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file() or name.startswith("Base"):
        raise MaskinitError(f"unknown preset {name!r} (known: {', '.join(list_presets())})")
    return path
