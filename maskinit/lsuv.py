"""LSUV, layer-sequential unit variance (Mishkin & Matas 2016, "All you need is a good init"): after
the base init (orthogonal by default, `lsuv:base=c2` for Detectron2's own) has filled the weights,
forward passes on a batch rescale each convolution and linear layer, in forward order, until the
variance of its output on the batch is within `tol` of 1 (at most `iters` rescalings per layer).

Which output: the layer's own, before anything after it (the paper's choice). A Detectron2
`Conv2d` applies its `norm` and `activation` inside `forward`, so a forward hook would see the
normalized output: for one with a norm the measurement is the norm's input (a pre-hook on `norm`,
which is the raw convolution output, weight standardization included); for one with only an
activation the raw output is recomputed from the hook's input (`F.conv2d` as `Conv2d.forward`
calls it, the convolution alone); other layers (nn.Linear, ConvTranspose2d) are hooked as they are. A layer called
several times per pass (the RPN head, once per FPN level) pools every call's output.

Layers followed by GroupNorm (or BatchNorm in training mode): the norm cancels the rescaling, so
the forward output of the model does not change, but the weight's norm does, and with it the
effective learning rate of that layer: its weights are scale-invariant, so an SGD step moves them
by lr/|w|^2 relative to |w| (Adam, whose step does not scale with the gradient, by lr/|w|). LSUV
rescales these layers like all others, consistently (unit-variance pre-norm outputs: the weight
norms a plain conv would have), and reports the scale so the change is visible. The same
invariance makes LSUV cheap here: rescaling such a layer changes no later measurement, so one pass
rescales every such layer up to the next layer without a norm; the result is the paper's sequential
algorithm's (up to the norm's eps), in a few passes instead of one per layer. A layer whose
rescaling does not move its output variance at all (a weight-standardized convolution, GNWS) is
put back as its base init and reported as `no effect`.

Not rescaled: detection-head prior layers (`HEAD_PRIOR_STDS`, when `MASKINIT.HEAD_PRIORS` is on),
which keep their priors; layers of components whose init is not lsuv; a layer whose output is
all zeros (zero-init residual without a norm), not finite, or not reached by the pass (reported).

The batch (`lsuv_batch`): the given Detectron2 input dicts; else the first per-process
`SOLVER.IMS_PER_BATCH` images of the registered training set (`DATASETS.TRAIN[0]`), mapped by the
training mapper (`augment.build_train_mapper`, augmentations seeded); else, when no training set
is registered (or it cannot be read: Detectron2 registers its builtin sets whether or not their
files exist), a generated one (`generated_batch`). The passes run the model in training mode with
the ground-truth instances (so the RPN, box and mask heads all see input), or in inference mode
when the batch has none (the mask head may then not be reached), under `torch.no_grad`, with
every RNG (python, numpy, torch CPU and the model's CUDA device) seeded from `seed` and restored
afterwards, the model's train/eval flags and buffers (BatchNorm statistics) restored: building
the same config with the same seed gives the same weights, and the RNG streams after `build_model`
are those of a model built without LSUV.

Under DDP every process runs LSUV on the same batch and seed (so collective norms, SyncBN, see the
same passes); DistributedDataParallel broadcasts rank 0's parameters at construction anyway, so
per-rank batches would be fine too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from detectron2.config import CfgNode
from torch import nn
from torch.nn import functional as F

from .batches import dataset_batch, generated_batch, images_per_process
from .errors import MaskinitError, one_line
from .initializers import (
    HEAD_PRIOR_STDS,
    LSUV_DEFAULTS,
    WEIGHTED_LAYERS,
    ParamInit,
    component_of,
    is_data_dependent,
    lsuv_base,
)
from .moments import RunningMoments
from .seeding import reseed, seeded_rng
from .specs import parse_spec

logger = logging.getLogger(__name__)
# Below this relative change of the variance after a rescaling, the layer ignores its weight's scale.
NO_EFFECT = 0.01


@dataclass
class LsuvLayer:
    """What LSUV did to one layer. `status`: rescaled, within tol (already), iters exhausted, no effect,
    zero output, non-finite output, not reached."""

    name: str
    component: str
    base: str
    status: str = "pending"
    scale: float = 1.0
    var_before: float | None = None
    var_after: float | None = None
    rescalings: int = 0

    @property
    def label(self) -> str:
        """The `init` of the layer's weight in the init report: `lsuv(orthogonal)`, plus any problem."""
        done = self.status in ("rescaled", "within tol")
        return f"lsuv({self.base})" + ("" if done else f": {self.status}")


