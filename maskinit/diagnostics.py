"""Init diagnostics: measure one forward+backward of Mask R-CNN's training losses, stage by stage.

Why: a bad initializer/norm pairing shows up in the first iteration, long before a loss curve
does; `inspect_init` builds the model as training would (`maskinit.model.build_model`, on CPU),
runs the training losses once on a small batch and reports, per stage (stem, res2..res5, FPN
p2..p6, the RPN head, the box head, the mask head), the activation mean/std, the gradient norm of
the stage's parameters and the relative size |update| / |w| of the first optimizer step
(`lr * |grad|` for SGD; `lr * sqrt(n)` for Adam/AdamW, whose first step is lr * sign(grad)).

The verdict rule (first match wins). Scales are relative to the normalized input image's std;
"depth order" is stem, res2..res5, p2..p6, rpn, box_head, mask_head.

1. `exploding` if a loss, an activation or a gradient is not finite (Detectron2 itself stops on
   non-finite RPN proposals).
2. Activation std: a variance-preserving init keeps it of order 1 at every depth, while the
   per-layer gains of a badly scaled init compound geometrically. A stage more than
   `ACTIVATION_FAIL` (1e3, three orders of magnitude) above the input is `exploding`, more than
   1e3 below it `vanishing`. The reported stage is where the drift starts: the first stage
   already `ACTIVATION_WARN` (10x) off in that direction.
3. Update size |update| / |w| over a stage's trainable parameters: above `UPDATE_HIGH` (1),
   one step at the base LR would move the weights by more than their own norm (`exploding`);
   below `UPDATE_LOW` (2**-23, float32's relative resolution) the update is lost to rounding
   when added to the weights (`vanishing`). The stage is the first one out of range.

Measured on the tiny preset (synthetic 128-pixel batch, seed 0): healthy recipes (GN with kaiming,
xavier, orthogonal, c2, normal:std=0.01; BN/SyncBN/GNWS; no norm with c2, xavier, kaiming) keep
activation stds within 0.04..56x of the input and updates within 1e-5..0.5.
`--norm none --init normal:std=1.0`: stem 9x, res2 6e5x, res5 2e23x, box head 2e32x (exploding
at res2). `--norm none --init normal:std=0.0001`: stem 9e-4x, res3 6e-7x, box head 8e-23x
(vanishing at stem). On R50 without a norm, kaiming_normal trips rule 3 (stem update 7x).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from torch import nn

from .batches import coco_batch, synthetic_batch  # noqa: F401 - coco_batch: the batch inspect-init reads from data
from .config import ADAPTIVE_OPTIMIZERS
from .errors import MaskinitError
from .moments import RunningMoments

ACTIVATION_WARN = 10.0
ACTIVATION_FAIL = 1e3
UPDATE_HIGH = 1.0
UPDATE_LOW = 2.0**-23
RESNET_STAGES = ("stem", "res2", "res3", "res4", "res5")
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")


@dataclass
class StageStats:
    """One row of the report; None where a stage has no parameters (p6 is a max-pool)."""

    name: str
    activation_mean: float | None
    activation_std: float | None
    grad_norm: float | None
    weight_norm: float | None
    update_ratio: float | None
    finite: bool = True


@dataclass
class InitInspection:
    """What `inspect_init` measured and concluded."""

    init: str
    norm: str
    lr: float
    input_std: float
    losses: dict
    stages: list[StageStats]
    params: list[dict]
    verdict: str = "ok"
    stage: str | None = None
    advice: str = ""
    thresholds: dict = field(default_factory=dict)
    # A data-dependent init's pass (`maskinit.lsuv.LsuvResult.to_json()`: batch, passes, each layer), else None.
    lsuv: dict | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def relative_std(self, row: StageStats) -> float | None:
        if row.activation_std is None:
            return None
        return row.activation_std / self.input_std

    def to_json(self) -> dict:
        return _finite_or_none(
            {
                "verdict": self.verdict,
                "stage": self.stage,
                "advice": self.advice,
                "init": self.init,
                "norm": self.norm,
                "lr": self.lr,
                "input_std": self.input_std,
                "losses": self.losses,
                "thresholds": self.thresholds,
                "stages": [asdict(row) for row in self.stages],
                "params": self.params,
                **({"lsuv": self.lsuv} if self.lsuv is not None else {}),
            }
        )


def _finite_or_none(value):
    """JSON has no inf/NaN: non-finite numbers become null (each stage row keeps `finite`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------- measuring


def _stage_modules(model: nn.Module) -> dict[str, tuple[list[nn.Module], str, nn.Module]]:
    """stage -> (modules owning its parameters, where its activation is read, the hooked module).

    "output"/"input": the hooked module's output, or its first input (a predictor's input is the
    head's last hidden features); "fpn": one level of the FPN's output dict.
    """
    stages: dict = {}
    backbone = model.backbone
    bottom_up = getattr(backbone, "bottom_up", backbone)
    for name in RESNET_STAGES:
        module = getattr(bottom_up, name, None)
        if module is not None:
            stages[name] = ([module], "output", module)
    if bottom_up is not backbone:  # FPN: p2..p5 own their lateral and output convs, p6 its top block
        for level in FPN_LEVELS:
            if level not in backbone._out_features:
                continue
            owners = [getattr(backbone, f"fpn_{kind}{level[1:]}", None) for kind in ("lateral", "output")]
            if owners == [None, None]:
                owners = [getattr(backbone, "top_block", None)]
            owners = [m for m in owners if m is not None]
            stages[level] = (owners, "fpn", backbone)
    rpn_head = getattr(getattr(model, "proposal_generator", None), "rpn_head", None)
    if rpn_head is not None and hasattr(rpn_head, "objectness_logits"):
        stages["rpn"] = ([model.proposal_generator], "input", rpn_head.objectness_logits)
    heads = getattr(model, "roi_heads", None)
    if getattr(heads, "box_head", None) is not None:
        stages["box_head"] = ([heads.box_head, heads.box_predictor], "output", heads.box_head)
    mask_head = getattr(heads, "mask_head", None)
    if mask_head is not None and hasattr(mask_head, "predictor"):
        stages["mask_head"] = ([mask_head], "input", mask_head.predictor)
    return stages


def _register(model: nn.Module, stages: dict, moments: dict[str, RunningMoments]) -> list:
    def read_levels(module, inputs, outputs):
        for level, value in outputs.items():
            if level in moments:
                moments[level].add(value)

    handles = []
    for name, (_, where, module) in stages.items():
        if where == "output":
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: moments[name].add(o)))
        elif where == "input":
            handles.append(module.register_forward_pre_hook(lambda m, i, name=name: moments[name].add(i[0])))
    if any(where == "fpn" for _, where, _ in stages.values()):
        handles.append(model.backbone.register_forward_hook(read_levels))
    # The normalized image, as the backbone receives it: the reference scale of every stage.
    handles.append(model.backbone.register_forward_pre_hook(lambda m, i: moments["input"].add(i[0])))
    return handles


