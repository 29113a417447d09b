"""A built config as YAML: whole (`config.yaml` of a run, `export-config`) or `--plain`, with the stock
Detectron2 keys only (for stock Detectron2 tools), naming the maskinit settings it had to drop."""

from __future__ import annotations

from pathlib import Path

import yaml
from detectron2.config import CfgNode

from ..atomic import write_atomically
from ..errors import MaskinitError
from .build import load_config


class _NoAliasDumper(yaml.SafeDumper):
    """YAML without &anchors: Detectron2 shares list objects between keys, a reader should not see that."""

    def ignore_aliases(self, data):
        return True


def dump_yaml(cfg: CfgNode) -> str:
    return yaml.dump(yaml.safe_load(cfg.dump()), Dumper=_NoAliasDumper, default_flow_style=False)


def to_yaml(cfg: CfgNode, plain: bool = False) -> str:
    """The config as YAML; `plain` keeps only keys stock Detectron2 knows."""
    from ..norms import build_norm_variant

    if not plain:
        return dump_yaml(cfg)
    variant = build_norm_variant(cfg.MASKINIT.NORM)
    if not variant.plain_equivalent:
        raise MaskinitError(
            f"--plain cannot express norm {cfg.MASKINIT.NORM}: stock Detectron2 has no such norm (use GN, SyncBN or BN)"
        )
    plain_cfg = cfg.clone()
    plain_cfg.defrost()
    plain_cfg.pop("MASKINIT")
    header = (
        "# Exported by maskinit --plain: stock Detectron2 keys only. Stock Detectron2 initializes with its own\n"
        f"# c2 scheme; maskinit's initializer ({cfg.MASKINIT.INIT}) applies only when maskinit builds the model.\n"
    )
    dropped = maskinit_only_settings(cfg)
    if dropped:
        header += "# Dropped, stock Detectron2 has no such setting (its trainer uses SGD): " + ", ".join(dropped) + "\n"
    return header + dump_yaml(plain_cfg)


def maskinit_only_settings(cfg: CfgNode) -> list[str]:
    """`KEY=value` for each MASKINIT training/model setting that differs from stock behaviour."""
    neutral = {
        "OPTIMIZER": "sgd",
        "LR_SCHEDULE": "step",
        "RPN_NORM": False,
        "PRIOR_PROB": 0.0,
        "ZERO_INIT_RESIDUAL": False,
    }
    dropped = [f"MASKINIT.{key}={cfg.MASKINIT[key]}" for key, value in neutral.items() if cfg.MASKINIT[key] != value]
    if cfg.MASKINIT.AUGMENT.NAME != "default":
        dropped.append(f"MASKINIT.AUGMENT.NAME={cfg.MASKINIT.AUGMENT.NAME}")
    if cfg.MASKINIT.AUGMENT.COPY_PASTE.PROB > 0:
        dropped.append(f"MASKINIT.AUGMENT.COPY_PASTE.PROB={cfg.MASKINIT.AUGMENT.COPY_PASTE.PROB}")
    if cfg.MASKINIT.EMA.ENABLED:
        dropped.append("MASKINIT.EMA.ENABLED=True")
    return dropped


def export_config(output: str | Path | None = None, *, plain: bool = False, **options) -> str:
    """Build a from-scratch config and return it as YAML; write it to `output` when given."""
    text = to_yaml(load_config(**options), plain=plain)
    if output is not None:
        output = Path(output)
        if output.is_dir():
            raise MaskinitError(f"output {output} is a directory")
        try:
            write_atomically(output, text)
        except OSError as error:
            raise MaskinitError(f"cannot write {output}: {error.strerror}") from error
    return text