@dataclass
class LsuvResult:
    """One LSUV run: where the batch came from, how many forward passes and seconds, each layer."""

    source: str
    images: int
    passes: int
    seconds: float
    layers: list[LsuvLayer] = field(default_factory=list)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.status] = counts.get(layer.status, 0) + 1
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        return (f"LSUV on {self.images} images ({self.source}): {len(self.layers)} layers ({statuses}), "
                f"{self.passes} forward passes, {self.seconds:.1f} s")

    def to_json(self) -> dict:
        return {"source": self.source, "images": self.images, "passes": self.passes, "seconds": self.seconds,
                "layers": [asdict(layer) for layer in self.layers]}


# ------------------------------------------------------------------------------------------ batches


def lsuv_batch(cfg: CfgNode, batch: list[dict] | None = None, seed: int = 0) -> tuple[list[dict], str]:
    """The batch LSUV runs on and where it came from (see the module docstring)."""
    if batch is not None:
        if not batch:
            raise MaskinitError("LSUV needs at least one image in its batch")
        return list(batch), "the given batch"
    count = images_per_process(cfg)
    found = dataset_batch(cfg, count, seed, context="LSUV batch: ")
    if found is not None:
        return found, f"training set {cfg.DATASETS.TRAIN[0]}"
    return generated_batch(cfg, count, seed), "generated images"


# ---------------------------------------------------------------------------------------- measuring


