"""Plugins: a user module registering an initializer and a norm, used through the CLI."""

from __future__ import annotations

import json
import math
import sys

import pytest
import yaml
from torch import nn
from typer.testing import CliRunner

from maskinit import build_model, load_config
from maskinit import plugins as plugins_module
from maskinit.cli import app
from maskinit.initializers import INITIALIZER_REGISTRY
from maskinit.norms import NORM_REGISTRY

MODULE = "maskinit_test_plugin"
PLUGIN = '''
import math

from torch import nn

from maskinit.initializers import register_initializer
from maskinit.norms import GroupNormVariant, register_norm


@register_initializer("my_init")
def my_init(weight, scale: float = 0.5):
    """Test plugin: normal with std scale/sqrt(fan_in)."""
    nn.init.normal_(weight, std=scale / math.sqrt(weight[0].numel()))


@register_norm("MyGN")
class MyGN(GroupNormVariant):
    description = "test plugin: GroupNorm with 8 groups"

    def __init__(self, groups: int = 8):
        super().__init__(groups)
'''
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin file; afterwards the registries, sys.modules and sys.path are as before."""
    folder = tmp_path_factory.mktemp("plugin")
    path = folder / f"{MODULE}.py"
    path.write_text(PLUGIN)
    saved_path = list(sys.path)
    yield path
    INITIALIZER_REGISTRY._obj_map.pop("my_init", None)
    NORM_REGISTRY._obj_map.pop("MyGN", None)
    sys.modules.pop(MODULE, None)
    plugins_module._loaded.difference_update({str(path), MODULE})
    sys.path[:] = saved_path


def test_export_config_with_a_plugin_file(plugin):
    result = invoke("export-config", "--preset", "tiny", "--plugin", str(plugin), "--init", "my_init", "--norm", "MyGN")
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["MASKINIT"]["INIT"] == "my_init"
    assert cfg["MASKINIT"]["NORM"] == "MyGN"
    assert cfg["MASKINIT"]["PLUGINS"] == [str(plugin)]
    assert cfg["MODEL"]["RESNETS"]["NORM"] == "GN"  # the stock norm Detectron2 builds before convert


def test_export_config_with_a_plugin_module_on_sys_path(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin.parent))
    result = invoke("export-config", "--preset", "tiny", "--plugin", MODULE, "--init", "my_init:scale=0.25")
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["MASKINIT"]["INIT"] == "my_init:scale=0.25"
    assert cfg["MASKINIT"]["PLUGINS"] == [MODULE]


@pytest.mark.slow
def test_plugin_reaches_the_built_model(plugin):
    model = build_model(load_config(preset="tiny", init="my_init", norm="MyGN", plugins=[str(plugin)]))
    groups = {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {8}
    weight = model.backbone.bottom_up.res3[0].conv1.weight
    assert weight.std().item() == pytest.approx(0.5 / math.sqrt(weight[0].numel()), rel=0.05)
    report = {line.name: line.init for line in model.maskinit_init_report}
    assert report["backbone.bottom_up.res3.0.conv1.weight"] == "my_init"


@pytest.mark.slow
def test_inspect_init_with_a_plugin(plugin, tmp_path):
    out = tmp_path / "inspect.json"
    result = invoke("inspect-init", "--preset", "tiny", "--plugin", str(plugin), "--init", "my_init", "--norm", "MyGN",
                    "--json", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["verdict"] == "ok"
    inits = {p["name"]: p["init"] for p in payload["params"]}
    assert inits["backbone.fpn_lateral2.weight"] == "my_init"


def test_list_shows_plugin_entries(plugin):
    result = invoke("list", "--plugin", str(plugin))
    assert result.exit_code == 0, result.output
    assert "my_init" in result.stdout and "MyGN" in result.stdout
    assert "GroupNorm with 8 groups" in result.stdout


@pytest.mark.parametrize(
    "source,message",
    [
        (None, "not found"),
        ("raise RuntimeError('boom')\n", "failed on import: RuntimeError: boom"),
        (
            "from maskinit.initializers import register_initializer\n"
            "register_initializer('kaiming_normal')(lambda weight: None)\n",
            "already registered",
        ),
    ],
    ids=["missing", "raises", "duplicate-name"],
)
def test_bad_plugins_exit_2_with_one_line(tmp_path, source, message):
    path = tmp_path / "bad_maskinit_plugin.py"
    if source is not None:
        path.write_text(source)
    saved_path = list(sys.path)
    try:
        result = invoke("export-config", "--preset", "tiny", "--plugin", str(path))
    finally:
        sys.path[:] = saved_path
        sys.modules.pop(path.stem, None)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_unknown_plugin_module():
    result = invoke("export-config", "--preset", "tiny", "--plugin", "no_such_maskinit_plugin")
    assert result.exit_code == 2
    assert "cannot be imported" in result.stderr
