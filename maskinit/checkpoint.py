"""Checkpoints: written atomically and audited by training, checked when loaded by eval and predict.

Training saves through `AuditedCheckpointer` (Detectron2's checkpointer, recording every file it
reads, writing each file to a temporary name renamed into place, and refusing to write a model
whose weights are no longer finite). `eval` and `predict` load trained weights with `load_weights`
(`load_trained_model`: the model built, loaded, in eval mode), which refuses files of another model
and diverged (non-finite) weights in one line.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from detectron2.checkpoint import (
    DetectionCheckpointer,  # save re-stated, _load_file/_load_model overridden: see internals.py
)
from torch import nn

from .atomic import write_atomically
from .errors import MaskinitError, one_line


class AuditedCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, recording every file it reads, and writing atomically.

    fvcore writes checkpoints and `last_checkpoint` in place, so a kill or a full disk mid-write
    leaves a torn file that `--resume` cannot load. Here each file is written to a temporary name
    and renamed over the old one: at any moment `last_checkpoint` names a complete checkpoint.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.files_read: list[dict] = []
        # When set (a weight average is kept, see ema.py): a function returning the state dict that
        # `model_final.pth` holds as its `model`; the training weights go beside it as `raw_model`.
        self.final_weights = None

    def _load_file(self, filename):
        loaded = super()._load_file(filename)
        self.files_read.append({"file": str(filename), "tensors": len(loaded.get("model", {}))})
        if "raw_model" in loaded:  # training continues from the training weights, not their average
            loaded["model"] = loaded.pop("raw_model")
        return loaded

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        state = self.model.state_dict()
        bad = non_finite_tensors(state)
        if bad:  # a diverged model is no checkpoint: keep the last finite one as `last_checkpoint`
            raise FloatingPointError(
                f"weights became non-finite at iteration {kwargs.get('iteration', '?')}: {len(bad)} of {len(state)} "
                f"tensors (e.g. {bad[0]}); {name}.pth not written"
            )
        data = {"model": state}
        if name == "model_final" and self.final_weights is not None:
            final = self.final_weights()
            bad = non_finite_tensors(final)
            if bad:
                raise FloatingPointError(
                    f"weights became non-finite at iteration {kwargs.get('iteration', '?')}: "
                    f"{len(bad)} of {len(final)} "
                    f"averaged tensors (e.g. {bad[0]}); {name}.pth not written"
                )
            data = {"model": final, "raw_model": state}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = Path(self.save_dir) / basename
        self.logger.info("Saving checkpoint to %s", path)
        self._write_atomically(path, lambda handle: torch.save(data, handle))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        self._write_atomically(Path(self.save_dir) / "last_checkpoint", last_filename_basename)

    def _write_atomically(self, path: Path, write) -> None:
        try:
            write_atomically(path, write)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
            kept = last_checkpoint(self.save_dir) or "none yet"
            raise MaskinitError(
                f"cannot save {path.name} ({write_failure(error, path.parent)}); the previous checkpoint ({kept}) "
                "is intact: free space, then --resume"
            ) from error


def write_failure(error: BaseException, folder: Path) -> str:
    """Why a write failed, in words: torch.save reports a full disk as 'enforce fail at
    inline_container.cc ... file write failed', without the operating system's reason."""
    import errno
    import shutil

    text = str(error)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or "No space" in text or (free is not None and free < 64 * 2**20):
        return "disk full" + (f", {free / 2**20:.0f} MiB free" if free is not None else "")
    if getattr(error, "errno", None) == errno.EDQUOT:
        return "disk quota exceeded"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if "write failed" in text or "inline_container" in text:
        return "the file system refused the write"
    return one_line(error)


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors in a state dict holding a NaN or an infinity."""
    return [name for name, tensor in state.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        # reshape(-1): 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if tensor.numel()
            else b""
        )
    return digest.hexdigest()


def remove_checkpoints(output_dir: str | Path) -> list[Path]:
    """Remove a run folder's checkpoints (`*.pth` and the `last_checkpoint` tag); its logs, metrics, config
    and summary stay. The files removed."""
    out = Path(output_dir)
    removed = [path for path in [*out.glob("*.pth"), out / "last_checkpoint"] if path.is_file()]
    for path in removed:
        path.unlink()
    return removed


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The checkpoint `last_checkpoint` names, when that file is there."""
    out = Path(output_dir)
    tag = out / "last_checkpoint"
    name = tag.read_text().strip() if tag.is_file() else ""
    return name if name and (out / name).is_file() else None


def checkpoint_iteration(path: Path) -> int:
    """The iteration a checkpoint was saved at: from its name (model_0000199.pth) or from the file."""
    match = re.fullmatch(r"model_(\d+)\.pth", path.name)
    if match:
        return int(match.group(1))
    try:  # model_final.pth or a renamed file: this run's own checkpoint, so a full load is safe
        iteration = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("iteration")
    except Exception as error:
        raise MaskinitError(f"--resume: cannot read {path}: {one_line(error)}") from error
    if not isinstance(iteration, int):
        raise MaskinitError(f"--resume: {path} records no iteration: not a checkpoint of maskinit train")
    return iteration


class _CheckingCheckpointer(DetectionCheckpointer):
    """Keeps the key mismatches that Detectron2 only logs: a checkpoint of another model would
    otherwise load nothing and be evaluated as a randomly initialized network."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights(model: nn.Module, weights: str | Path) -> nn.Module:
    """Load a Detectron2 checkpoint into `model`; a missing, unreadable or non-matching file is a
    `MaskinitError`."""
    path = Path(weights)
    if not path.is_file():
        raise MaskinitError(f"weights {path} not found")
    checkpointer = _CheckingCheckpointer(model)
    try:
        checkpointer.load(str(path), checkpointables=[])
    except MaskinitError:
        raise
    except Exception as error:  # torch.load / pickle raise many types for damaged or foreign files
        raise MaskinitError(f"cannot read weights {path}: {one_line(error)}") from error
    incompatible = checkpointer.incompatible
    if incompatible is None:
        raise MaskinitError(f"weights {path} hold no model state")
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise MaskinitError(
            f"weights {path} hold NaN or infinite values in {len(bad)} tensors (e.g. {bad[0]}): they come from a "
            "diverged run; use an earlier checkpoint"
        )
    problems = {
        "missing": list(incompatible.missing_keys),
        "unexpected": list(incompatible.unexpected_keys),
        "wrong shape": [key for key, *_ in incompatible.incorrect_shapes],
    }
    if any(problems.values()):
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in problems.items() if keys)
        example = next(keys[0] for keys in problems.values() if keys)
        raise MaskinitError(
            f"weights {path} do not match this model ({counts} parameters, e.g. {example}): "
            "trained with a different config or not a maskinit checkpoint"
        )
    return model


def load_trained_model(cfg, weights: str | Path) -> nn.Module:
    """`build_model(cfg)` with `weights` loaded (`load_weights`), in eval mode: what `eval` and `predict` run."""
    from .model import build_model

    model = load_weights(build_model(cfg, data_dependent=False), weights)  # no LSUV pass: the weights are replaced
    model.eval()
    return model
