"""inspect-init: measurements, the verdict rule, JSON, plot, compare, CLI (its batches: test_batches.py)."""

from __future__ import annotations

import json
import math

import pytest
from test_batches import write_coco
from typer.testing import CliRunner

from maskinit import MaskinitError, build_model, load_config
from maskinit.cli import app
from maskinit.diagnostics import (
    ACTIVATION_FAIL,
    ACTIVATION_WARN,
    UPDATE_HIGH,
    UPDATE_LOW,
    InitInspection,
    StageStats,
    compare,
    inspect_init,
    judge,
    plot,
    split_specs,
)

STAGES = ["stem", "res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6", "rpn", "box_head", "mask_head"]
EXPLODING = ["--norm", "none", "--init", "normal:std=1.0"]
VANISHING = ["--norm", "none", "--init", "normal:std=0.0001"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def tiny(norm=None, init=None):
    return load_config(preset="tiny", norm=norm, init=init)


@pytest.fixture(scope="module")
def default():
    return inspect_init(tiny())


@pytest.fixture(scope="module")
def exploding():
    return inspect_init(tiny("none", "normal:std=1.0"))


@pytest.fixture(scope="module")
def vanishing():
    return inspect_init(tiny("none", "normal:std=0.0001"))


def ratios(result):
    return {row.name: result.relative_std(row) for row in result.stages}


# ------------------------------------------------------------------------------------ measurements


@pytest.mark.slow
def test_default_recipe_is_ok_with_every_stage_measured(default):
    assert default.verdict == "ok" and default.stage is None, default.advice
    assert [row.name for row in default.stages] == STAGES
    assert all(row.finite for row in default.stages)
    assert all(1 / ACTIVATION_WARN < q < ACTIVATION_WARN for q in ratios(default).values())
    measured = [row for row in default.stages if row.name != "p6"]
    assert all(row.grad_norm > 0 and UPDATE_LOW < row.update_ratio < UPDATE_HIGH for row in measured)
    p6 = default.stages[STAGES.index("p6")]  # a max-pool of p5: no parameters of its own
    assert p6.grad_norm is None and p6.update_ratio is None
    assert tiny().MASKINIT.OPTIMIZER == "adamw"
    for row in measured:  # AdamW's first step is lr*sign(grad): far larger than lr*|grad| here
        assert row.update_ratio > default.lr * row.grad_norm / row.weight_norm
    assert default.lr == tiny().SOLVER.BASE_LR
    assert set(default.losses) >= {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}


@pytest.mark.slow
def test_update_size_follows_the_optimizer():
    model_cfg = tiny()
    sgd = inspect_init(load_config(preset="tiny", overrides=["MASKINIT.OPTIMIZER", "sgd"]), lr=0.02)
    for row in (row for row in sgd.stages if row.name != "p6"):
        assert row.update_ratio == pytest.approx(0.02 * row.grad_norm / row.weight_norm)
    adamw = inspect_init(model_cfg, lr=0.02)
    stem = adamw.stages[0]
    stem_params = sum(p.numel() for p in build_model(model_cfg).backbone.bottom_up.stem.parameters())
    # lr * sqrt(entries with a gradient) / |w|: at most lr * sqrt(all entries) / |w|
    assert 0 < stem.update_ratio <= 0.02 * stem_params**0.5 / stem.weight_norm * (1 + 1e-9)


@pytest.mark.slow
def test_large_init_without_norm_explodes_from_the_backbone(exploding):
    assert exploding.verdict == "exploding"
    q = ratios(exploding)
    assert max(q.values()) > ACTIVATION_FAIL
    first_drift = next(name for name in STAGES if q[name] > ACTIVATION_WARN)
    assert exploding.stage == first_drift
    assert exploding.stage in ("stem", "res2")
    assert "too large" in exploding.advice and "--norm GN" in exploding.advice


@pytest.mark.slow
def test_small_init_without_norm_vanishes_from_the_backbone(vanishing):
    assert vanishing.verdict == "vanishing"
    q = ratios(vanishing)
    assert min(q.values()) < 1 / ACTIVATION_FAIL
    assert vanishing.stage == next(name for name in STAGES if q[name] < 1 / ACTIVATION_WARN)
    assert vanishing.stage in ("stem", "res2")
    assert "too small" in vanishing.advice


@pytest.mark.slow
def test_common_initializers_with_gn_are_ok(default):
    specs = ["lsuv", "c2", "kaiming_normal", "xavier_uniform", "orthogonal"]
    results = compare(tiny(), ",".join(specs))
    assert [r.init for r in results] == specs
    assert [r.verdict for r in results] == ["ok"] * len(specs), [r.advice for r in results]
    # Same seed, same batch: the first one is the tiny preset's own init (lsuv), measured again.
    assert results[0].to_json()["stages"] == default.to_json()["stages"]
    c2 = {p["name"]: p["init"] for p in results[1].params}
    assert c2["backbone.bottom_up.res2.0.conv1.weight"] == "c2 (as built)"


@pytest.mark.slow
def test_the_lr_scales_the_update_ratio_and_a_huge_one_explodes(default):
    largest = max((row for row in default.stages if row.update_ratio), key=lambda row: row.update_ratio)
    lr = 4 * UPDATE_HIGH * default.lr / largest.update_ratio
    result = inspect_init(tiny(), lr=lr)
    for before, after in zip(default.stages, result.stages):
        assert after.activation_std == before.activation_std
        if before.update_ratio is not None:
            assert after.update_ratio == pytest.approx(before.update_ratio * lr / default.lr)
    # the stage named is the first one, in depth order, whose update exceeds the limit
    first = next(
        row.name for row in default.stages if row.update_ratio and row.update_ratio * lr / default.lr > UPDATE_HIGH
    )
    assert result.verdict == "exploding" and result.stage == first
    assert "lower the LR" in result.advice


@pytest.mark.slow
def test_diverging_forward_is_exploding_and_json_stays_valid():
    result = inspect_init(tiny("none", "normal:std=10"))
    assert result.verdict == "exploding"
    assert not all(row.finite for row in result.stages) or not all(map(math.isfinite, result.losses.values()))
    payload = result.to_json()
    json.dumps(payload, allow_nan=False)
    broken = [row for row in payload["stages"] if not row["finite"]]
    assert all(row["activation_std"] is None for row in broken)


@pytest.mark.slow
def test_to_json_content(default):
    payload = default.to_json()
    assert {"verdict", "stage", "advice", "stages", "params"} <= set(payload)
    assert [row["name"] for row in payload["stages"]] == STAGES
    for row in payload["stages"]:
        assert {"name", "activation_mean", "activation_std", "grad_norm", "update_ratio"} <= set(row)
    assert payload["params"] and all({"name", "shape", "init", "std"} <= set(p) for p in payload["params"])
    by_name = {p["name"]: p for p in payload["params"]}
    assert by_name["roi_heads.box_predictor.cls_score.weight"]["init"] == "prior normal(std=0.01)"
    assert by_name["backbone.bottom_up.stem.conv1.weight"]["init"] == "lsuv(orthogonal)"
    json.dumps(payload, allow_nan=False)


# ------------------------------------------------------------------------------------ verdict rule


def fake(stds, updates=None, input_std=1.0, losses=None):
    """An inspection with the given activation stds (and update ratios) along a made-up depth."""
    updates = updates or [1e-3] * len(stds)
    rows = [
        StageStats(f"s{i}", 0.0, std, 1.0, 1.0, update, finite=math.isfinite(std))
        for i, (std, update) in enumerate(zip(stds, updates))
    ]
    result = InitInspection("x", "none", 0.1, input_std, losses or {"loss": 1.0}, rows, [])
    judge(result)
    return result


def test_rule_ok_inside_the_bands():
    result = fake([0.5, 2.0, ACTIVATION_FAIL / 2, 1 / (ACTIVATION_FAIL / 2)])
    assert result.verdict == "ok" and result.stage is None


def test_rule_growth_past_the_fail_band_explodes_where_the_drift_starts():
    result = fake([1.0, 3 * ACTIVATION_WARN, 1.0, 3 * ACTIVATION_FAIL])
    assert (result.verdict, result.stage) == ("exploding", "s1")


def test_rule_is_relative_to_the_input_scale():
    assert fake([3 * ACTIVATION_FAIL], input_std=10.0).verdict == "ok"
    assert fake([0.05 / ACTIVATION_FAIL], input_std=0.1).verdict == "vanishing"


def test_rule_shrinking_vanishes():
    result = fake([0.5, 0.5 / ACTIVATION_WARN, 0.5 / ACTIVATION_FAIL])
    assert (result.verdict, result.stage) == ("vanishing", "s1")


def test_rule_non_finite_explodes_first():
    assert fake([1.0, float("inf"), 0.5 / ACTIVATION_FAIL]).verdict == "exploding"
    assert fake([1.0, 1.0], losses={"loss": float("nan")}).verdict == "exploding"


def test_rule_update_size_bounds():
    high = fake([1.0, 1.0], [1e-3, 2 * UPDATE_HIGH])
    assert (high.verdict, high.stage) == ("exploding", "s1")
    assert "lower the LR" in high.advice
    low = fake([1.0, 1.0], [UPDATE_LOW / 2, 1e-3])
    assert (low.verdict, low.stage) == ("vanishing", "s0")
    assert "float32" in low.advice


def test_split_specs_keeps_multi_parameter_specs():
    assert split_specs("kaiming_normal,normal:std=0.01,mean=0.1, c2") == [
        "kaiming_normal",
        "normal:std=0.01,mean=0.1",
        "c2",
    ]
    assert split_specs(["xavier_uniform", "orthogonal,c2"]) == ["xavier_uniform", "orthogonal", "c2"]
    with pytest.raises(MaskinitError):
        split_specs(" , ")


def test_compare_refuses_unknown_initializers_before_running():
    with pytest.raises(MaskinitError, match="unknown initializer 'magic'"):
        compare(tiny(), "kaiming_normal,magic")


@pytest.mark.slow
def test_plot_writes_a_png(tmp_path, default, exploding, vanishing):
    path = plot([default, exploding, vanishing], tmp_path / "sub" / "plot.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(MaskinitError, match="cannot write plot"):
        plot(default, tmp_path)
    with pytest.raises(MaskinitError, match="not supported"):
        plot(default, tmp_path / "plot.xyz")
    assert plot(default, tmp_path / "no-suffix") == tmp_path / "no-suffix"
    assert (tmp_path / "no-suffix").read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_default_recipe_ok_with_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    result = invoke("inspect-init", "--preset", "tiny", "--json", str(out_json), "--plot", str(out_png))
    assert result.exit_code == 0, result.output
    for name in STAGES:
        assert name in result.stdout
    assert "ok (lsuv, norm GN)" in result.stdout
    payload = json.loads(out_json.read_text())
    assert payload["verdict"] == "ok" and payload["stage"] is None
    assert [row["name"] for row in payload["stages"]] == STAGES
    assert {"name", "shape", "init", "std"} <= set(payload["params"][0])
    assert out_png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
@pytest.mark.parametrize("args,verdict", [(EXPLODING, "exploding"), (VANISHING, "vanishing")])
def test_cli_problems_exit_1(args, verdict):
    result = invoke("inspect-init", "--preset", "tiny", *args)
    assert result.exit_code == 1, result.output
    assert f"{verdict} at " in result.stdout


@pytest.mark.slow
def test_cli_compare_side_by_side(tmp_path):
    out_json = tmp_path / "c.json"
    result = invoke("inspect-init", "--preset", "tiny", "--norm", "none", "--compare", "c2,normal:std=1.0",
                    "--compare", "xavier_uniform", "--json", str(out_json))
    assert result.exit_code == 1, result.output  # one of them is not ok
    assert "init comparison" in result.stdout
    assert "ok (c2, norm none)" in result.stdout and "ok (xavier_uniform, norm none)" in result.stdout
    assert "exploding at" in result.stdout
    payload = json.loads(out_json.read_text())
    assert [r["init"] for r in payload["results"]] == ["c2", "normal:std=1.0", "xavier_uniform"]
    assert [r["verdict"] for r in payload["results"]] == ["ok", "exploding", "ok"]


@pytest.mark.slow
def test_cli_from_a_config_file_with_overrides(tmp_path):
    config = tmp_path / "cfg.yaml"
    assert invoke("export-config", "--preset", "tiny", "--norm", "none", "-o", str(config)).exit_code == 0
    result = invoke("inspect-init", "--config", str(config), "MASKINIT.INIT", "normal:std=1.0")
    assert result.exit_code == 1, result.output
    assert "exploding at" in result.stdout and "norm none" in result.stdout


@pytest.mark.slow
def test_cli_with_a_coco_file(tmp_path):
    train_json, train_images = write_coco(tmp_path)
    result = invoke(
        "inspect-init", "--preset", "tiny", "--train-json", str(train_json), "--train-images", str(train_images)
    )
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    train_json, train_images = write_coco(tmp_path)
    malformed = tmp_path / "bad.json"
    malformed.write_text("[1, 2")
    cases = [
        (["--train-json", str(tmp_path / "nope.json"), "--train-images", str(train_images)], "not found"),
        (["--train-json", str(malformed), "--train-images", str(train_images)], "not valid JSON"),
        (["--train-json", str(train_json)], "go together"),
        (["--compare", "kaiming_normal,magic"], "unknown initializer"),
        (["--init", "normal:sd=1"], "bad parameters"),
        (["--norm", "FrozenBN"], "FrozenBN"),
        (["--lr", "0"], "--lr must be positive"),
        (["--plot", str(tmp_path)], "cannot write plot"),
    ]
    for args, message in cases:
        result = invoke("inspect-init", "--preset", "tiny", *args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert "Traceback" not in result.output