def _norms(modules: Sequence[nn.Module]) -> tuple[float | None, float | None, int]:
    """Gradient norm, weight norm, and how many gradient entries are non-zero."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    grads = [p.grad for p in params if p.grad is not None]
    if not params or not grads:
        return None, None, 0
    grad = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])))
    weight = float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().double()) for p in params]))
    )
    return grad, weight, int(sum(torch.count_nonzero(g) for g in grads))


def check_seed(seed: int) -> None:
    """numpy wants a non-negative seed, torch one below 2**64: anything else is refused in one line."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise MaskinitError(f"--seed must be a non-negative integer below 2**64, got {seed!r}")


def first_step_size(optimizer: str, lr: float, grad: float, nonzero: int) -> float:
    """Norm of the first update: lr*|grad| for SGD; Adam's first step is lr*sign(grad) per entry."""
    return lr * math.sqrt(nonzero) if optimizer in ADAPTIVE_OPTIMIZERS else lr * grad


def inspect_init(
    cfg: CfgNode,
    lr: float | None = None,
    batch: list[dict] | None = None,
    seed: int = 0,
    *,
    num_images: int = 2,
    image_size: int = 128,
    label: str | None = None,
) -> InitInspection:
    """Build the model on CPU, run the training losses once on `batch` (synthetic when None), judge.

    `lr` defaults to `cfg.SOLVER.BASE_LR`; the same seed builds the same weights and batch. A
    data-dependent init (lsuv) is fitted on that same batch (`build_model(cfg, lsuv_batch=batch)`), so
    its per-layer output variances (`params[...]["lsuv"]`, `lsuv`) are those of the batch inspected.
    """
    from detectron2.utils.events import EventStorage

    from .model import build_model

    check_seed(seed)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    lr = float(cfg.SOLVER.BASE_LR if lr is None else lr)
    if not lr > 0:
        raise MaskinitError(f"--lr must be positive, got {lr}")
    if batch is None:  # first: a data-dependent init (lsuv) runs on the batch inspected
        batch = synthetic_batch(cfg, num_images=num_images, image_size=image_size, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg, lsuv_batch=batch)
        model.train()
        stages = _stage_modules(model)
        moments = {name: RunningMoments() for name in [*stages, "input"]}
        handles = _register(model, stages, moments)
        try:
            with EventStorage():
                losses = model(batch)
                sum(losses.values()).backward()
            losses = {key: float(value.detach()) for key, value in losses.items()}
        except FloatingPointError:  # Detectron2's RPN refuses non-finite proposals: diverged at once
            losses = {"diverged": float("inf")}
        finally:
            for handle in handles:
                handle.remove()

    rows = []
    for name, (owners, _, _) in stages.items():
        mean, std = moments[name].mean_and_std()
        grad, weight, nonzero = _norms(owners)
        update = (
            first_step_size(cfg.MASKINIT.OPTIMIZER, lr, grad, nonzero) / weight if grad is not None and weight else None
        )
        finite = moments[name].finite and (grad is None or math.isfinite(grad))
        rows.append(StageStats(name, mean, std, grad, weight, update, finite))
    _, input_std = moments["input"].mean_and_std()
    result = InitInspection(
        init=label or cfg.MASKINIT.INIT,
        norm=cfg.MASKINIT.NORM,
        lr=lr,
        input_std=input_std if input_std and math.isfinite(input_std) and input_std > 0 else 1.0,
        losses=losses,
        stages=rows,
        params=[
            {"name": p.name, "shape": p.shape, "component": p.component, "init": p.init, "std": p.std,
             **({"lsuv": p.lsuv} if p.lsuv is not None else {})}
            for p in model.maskinit_init_report
        ],
        lsuv=model.maskinit_lsuv.to_json() if getattr(model, "maskinit_lsuv", None) is not None else None,
        thresholds={
            "activation_warn": ACTIVATION_WARN,
            "activation_fail": ACTIVATION_FAIL,
            "update_high": UPDATE_HIGH,
            "update_low": UPDATE_LOW,
        },
    )
    judge(result)
    return result


