"""Shared test set-up: caches in a per-session folder, one torch thread, and an untrained checkpoint
saved as Detectron2's trainer does."""

from __future__ import annotations

import os
import shutil
import tempfile

# Nothing the tests run writes into the user's home: maskinit's dataset cache, matplotlib's font cache
# and config, fvcore/iopath and torch caches all go to one folder per session (set before anything
# imports matplotlib, which reads MPLCONFIGDIR once). Subprocesses the tests start inherit it.
SESSION_HOME = tempfile.mkdtemp(prefix="maskinit-tests-")
for _name, _sub in (("MASKINIT_CACHE", "maskinit"), ("MPLCONFIGDIR", "matplotlib"), ("XDG_CACHE_HOME", "cache"),
                    ("XDG_CONFIG_HOME", "config"), ("FVCORE_CACHE", "fvcore"), ("TORCH_HOME", "torch")):
    os.environ[_name] = os.path.join(SESSION_HOME, _sub)

import pytest  # noqa: E402
import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

from maskinit import build_model  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def session_home():
    """The per-session cache folder (see the top of this file), removed when the session ends."""
    yield SESSION_HOME
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: on a busy 2-core machine, OpenMP's spinning threads slow each pass several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def coco(tmp_path_factory):
    """A small generated COCO set (8 training, 3 validation images) as training data options."""
    from maskinit.data.synthetic import generate_coco_dataset
    from maskinit.train import DataOptions

    root = tmp_path_factory.mktemp("coco")
    train_set = generate_coco_dataset(root / "train", 8, seed=1)
    val_set = generate_coco_dataset(root / "val", 3, seed=2, first_image_id=100)
    return DataOptions(
        str(train_set.json_file), str(train_set.image_root), str(val_set.json_file), str(val_set.image_root)
    )


@pytest.fixture(scope="module")
def polygon_set(tmp_path_factory):
    """A generated COCO set of 4 images with polygon masks (files of the generator's own kind)."""
    from maskinit.data.synthetic import generate_coco_dataset

    return generate_coco_dataset(tmp_path_factory.mktemp("polygon"), 4, seed=3)


def train_options(out, data, max_iter=6, checkpoint_period=3, **kwargs):
    """`TrainOptions` of a short, seeded, quiet run into `out` on the data options `data`."""
    from maskinit.train import DataOptions, TrainOptions

    return TrainOptions(output_dir=str(out), data=DataOptions(**vars(data)), seed=0, progress=False,
                        max_iter=max_iter, checkpoint_period=checkpoint_period, **kwargs)


def save_untrained_checkpoint(cfg, folder):
    """`folder/model_final.pth` holding a freshly built (seeded) model."""
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(folder)).save("model_final")
    return folder / "model_final.pth"


class ReplayDetector(torch.nn.Module):
    """Stands in for a detector: returns fixed predictions for each input's image id."""

    def __init__(self, predictions: dict):
        super().__init__()
        self.predictions = predictions

    def forward(self, inputs):
        return [{"instances": self.predictions[item["image_id"]]} for item in inputs]


def replay_detector(json_file) -> ReplayDetector:
    """A detector replaying `synthetic_predictions` of a COCO file, in its contiguous class ids."""
    import json

    import numpy as np
    from detectron2.structures import Boxes, BoxMode, Instances
    from pycocotools import mask as mask_util

    from maskinit.data.synthetic import synthetic_predictions

    coco = json.loads(json_file.read_text())
    contiguous = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    results = synthetic_predictions(json_file, seed=4)
    predictions = {}
    for image in coco["images"]:
        mine = [r for r in results if r["image_id"] == image["id"]]
        instances = Instances((image["height"], image["width"]))
        boxes = [BoxMode.convert(r["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for r in mine]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor([r["score"] for r in mine], dtype=torch.float32)
        instances.pred_classes = torch.tensor([contiguous[r["category_id"]] for r in mine], dtype=torch.int64)
        masks = [mask_util.decode(r["segmentation"]).astype(bool) for r in mine]
        empty = torch.zeros((0, image["height"], image["width"]), dtype=torch.bool)
        instances.pred_masks = torch.from_numpy(np.stack(masks)) if masks else empty
        predictions[image["id"]] = instances
    return ReplayDetector(predictions)


@pytest.fixture(autouse=True)
def no_handler_on_a_closed_stream():
    """A training run inside CliRunner logs to the runner's captured stream, which is closed when the
    command returns; a later test's log line would then fail to be written ("--- Logging error ---" on
    stderr). Handlers left on a closed stream are removed after each test."""
    import logging

    yield
    for name in ("maskinit", "detectron2", "fvcore", "d2"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)
