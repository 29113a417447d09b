"""What `maskinit predict` runs images through: a trained run's Detectron2 model, or a file written by
`maskinit export` (run by `maskinit.deploy`'s runner through onnxruntime or torch).

`resolve_model` finds the model from what the user names: a run folder (its `config.yaml` and
`model_final.pth`), an exported file, or `--config` with `--weights`. `load_predictor` builds the
predictor; calling it on a `read_image` array gives Detectron2 `Instances` on the CPU (boxes, scores,
classes, full-image masks) either way, so that drawings and the COCO JSON are written the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MaskinitError

RUN_CONFIG = "config.yaml"
RUN_WEIGHTS = "model_final.pth"


@dataclass(frozen=True)
class ModelSource:
    """A model to run: an exported file (`config` None) or a config and a checkpoint."""

    weights: Path
    config: Path | None = None

    @property
    def exported(self) -> bool:
        return self.config is None


def resolve_model(model: str | Path | None = None, config: str | Path | None = None,
                  weights: str | Path | None = None) -> ModelSource:
    """The model named by a run folder or exported file (`model`), `--config` and `--weights`.

    A run folder gives its `config.yaml` and, unless `weights` names another checkpoint,
    `model_final.pth`; an exported file carries its own settings (no config); a checkpoint needs
    its config."""
    from .deploy import is_exported_model

    if model is not None:
        path = Path(model)
        if path.is_dir():
            if config is not None:
                raise MaskinitError(f"{path} is a run folder, which holds its config: give it or --config, not both")
            config_path = path / RUN_CONFIG
            if not config_path.is_file():
                raise MaskinitError(f"{path} is not a run folder of maskinit train: it has no {RUN_CONFIG}")
            weights_path = Path(weights) if weights is not None else path / RUN_WEIGHTS
            if not weights_path.is_file():
                raise MaskinitError(f"run folder {path} has no {weights_path.name} (the run did not finish?): "
                                    f"give a checkpoint with --weights {path}/model_NNNNNNN.pth")
            if is_exported_model(weights_path):
                return ModelSource(weights_path)
            return ModelSource(weights_path, config_path)
        if path.is_file():
            if weights is not None:
                raise MaskinitError(f"{path} is the model: --weights is not used with it")
            weights = path
        else:
            raise MaskinitError(f"model {path} not found (a run folder or a file from maskinit export)")
    if weights is None:
        raise MaskinitError("no model: give a run folder, an exported file, or --config and --weights")
    weights = Path(weights)
    if not weights.is_file():
        raise MaskinitError(f"weights {weights} not found")
    if is_exported_model(weights):
        if config is not None:
            raise MaskinitError(
                f"{weights} is an exported model, which carries its settings: --config is not used with it"
            )
        return ModelSource(weights)
    if config is None:
        raise MaskinitError(f"{weights} is a checkpoint: give its run's --config (or the run folder instead)")
    return ModelSource(weights, Path(config))


class Detectron2Predictor:
    """A trained run's model through Detectron2, with the test-time resize the evaluation uses."""

    def __init__(self, cfg, weights: str | Path, score_threshold: float, names: list[str], dataset_ids: list[int]):
        from .checkpoint import load_trained_model
        from .data.mapper import ImageMapper

        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
        self.model = load_trained_model(cfg, weights)
        self.mapper = ImageMapper(cfg, is_train=False)
        self.names, self.dataset_ids = list(names), list(dataset_ids)
        self.description = f"{weights} (Detectron2 on {cfg.MODEL.DEVICE})"

    def __call__(self, image: np.ndarray, path: str | Path):
        """One image (a `read_image` array) through the model, pre-processed by the test mapper the
        evaluation uses (the test-time resize of Detectron2's `DefaultPredictor`)."""
        import torch

        height, width = image.shape[:2]
        record = {"file_name": str(path), "height": height, "width": width}
        inputs = self.mapper.map_image(record, self.mapper.model_image(image, path))
        with torch.no_grad():
            return self.model([inputs])[0]["instances"].to("cpu")


class ExportedPredictor:
    """A file from `maskinit export`, run by `maskinit.deploy` (onnxruntime or torch); the image is
    given to it as to the Detectron2 model (`maskinit.data.mapper.model_image`)."""

    def __init__(self, path: str | Path, score_threshold: float, threads: int | None = None):
        from .deploy import DeployError, load

        try:
            self.model = load(path, threads=threads)
        except DeployError as error:
            raise MaskinitError(str(error)) from error
        self.path = Path(path)
        self.score_threshold = score_threshold
        info = self.model.metadata["input"]
        self.channels, self.image_format = self.model.channels, info.get("format", "BGR")
        self.names = [c["name"] for c in self.model.classes]
        self.dataset_ids = [int(c["id"]) for c in self.model.classes]
        self.description = f"{path} (exported {self.model.format})"

    def __call__(self, image: np.ndarray, path: str | Path):
        import torch
        from detectron2.structures import Boxes, Instances

        from .data.images import describe_kind, image_kind
        from .data.mapper import model_image

        try:
            prepared = model_image(image, self.channels, self.image_format, path)
        except MaskinitError as error:
            order = self.model.metadata["input"].get("channel_order", "")
            raise MaskinitError(
                f"image {path} is {describe_kind(image_kind(image))}, but the exported model {self.path.name} takes "
                f"{self.channels} channel{'s' if self.channels != 1 else ''} ({order})"
            ) from error
        found = self.model(prepared, self.score_threshold)
        instances = Instances(found.image_size)
        instances.pred_boxes = Boxes(torch.from_numpy(found.boxes))
        instances.scores = torch.from_numpy(found.scores)
        instances.pred_classes = torch.from_numpy(found.classes)
        instances.pred_masks = torch.from_numpy(found.masks)
        return instances


def load_predictor(
    weights: str | Path, score_threshold: float, *, cfg=None, categories=None, threads: int | None = None
):
    """The predictor of `weights`: `ExportedPredictor` for a file from `maskinit export` (`threads`:
    its intra-op threads), else a `Detectron2Predictor` of the checkpoint with `cfg` (its run's config)
    and the classes `categories` ((names, dataset ids))."""
    from .deploy import is_exported_model

    if is_exported_model(weights):
        return ExportedPredictor(weights, score_threshold, threads=threads)
    if cfg is None or categories is None:
        raise MaskinitError(f"{weights} is a checkpoint: give its run's config (or the run folder)")
    return Detectron2Predictor(cfg, weights, score_threshold, *categories)