# ---------------------------------------------------------------------------------------- verdict


def judge(result: InitInspection) -> None:
    """Set `verdict`, `stage` and `advice` by the rule in the module docstring."""
    norm_hint = " or a norm (--norm GN)" if result.norm.split(":")[0] == "none" else ""
    ratios = [(row, result.relative_std(row)) for row in result.stages if result.relative_std(row) is not None]

    def drift_start(growing: bool) -> StageStats | None:
        return next((r for r, q in ratios if (q > ACTIVATION_WARN if growing else q < 1 / ACTIVATION_WARN)), None)

    broken = next((row for row in result.stages if not row.finite), None)
    if broken is not None or not all(math.isfinite(value) for value in result.losses.values()):
        start = drift_start(growing=True) or broken
        if broken is not None:
            where = broken.name
        else:
            where = "the RPN's predictions (Detectron2 stopped)" if "diverged" in result.losses else "the losses"
        finite = [(row, q) for row, q in ratios if math.isfinite(q)]
        peak = max(finite, key=lambda item: item[1], default=None)
        context = ""
        if peak is not None and peak[1] > ACTIVATION_WARN:
            context = (
                f" (activation std reaches {peak[1]:.0e}x the input's at {peak[0].name}, drift starts at {start.name})"
            )
        result.verdict, result.stage = "exploding", start.name if start is not None else None
        result.advice = (
            f"non-finite values at {where}{context}: the init scale ({result.init}) or the LR is far too large; "
            f"use kaiming_normal or c2{norm_hint}"
        )
        return

    for row, ratio in ratios:
        if ratio > ACTIVATION_FAIL or ratio < 1 / ACTIVATION_FAIL:
            growing = ratio > ACTIVATION_FAIL
            start = drift_start(growing)
            result.verdict, result.stage = ("exploding" if growing else "vanishing"), start.name
            result.advice = (
                f"activation std {'grows' if growing else 'shrinks'} to {ratio:.1e}x the input's at {row.name} "
                f"(drift starts at {start.name}): the init scale ({result.init}) is too "
                f"{'large' if growing else 'small'}; use a variance-preserving init (kaiming_normal, c2){norm_hint}"
            )
            return

    for row in result.stages:
        if row.update_ratio is None:
            continue
        if row.update_ratio > UPDATE_HIGH:
            result.verdict, result.stage = "exploding", row.name
            result.advice = (
                f"one step at lr={result.lr:g} would move {row.name}'s weights by {row.update_ratio:.1f}x "
                f"their norm: lower the LR (--lr, SOLVER.BASE_LR) or the init scale"
            )
            return
        if row.update_ratio < UPDATE_LOW:
            result.verdict, result.stage = "vanishing", row.name
            result.advice = (
                f"updates at {row.name} ({row.update_ratio:.1e} of the weights at lr={result.lr:g}) are below "
                f"float32 resolution: gradients vanish; use kaiming_normal or c2{norm_hint}"
            )
            return

    stds = [q for _, q in ratios]
    updates = [row.update_ratio for row in result.stages if row.update_ratio is not None]
    result.verdict, result.stage = "ok", None
    result.advice = (
        f"activation std stays within {min(stds):.2g}..{max(stds):.2g}x of the input; "
        f"one step at lr={result.lr:g} moves each stage by {min(updates):.1g}..{max(updates):.1g} of its weights"
    )


