"""Dotted config keys (`MODEL.PIXEL_MEAN`) on any yacs/Detectron2 `CfgNode`: the one place a key is looked
up or set by name. Imports nothing (no torch, no Detectron2), so the data statistics can use it."""

from __future__ import annotations

from collections.abc import Mapping

MISSING = object()


def get_key(cfg, key: str, default=None):
    """The value of a dotted key in a CfgNode; `default` when it has no such key."""
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return default
        node = node[part]
    return node


def flatten(node, prefix: str = "") -> dict:
    """Every leaf of a config as {dotted key: value}."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def has_key(cfg, key: str) -> bool:
    return get_key(cfg, key, MISSING) is not MISSING


def with_keys(cfg, values: Mapping[str, object]):
    """A copy of `cfg` with each dotted key of `values` set (the copy frozen if `cfg` was); `cfg` is not changed."""
    result = cfg.clone()
    frozen = result.is_frozen()
    result.defrost()
    for key, value in values.items():
        *path, leaf = key.split(".")
        node = result
        for part in path:
            node = node[part]
        node[leaf] = value
    if frozen:
        result.freeze()
    return result
