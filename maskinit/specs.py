"""`NAME:key=value[,key=value]` strings: how initializers and norm variants take parameters.

The same text works on the CLI (`--init kaiming_normal:mode=fan_in`) and in `cfg.MASKINIT`.
"""

from __future__ import annotations

import re

import yaml

from .errors import MaskinitError

# YAML 1.1 (PyYAML) reads `1e-3` (no dot) as text; a spec means the number.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# ... and `nan`, `inf` too (YAML spells them `.nan`, `.inf`): parsed as floats, so checks name them.
_NON_FINITE = re.compile(r"[-+]?(nan|inf|infinity)", re.IGNORECASE)


def parse_spec(spec: str, what: str = "spec") -> tuple[str, dict]:
    """Split `NAME:k=v,k=v` into the name and a dict of YAML-typed values."""
    name, _, rest = str(spec).strip().partition(":")
    name = name.strip()
    if not name:
        raise MaskinitError(f"empty {what} name in {spec!r}")
    params: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise MaskinitError(f"malformed {what} parameter {item!r} in {spec!r}: expected key=value")
        try:
            params[key.strip()] = yaml.safe_load(value.strip())
            if _EXPONENT_FLOAT.fullmatch(value.strip()) or _NON_FINITE.fullmatch(value.strip()):
                params[key.strip()] = float(value.strip())
        except yaml.YAMLError:
            params[key.strip()] = value.strip()
    return name, params