# ------------------------------------------------------------------------------ compare and plot


def split_specs(text: str | Iterable[str]) -> list[str]:
    """`kaiming_normal,normal:std=0.01,mean=0,c2` -> three specs: a `key=value` item continues the previous spec."""
    items = [text] if isinstance(text, str) else list(text)
    specs: list[str] = []
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            if "=" in part and ":" not in part and specs:
                specs[-1] += "," + part
            else:
                specs.append(part)
    if not specs:
        raise MaskinitError("--compare needs at least one initializer spec")
    return specs


def compare(cfg: CfgNode, specs: str | Iterable[str], **options) -> list[InitInspection]:
    """`inspect_init` once per initializer spec (every component gets it), on the same batch and seed."""
    from .initializers import build_initializer

    check_seed(options.get("seed", 0))
    specs = split_specs(specs)
    for spec in specs:
        build_initializer(spec)
    if options.get("batch") is None:
        options["batch"] = synthetic_batch(
            cfg, options.pop("num_images", 2), options.pop("image_size", 128), options.get("seed", 0)
        )
    results = []
    for spec in specs:
        variant = cfg.clone()
        variant.defrost()
        variant.MASKINIT.INIT = spec
        for key in variant.MASKINIT.COMPONENT_INIT:
            variant.MASKINIT.COMPONENT_INIT[key] = ""
        results.append(inspect_init(variant, label=spec, **options))
    return results


def plot(results: InitInspection | Sequence[InitInspection], path: str | Path) -> Path:
    """Activation std and gradient norm by depth (log scale), one line per initializer, as an image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = [results] if isinstance(results, InitInspection) else list(results)
    names = [row.name for row in results[0].stages]
    figure = Figure(figsize=(max(8, 0.7 * len(names)), 7), tight_layout=True)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for result in results:
        by_name = {row.name: row for row in result.stages}
        for axis, key in ((top, "activation_std"), (bottom, "grad_norm")):
            values = [getattr(by_name[n], key) if n in by_name else None for n in names]
            values = [v if v is not None and math.isfinite(v) and v > 0 else np.nan for v in values]
            axis.plot(range(len(names)), values, marker="o", label=f"{result.init} ({result.verdict})")
    top.set_ylabel("activation std")
    bottom.set_ylabel("gradient norm")
    for axis in (top, bottom):
        axis.set_yscale("log")
        axis.grid(True, which="major", alpha=0.3)
    bottom.set_xticks(range(len(names)), names, rotation=45)
    top.legend(fontsize="small")
    top.set_title(f"init diagnostics, norm {results[0].norm}")
    from .curves import save_figure

    return save_figure(figure, path, dpi=100)


def write_json(results: InitInspection | Sequence[InitInspection], path: str | Path) -> Path:
    """One inspection as its `to_json()`; several (a comparison) as `{"results": [...]}`."""
    payload = (
        results.to_json()
        if isinstance(results, InitInspection)
        else {"results": [result.to_json() for result in results]}
    )
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
    except OSError as error:
        raise MaskinitError(f"cannot write {path}: {error.strerror}") from error
    return path
