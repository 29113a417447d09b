"""maskinit.specs: `NAME:key=value,...` strings, the one syntax of initializer and norm parameters."""

from __future__ import annotations

import math

import pytest

from maskinit import MaskinitError
from maskinit.specs import parse_spec


@pytest.mark.parametrize(
    "spec,parsed",
    [
        ("kaiming_normal", ("kaiming_normal", {})),
        (" normal : std=1e-3 ", ("normal", {"std": 1e-3})),  # YAML 1.1 reads 1e-3 as text; a spec means the number
        ("GN:groups=16,eps=1.0E-5", ("GN", {"groups": 16, "eps": 1e-5})),
        ("lsuv:base=orthogonal,tol=0.1,iters=10", ("lsuv", {"base": "orthogonal", "tol": 0.1, "iters": 10})),
        ("kaiming_uniform:mode=fan_in,a=0", ("kaiming_uniform", {"mode": "fan_in", "a": 0})),
        ("x:flag=true,none=null,empty=", ("x", {"flag": True, "none": None, "empty": None})),
        ("x:,,a=1,", ("x", {"a": 1})),  # empty items are ignored
    ],
)
def test_values_are_typed_as_yaml_reads_them(spec, parsed):
    assert parse_spec(spec) == parsed


def test_nan_and_inf_are_floats_so_that_checks_can_name_them():
    assert math.isnan(parse_spec("normal:std=nan")[1]["std"])
    assert parse_spec("normal:std=-inf")[1]["std"] == -math.inf
    assert parse_spec("normal:std=Infinity")[1]["std"] == math.inf


def test_a_value_yaml_cannot_parse_stays_text():
    assert parse_spec("x:path=[unclosed")[1] == {"path": "[unclosed"}


@pytest.mark.parametrize(
    "spec,message",
    [
        ("", "empty initializer name in ''"),
        (":std=1", "empty initializer name in ':std=1'"),
        ("normal:std", "malformed initializer parameter 'std' in 'normal:std': expected key=value"),
        ("normal:=1", "malformed initializer parameter '=1'"),
    ],
)
def test_malformed_specs_are_named(spec, message):
    with pytest.raises(MaskinitError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        parse_spec(spec, "initializer")