def _hook(module: nn.Module, record) -> torch.utils.hooks.RemovableHandle:
    """Call `record(raw_output)` on every call of `module` (see the module docstring: which output)."""
    from detectron2.layers import Conv2d

    if isinstance(module, Conv2d) and isinstance(module.norm, nn.Module):
        return module.norm.register_forward_pre_hook(lambda m, inputs: record(inputs[0]))
    if isinstance(module, Conv2d) and module.activation is not None and type(module).forward is Conv2d.forward:
        return module.register_forward_hook(  # the convolution of Detectron2's Conv2d.forward, alone
            lambda m, inputs, output: record(
                F.conv2d(inputs[0], m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            )
        )
    return module.register_forward_hook(lambda m, inputs, output: record(output))


def _recorder(name: str, seen: list[str], variances: dict[str, RunningMoments]):
    """What `_hook` calls with a layer's output: its order of first call in `seen`, its moments in `variances`."""

    def record(output):
        if name not in seen:
            seen.append(name)
        variances[name].add(output)

    return record


def _normalized_after(module: nn.Module) -> bool:
    """True when a norm cancels any rescaling of the layer (GroupNorm, BatchNorm in training mode,
    inside a Detectron2 Conv2d without bias): rescaling it changes nothing downstream."""
    from detectron2.layers import Conv2d

    if not isinstance(module, Conv2d) or (module.bias is not None and bool(module.bias.any())):
        return False
    norm = module.norm
    return isinstance(norm, nn.GroupNorm) or (isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training)


def _forward(model: nn.Module, batch: list[dict], seed: int, device: torch.device) -> str | None:
    """One pass of the model on the batch (the same sampling each time); the error that stopped it, if any."""
    from detectron2.utils.events import EventStorage

    reseed(seed, device)
    try:
        with EventStorage():
            model(batch)
    except FloatingPointError as error:  # Detectron2's RPN refuses non-finite proposals
        return one_line(error)
    return None


def lsuv_layers(model: nn.Module, component_specs: dict[str, str], head_priors: bool = True) -> dict[str, tuple]:
    """name -> (module, component, tol, iters, base spec) of every layer LSUV rescales, in module order."""
    settings = {}
    for component, spec in component_specs.items():
        if spec and is_data_dependent(spec):
            _, params = parse_spec(
                spec, "initializer"
            )  # checked by apply_initializers already; no dry run, no RNG draw
            _, _, base = lsuv_base(**params)
            params = {**LSUV_DEFAULTS, **params}
            settings[component] = (params["tol"], params["iters"], base)
    layers = {}
    for name, module in model.named_modules():
        component = component_of(name + ".")
        if component not in settings or not isinstance(module, WEIGHTED_LAYERS):
            continue
        if head_priors and name in HEAD_PRIOR_STDS:
            continue
        layers[name] = (module, component, *settings[component])
    return layers


@torch.no_grad()
def run_lsuv(
    model: nn.Module,
    cfg: CfgNode,
    component_specs: dict[str, str],
    batch: list[dict] | None = None,
    seed: int = 0,
) -> LsuvResult:
    """Rescale the weights of every layer of the lsuv components in place (see the module docstring);
    return what was done. Called by `maskinit.model.build_model` after `apply_initializers`."""
    start = time.perf_counter()
    layers = lsuv_layers(model, component_specs, head_priors=cfg.MASKINIT.HEAD_PRIORS)
    device = next(model.parameters()).device
    if not layers:  # every layer of the lsuv components keeps a prior
        return LsuvResult("no layer to rescale", 0, 0, time.perf_counter() - start)
    batch, source = lsuv_batch(cfg, batch, seed)
    entries = {name: LsuvLayer(name, component, base) for name, (_, component, _, _, base) in layers.items()}
    modes = {module: module.training for module in model.modules()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    originals: dict[str, torch.Tensor] = {}
    last: dict[str, tuple[float, float]] = {}  # name -> (variance measured, scale applied) of the last rescaling
    pending, order, passes = set(layers), None, 0
    try:
        model.train(all("instances" in item for item in batch))
        with seeded_rng(seed, device):
            while pending:
                variances = {name: RunningMoments(torch.float32) for name in pending}
                seen: list[str] = []
                handles = [_hook(layers[name][0], _recorder(name, seen, variances)) for name in pending]
                try:
                    error = _forward(model, batch, seed, device)
                finally:
                    for handle in handles:
                        handle.remove()
                passes += 1
                if order is None:  # forward order: first calls, then the layers the pass did not reach
                    order = seen + [name for name in layers if name not in seen]
                for name in order:
                    if name not in pending:
                        continue
                    module, _, tol, iters, _ = layers[name]
                    entry, var = entries[name], variances[name].variance
                    if entry.var_before is None:
                        entry.var_before = var
                    status = None
                    if var is None:
                        status = "not reached" + (f" ({error})" if error else "")
                    elif not math.isfinite(var):
                        status = "non-finite output"
                    elif name in last and _no_effect(*last[name], var):
                        module.weight.copy_(originals[name])
                        entry.scale, status = 1.0, "no effect"
                    elif abs(var - 1) < tol:
                        status = "rescaled" if entry.rescalings else "within tol"
                    elif var == 0:
                        status = "zero output"
                    elif entry.rescalings >= iters:
                        status = "iters exhausted"
                    if status is not None:
                        entry.status, entry.var_after = status, var
                        pending.discard(name)
                        originals.pop(name, None)
                        continue
                    scale = 1 / math.sqrt(var)
                    originals.setdefault(name, module.weight.detach().clone())
                    module.weight.mul_(scale)
                    entry.scale *= scale
                    entry.rescalings += 1
                    last[name] = (var, scale)
                    if not _normalized_after(module):
                        break  # every later measurement of this pass saw the old scale
    finally:
        for module, training in modes.items():
            module.training = training
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    result = LsuvResult(source, len(batch), passes, time.perf_counter() - start, list(entries.values()))
    logger.info("%s", result.summary())
    problems: dict[str, list[str]] = {}
    for entry in result.layers:
        if entry.status not in ("rescaled", "within tol"):
            problems.setdefault(entry.status, []).append(entry.name)
    for status, names in problems.items():
        logger.warning("LSUV: %d layers %s, left as their base init: %s", len(names), status,
                       ", ".join(names[:3]) + (", ..." if len(names) > 3 else ""))
    return result


def _no_effect(var: float, scale: float, new_var: float) -> bool:
    """A rescaling by `scale` should multiply the variance by scale**2; True when it barely moved it."""
    expected = abs(math.log(scale * scale))
    return expected > 1e-3 and abs(math.log(new_var / var)) < NO_EFFECT * expected if var > 0 and new_var > 0 else False


def updated_report(report: list[ParamInit], result: LsuvResult, model: nn.Module) -> list[ParamInit]:
    """The init report with each LSUV layer's weight relabelled (`lsuv(base)`), its std measured again
    and its `lsuv` details (scale, output variance before/after, rescalings, status)."""
    params = dict(model.named_parameters())
    by_weight = {entry.name + ".weight": entry for entry in result.layers}
    lines = []
    for line in report:
        entry = by_weight.get(line.name)
        if entry is None:
            lines.append(line)
            continue
        weight = params[line.name].detach().float()
        details = {key: value for key, value in asdict(entry).items() if key not in ("name", "component")}
        lines.append(replace(line, init=entry.label, std=float(weight.std()), lsuv=details))
    return lines
