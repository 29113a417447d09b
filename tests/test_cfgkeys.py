"""maskinit.cfgkeys: dotted keys on a real config, looked up, listed and set on a copy."""

from __future__ import annotations

import pytest

from maskinit.cfgkeys import MISSING, flatten, get_key, has_key, with_keys
from maskinit.config import load_config


@pytest.fixture(scope="module")
def cfg():
    return load_config(preset="tiny")


def test_get_key_and_has_key(cfg):
    assert get_key(cfg, "MODEL.ROI_HEADS.NUM_CLASSES") == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    assert get_key(cfg, "MASKINIT.PLATEAU") is cfg.MASKINIT.PLATEAU  # an inner node
    assert get_key(cfg, "MODEL.NO_SUCH_KEY") is None and get_key(cfg, "MODEL.NO_SUCH_KEY", MISSING) is MISSING
    assert get_key(cfg, "SOLVER.BASE_LR.DEEPER", 0) == 0  # below a leaf: no such key
    assert has_key(cfg, "SOLVER.BASE_LR") and not has_key(cfg, "SOLVER.BASE")


def test_flatten_lists_every_leaf_once(cfg):
    flat = flatten(cfg)
    assert flat["MASKINIT.PLATEAU.METRIC"] == cfg.MASKINIT.PLATEAU.METRIC
    assert "MASKINIT.PLATEAU" not in flat  # inner nodes are not leaves
    assert all(get_key(cfg, key) == value for key, value in flat.items())


def test_with_keys_sets_a_copy(cfg):
    frozen = cfg.clone()
    frozen.freeze()
    changed = with_keys(frozen, {"SOLVER.BASE_LR": 0.5, "MASKINIT.PLATEAU.PATIENCE": 7})
    assert (changed.SOLVER.BASE_LR, changed.MASKINIT.PLATEAU.PATIENCE) == (0.5, 7)
    assert changed.is_frozen() and frozen.SOLVER.BASE_LR == cfg.SOLVER.BASE_LR  # the original is left alone
