"""Each reach into Detectron2 or fvcore internals listed in `maskinit/internals.py` still holds.

One test per entry of `internals.REACHES`, named `test_<entry>`: it checks the upstream shape that
maskinit relies on (a signature, the re-stated source lines, an attribute, a behaviour), so that an
upgrade that moves it fails here, by name.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import math
import sys
import textwrap

import numpy as np
import pytest
import torch

from maskinit import internals
from maskinit.config import load_config


def body_lines(function) -> list[str]:
    """The statements of a function's body as `ast.unparse` writes them (no docstring, no comments)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return [ast.unparse(statement) for statement in body]


def source(function) -> str:
    return ast.unparse(ast.parse(textwrap.dedent(inspect.getsource(function))))


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config(preset="tiny")


def test_every_reach_has_its_test_and_names_its_versions():
    tests = {name[len("test_"):] for name, value in globals().items() if name.startswith("test_") and callable(value)}
    assert set(internals.REACHES) <= tests, set(internals.REACHES) - tests
    text = internals.__doc__
    for name, reach in internals.REACHES.items():
        assert f"`{name}`" in text, f"{name} is not described in the docstring"
        assert reach.where and reach.upstream
    assert f"Detectron2 {internals.DETECTRON2_VERSION}" in text and f"fvcore {internals.FVCORE_VERSION}" in text


# ---------------------------------------------------------------------------------------------
# Evaluation


def test_fast_cocoeval_slot():
    from detectron2.evaluation import COCOEvaluator, coco_evaluation

    assert hasattr(coco_evaluation, "COCOeval_opt") and hasattr(coco_evaluation, "COCOeval")
    module_source = inspect.getsource(coco_evaluation)
    assert "COCOeval_opt = COCOeval" in module_source  # the fallback when _C is missing
    # read at evaluation time from the module global, so that filling the slot takes effect
    assert "cocoeval_fn=COCOeval_opt if self._use_fast_impl else COCOeval" in source(COCOEvaluator._eval_predictions)


def test_evaluate_predictions_on_coco():
    from detectron2.evaluation import coco_evaluation

    function = coco_evaluation._evaluate_predictions_on_coco
    assert parameters(function)[:3] == ["coco_gt", "coco_results", "iou_type"]
    assert "cocoeval_fn" in parameters(function)
    assert "coco_eval = cocoeval_fn(coco_gt, coco_dt, iou_type)" in source(function)
    assert "return coco_eval" in source(function)


def test_coco_evaluator_arguments():
    from detectron2.evaluation import COCOEvaluator

    names = parameters(COCOEvaluator.__init__)
    assert names[:2] == ["self", "dataset_name"]
    assert {"tasks", "distributed", "output_dir", "use_fast_impl"} <= set(names)
    assert "self._use_fast_impl = use_fast_impl" in source(COCOEvaluator.__init__)


# ---------------------------------------------------------------------------------------------
# Trainer


def test_trainer_init():
    from detectron2.engine import AMPTrainer, DefaultTrainer, create_ddp_model

    # maskinit.trainer.Trainer.__init__ re-states these steps (the logger set-up aside)
    assert body_lines(DefaultTrainer.__init__) == [
        "super().__init__()",
        "logger = logging.getLogger('detectron2')",
        "if not logger.isEnabledFor(logging.INFO):\n    setup_logger()",
        "cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())",
        "model = self.build_model(cfg)",
        "optimizer = self.build_optimizer(cfg, model)",
        "data_loader = self.build_train_loader(cfg)",
        "model = create_ddp_model(model, broadcast_buffers=False)",
        "self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)",
        "self.scheduler = self.build_lr_scheduler(cfg, optimizer)",
        "self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))",
        "self.start_iter = 0",
        "self.max_iter = cfg.SOLVER.MAX_ITER",
        "self.cfg = cfg",
        "self.register_hooks(self.build_hooks())",
    ]
    assert {"grad_scaler", "precision"} <= set(parameters(AMPTrainer.__init__))
    assert inspect.signature(create_ddp_model).parameters["kwargs"].kind is inspect.Parameter.VAR_KEYWORD


def test_last_eval_results():
    from detectron2.engine import DefaultTrainer

    assert "self._last_eval_results = self.test(self.cfg, self.model)" in source(DefaultTrainer.build_hooks)


def test_eval_hook():
    from detectron2.engine import DefaultTrainer, hooks

    assert parameters(hooks.EvalHook.__init__)[:3] == ["self", "eval_period", "eval_function"]
    lines = source(DefaultTrainer.build_hooks)
    assert "hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results)" in lines
    assert lines.index("hooks.PeriodicCheckpointer(") < lines.index("hooks.EvalHook(")


def test_build_hooks_order():
    from detectron2.engine import DefaultTrainer

    lines = source(DefaultTrainer.build_hooks).splitlines()
    appends = [line.strip() for line in lines if ".append(" in line]
    assert appends[-2].startswith("ret.append(hooks.EvalHook(")
    assert appends[-1].startswith("ret.append(hooks.PeriodicWriter(")  # last: Trainer inserts at -1 before it
    writer = next(i for i, line in enumerate(lines) if "hooks.PeriodicWriter(" in line)
    assert lines[writer - 1].strip() == "if comm.is_main_process():"  # so the insert is at -1 on the main process only
    assert lines[-1].strip() == "return ret"


def test_eval_after_train():
    from detectron2.engine import hooks
    from fvcore.common.checkpoint import PeriodicCheckpointer

    after_train = source(hooks.EvalHook.after_train)
    assert "self.trainer.iter + 1 >= self.trainer.max_iter" in after_train and "self._do_eval()" in after_train
    assert "self.step(self.trainer.iter)" in source(hooks.PeriodicCheckpointer.after_step)
    step = source(PeriodicCheckpointer.step)
    assert "if iteration >= self.max_iter - 1:" in step
    assert "self.checkpointer.save(f'{self.file_prefix}_final', **additional_state)" in step


def test_after_train_in_finally():
    from detectron2.engine import HookBase, TrainerBase

    assert "self.storage.iter = self.iter" in source(TrainerBase.after_train)
    assert "for h in self._hooks:" in source(TrainerBase.after_train)
    seen = []

    class Fails(HookBase):
        def after_step(self):
            raise RuntimeError("boom")

    class Records(HookBase):
        def after_train(self):
            seen.append(sys.exc_info()[1])

    class Steps(TrainerBase):
        def run_step(self):
            pass

    trainer = Steps()
    trainer.register_hooks([Records(), Fails()])
    with pytest.raises(RuntimeError):
        trainer.train(0, 2)
    assert isinstance(seen[0], RuntimeError) and str(seen[0]) == "boom"
    trainer = Steps()
    trainer.register_hooks([Records()])
    trainer.train(0, 1)
    assert seen[1] is None


def test_log_file_handler(tmp_path):
    from detectron2.utils.logger import setup_logger

    from maskinit.worker import on_console

    main = setup_logger(str(tmp_path), distributed_rank=0, name="maskinit_reach_rank0")
    other = setup_logger(str(tmp_path), distributed_rank=1, name="maskinit_reach_rank1")
    try:
        assert [on_console(handler) for handler in main.handlers] == [True, False]
        assert not any(isinstance(handler, logging.FileHandler) for handler in main.handlers + other.handlers)
        assert [handler.stream.name for handler in main.handlers if not on_console(handler)] == [
            str(tmp_path / "log.txt")]
        assert [on_console(handler) for handler in other.handlers] == [False]
    finally:
        for logger in (main, other):
            for handler in logger.handlers:
                handler.flush()
            logger.handlers.clear()


def test_train_loop_exception_log():
    from detectron2.engine import HookBase, TrainerBase, train_loop

    from maskinit.worker import no_console_traceback

    assert train_loop.__name__ == "detectron2.engine.train_loop"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    parent = logging.getLogger("detectron2")  # maskinit's filter sits on this logger's handlers
    parent.addHandler(handler)
    level = parent.level
    parent.setLevel(logging.INFO)

    class Fails(HookBase):
        def __init__(self, error):
            self.error = error

        def before_train(self):
            raise self.error

    class Stop(BaseException):
        pass

    try:
        trainer = TrainerBase()
        trainer.register_hooks([Fails(RuntimeError("boom"))])
        with pytest.raises(RuntimeError):
            trainer.train(0, 1)
        logged = [r for r in records if r.getMessage() == "Exception during training:"]
        assert logged and logged[0].name == "detectron2.engine.train_loop" and logged[0].exc_info
        assert not no_console_traceback(logged[0])
        records.clear()
        trainer = TrainerBase()
        trainer.register_hooks([Fails(Stop())])
        with pytest.raises(Stop):  # a BaseException (TrainingInterrupted) passes through unlogged
            trainer.train(0, 1)
        assert not [r for r in records if r.exc_info]
    finally:
        parent.removeHandler(handler)
        parent.setLevel(level)


def test_divergence_message(tmp_path):
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import EventStorage

    from maskinit.worker import DIVERGED, divergence_message

    losses = {"loss_cls": torch.tensor(float("nan")), "loss_box_reg": torch.tensor(0.5)}
    with EventStorage(0), pytest.raises(FloatingPointError) as error:
        SimpleTrainer.write_metrics(losses, 0.0, 7)
    assert DIVERGED.search(str(error.value)).group(1) == "7"
    found = divergence_message(error.value, str(tmp_path), iteration=0)
    assert found["iteration"] == 7 and found["terms"] == ["loss_cls"], found


def test_adamw_optimizer():
    from detectron2.solver import build

    lines = source(build.build_optimizer)
    assert ("params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm="
            "cfg.SOLVER.WEIGHT_DECAY_NORM, bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias="
            "cfg.SOLVER.WEIGHT_DECAY_BIAS)") in lines
    assert "maybe_add_gradient_clipping(cfg, torch.optim.SGD(**sgd_args))" in lines
    clipping = source(build.maybe_add_gradient_clipping)  # takes an optimizer type as well as an instance
    assert (
        "isinstance(optimizer, torch.optim.Optimizer)" in clipping
        and "issubclass(optimizer, torch.optim.Optimizer)" in clipping
    )


def test_trainer_test_signature():
    from detectron2.engine import DefaultTrainer

    assert isinstance(inspect.getattr_static(DefaultTrainer, "test"), classmethod)
    assert parameters(DefaultTrainer.test) == ["cfg", "model", "evaluators"]


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpointer_save():
    from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer

    # maskinit.checkpoint.AuditedCheckpointer.save re-states these lines, writing atomically
    assert body_lines(Checkpointer.save) == [
        "if not self.save_dir or not self.save_to_disk:\n    return",
        "data = {}",
        "data['model'] = self.model.state_dict()",
        "for key, obj in self.checkpointables.items():\n    data[key] = obj.state_dict()",
        "data.update(kwargs)",
        "basename = '{}.pth'.format(name)",
        "save_file = os.path.join(self.save_dir, basename)",
        "assert os.path.basename(save_file) == basename, basename",
        "self.logger.info('Saving checkpoint to {}'.format(save_file))",
        "with self.path_manager.open(save_file, 'wb') as f:\n    torch.save(data, cast(IO[bytes], f))",
        "self.tag_last_checkpoint(basename)",
    ]
    assert "save_file = os.path.join(self.save_dir, 'last_checkpoint')" in source(Checkpointer.tag_last_checkpoint)
    assert "additional_state = {'iteration': iteration}" in source(PeriodicCheckpointer.step)


def test_checkpointer_load_file():
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer
    from fvcore.common.checkpoint import Checkpointer

    assert parameters(DetectionCheckpointer._load_file) == ["self", "filename"]
    load = source(Checkpointer.load)
    assert "checkpoint = self._load_file(path)" in load and "incompatible = self._load_model(checkpoint)" in load
    assert "self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)" in source(
        DefaultTrainer.resume_or_load
    )


def test_checkpointer_load_model(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from fvcore.common.checkpoint import _IncompatibleKeys

    assert {"missing_keys", "unexpected_keys", "incorrect_shapes"} <= set(_IncompatibleKeys._fields)
    saved = torch.nn.Sequential(torch.nn.Linear(2, 3))
    torch.save({"model": {"0.weight": torch.zeros(4, 2), "extra": torch.zeros(1)}}, tmp_path / "m.pth")
    seen = []

    class Keeping(DetectionCheckpointer):
        def _load_model(self, checkpoint):
            seen.append(super()._load_model(checkpoint))
            return seen[-1]

    Keeping(saved).load(str(tmp_path / "m.pth"), checkpointables=[])
    assert sorted(seen[0].missing_keys) == ["0.bias", "0.weight"] and seen[0].unexpected_keys == ["extra"]
    assert [key for key, *_ in seen[0].incorrect_shapes] == ["0.weight"]


# ---------------------------------------------------------------------------------------------
# Registries, augmentation, mapper


def test_registry_do_register():
    from fvcore.common.registry import Registry

    assert parameters(Registry._do_register) == ["self", "name", "obj"]
    registry = Registry("maskinit_test")
    registry._do_register("a name", len)
    assert "a name" in registry and registry.get("a name") is len
    assert list(registry) == [("a name", len)]
    with pytest.raises(AssertionError):
        registry._do_register("a name", max)


def test_fixed_size_crop():
    from detectron2.data import transforms as T
    from fvcore.transforms.transform import CropTransform, PadTransform

    crop = T.FixedSizeCrop((4, 6))._get_crop(np.zeros((10, 12, 3), np.uint8))
    assert isinstance(crop, CropTransform)
    assert (crop.w, crop.h, crop.orig_w, crop.orig_h) == (6, 4, 12, 10) and 0 <= crop.x0 <= 6 and 0 <= crop.y0 <= 6
    pad = T.FixedSizeCrop((12, 14), pad_value=7.0, seg_pad_value=9)._get_pad(np.zeros((10, 12, 3), np.uint8))
    assert isinstance(pad, PadTransform)
    assert (pad.x0, pad.y0, pad.x1, pad.y1, pad.orig_w, pad.orig_h, pad.pad_value, pad.seg_pad_value) == (
        0, 0, 2, 2, 12, 10, 7.0, 9,
    )
    get_transform = source(T.FixedSizeCrop.get_transform)
    assert (
        "transforms = [self._get_crop(image)]" in get_transform
        and "transforms.append(self._get_pad(image))" in get_transform
    )
    assert "import shapely.geometry as geometry" in source(CropTransform.apply_polygons)
    padded = PadTransform(1, 2, 3, 4, pad_value=5).apply_image(np.zeros((2, 2, 1)))  # re-stated per channel
    assert padded.shape == (8, 6, 1) and padded[0, 0, 0] == 5 and padded[2, 1, 0] == 0


def test_dataset_mapper_call():
    from detectron2.data import DatasetMapper

    # maskinit.data.mapper.ImageMapper.map_image re-states these lines with its own image reader
    assert body_lines(DatasetMapper.__call__) == [
        "dataset_dict = copy.deepcopy(dataset_dict)",
        "image = utils.read_image(dataset_dict['file_name'], format=self.image_format)",
        "utils.check_image_size(dataset_dict, image)",
        "if 'sem_seg_file_name' in dataset_dict:\n"
        "    sem_seg_gt = utils.read_image(dataset_dict.pop('sem_seg_file_name'), 'L').squeeze(2)\n"
        "else:\n    sem_seg_gt = None",
        "aug_input = T.AugInput(image, sem_seg=sem_seg_gt)",
        "transforms = self.augmentations(aug_input)",
        "image, sem_seg_gt = (aug_input.image, aug_input.sem_seg)",
        "image_shape = image.shape[:2]",
        "dataset_dict['image'] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))",
        "if sem_seg_gt is not None:\n    dataset_dict['sem_seg'] = torch.as_tensor(sem_seg_gt.astype('long'))",
        "if self.proposal_topk is not None:\n"
        "    utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)",
        "if not self.is_train:\n    dataset_dict.pop('annotations', None)\n"
        "    dataset_dict.pop('sem_seg_file_name', None)\n    return dataset_dict",
        "if 'annotations' in dataset_dict:\n    self._transform_annotations(dataset_dict, transforms, image_shape)",
        "return dataset_dict",
    ]
    assert parameters(DatasetMapper._transform_annotations) == ["self", "dataset_dict", "transforms", "image_shape"]
    init = source(DatasetMapper.__init__)
    for attribute in ("self.is_train", "self.augmentations", "self.image_format", "self.proposal_topk"):
        assert f"{attribute} = " in init, attribute


def test_lsj_pad_defaults():
    from detectron2.data import transforms as T

    defaults = inspect.signature(T.FixedSizeCrop.__init__).parameters
    assert defaults["pad_value"].default == 128.0 and defaults["seg_pad_value"].default == 255


def test_default_augmentation(tiny_cfg):
    from detectron2.data import DatasetMapper

    from maskinit.augment import build_train_augmentations

    cfg = tiny_cfg.clone()
    cfg.defrost()
    for crop in (False, True):
        cfg.INPUT.CROP.ENABLED = crop
        ours = build_train_augmentations(cfg)
        theirs = DatasetMapper.from_config(cfg, is_train=True)["augmentations"]
        assert [repr(a) for a in ours] == [repr(a) for a in theirs]


def test_dataset_mapper():
    from detectron2.data import DatasetMapper

    names = set(parameters(DatasetMapper.__init__))
    assert {"is_train", "augmentations", "image_format", "use_instance_mask", "instance_mask_format",
            "recompute_boxes"} <= names
    assert hasattr(DatasetMapper, "from_config")  # @configurable: a cfg plus keyword overrides


# ---------------------------------------------------------------------------------------------
# Datasets


@pytest.fixture
def coco_file(tmp_path):
    """A COCO file whose category ids are neither contiguous nor listed in order."""
    from PIL import Image

    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    categories = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    square = [[1, 1, 5, 1, 5, 4, 1, 4]]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": c["id"], "bbox": [1, 1, 4, 3], "area": 12, "iscrowd": 0,
             "segmentation": square}
            for i, c in enumerate(categories)
        ],
        "categories": categories,
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    return path


def test_load_coco_json_id_mapping(coco_file):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    from maskinit.data.coco import inspect_coco

    name = "maskinit_test_internals_ids"
    try:
        load_coco_json(str(coco_file), str(coco_file.parent), name)
        metadata = MetadataCatalog.get(name)
        summary = inspect_coco(coco_file)
        assert list(summary.class_names) == metadata.thing_classes == ["cat", "dog", "zebra"]
        assert summary.dataset_id_to_contiguous_id == metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 90: 2}
    finally:
        MetadataCatalog.remove(name)


def test_register_coco_instances_metadata(coco_file):
    from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    from maskinit.data.coco import register_coco_dataset

    assert (
        "MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type='coco', **metadata)"
        in source(register_coco_instances)
    )
    metadata = Metadata(name="maskinit_test_internals_metadata")
    metadata.thing_classes = ["a"]
    metadata.thing_classes = ["a"]  # the same value again is fine
    with pytest.raises(AssertionError):
        metadata.thing_classes = ["b"]  # a different one is refused
    name = "maskinit_test_internals_registered"
    try:
        register_coco_dataset(name, coco_file, coco_file.parent)
        records = DatasetCatalog.get(name)  # load_coco_json sets the metadata again: it must agree
        assert [a["category_id"] for a in records[0]["annotations"]] == [2, 0, 1]
        assert MetadataCatalog.get(name).evaluator_type == "coco"
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_load_coco_json_annotation_rules():
    from detectron2.data.datasets import coco

    text = source(coco.load_coco_json)
    assert "segm = [poly for poly in segm if len(poly) % 2 == 0 and len(poly) >= 6]" in text
    assert "assert anno.get('ignore', 0) == 0" in text


def test_check_image_size():
    from detectron2.data import detection_utils

    image = np.zeros((3, 4, 3), np.uint8)
    detection_utils.check_image_size({"width": 4.0, "height": 3.0}, image)  # integral floats compare equal
    with pytest.raises(detection_utils.SizeMismatchError):
        detection_utils.check_image_size({"width": 5, "height": 3, "file_name": "x"}, image)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation(tmp_path, orientation):
    from detectron2.data import detection_utils
    from PIL import Image

    from maskinit.data.images import read_image

    assert callable(detection_utils._apply_exif_orientation)
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned{orientation}.png"
    Image.fromarray(pixels).save(path, exif=exif)
    assert np.array_equal(read_image(path), detection_utils.read_image(str(path), format="BGR"))


def test_resize_shortest_edge():
    from types import SimpleNamespace

    from detectron2.data import transforms as T

    from maskinit.data.analysis import resize_factors

    sizes = np.array([[480, 640], [1000, 200], [300, 300], [128, 4000]])
    analysis = SimpleNamespace(image_sizes=sizes, num_images=len(sizes))
    factors = resize_factors(analysis, 800, 1333)
    for (height, width), factor in zip(sizes, factors):
        expected = T.ResizeShortestEdge.get_output_shape(int(height), int(width), 800, 1333)
        assert (int(height * factor + 0.5), int(width * factor + 0.5)) == expected


# ---------------------------------------------------------------------------------------------
# Config, schedules, hooks


def test_auto_scale_workers(tiny_cfg):
    from detectron2.engine import DefaultTrainer

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.REFERENCE_WORLD_SIZE, cfg.SOLVER.BASE_LR = 16, 16, 0.02
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS = 1000, 100, (600, 800)
    cfg.TEST.EVAL_PERIOD, cfg.SOLVER.CHECKPOINT_PERIOD = 200, 500
    scaled = DefaultTrainer.auto_scale_workers(cfg, 32)
    assert scaled.SOLVER.IMS_PER_BATCH == 32 and scaled.SOLVER.BASE_LR == pytest.approx(0.04)
    assert (scaled.SOLVER.MAX_ITER, scaled.SOLVER.WARMUP_ITERS, tuple(scaled.SOLVER.STEPS)) == (500, 50, (300, 400))
    assert (scaled.TEST.EVAL_PERIOD, scaled.SOLVER.CHECKPOINT_PERIOD, scaled.SOLVER.REFERENCE_WORLD_SIZE) == (
        100,
        250,
        32,
    )
    assert cfg.SOLVER.IMS_PER_BATCH == 16  # a new config; the old one is untouched


def test_lr_scheduler_base_lrs(tiny_cfg):
    from detectron2.solver import build_lr_scheduler
    from detectron2.solver.lr_scheduler import LRMultiplier

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS = 0.1, 100, 0, ()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, LRMultiplier)
    scheduler.base_lrs = [0.01]  # what ReduceLROnPlateau does
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # constant after warmup, with STEPS empty
    assert scheduler.state_dict()["base_lrs"] == [0.01]
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"  # the name train.Trainer.build_lr_scheduler sets
    assert isinstance(build_lr_scheduler(cfg, optimizer), LRMultiplier)


def test_time_budget_replan(tiny_cfg):
    from detectron2.engine import HookBase, TrainerBase, hooks
    from detectron2.solver import build_lr_scheduler
    from detectron2.utils.events import CommonMetricPrinter
    from torch.optim.swa_utils import AveragedModel

    lines = body_lines(TrainerBase.train)
    assert lines.index("self.max_iter = max_iter") < next(i for i, line in enumerate(lines) if "EventStorage" in line)
    loop = source(TrainerBase.train)
    assert "self.before_train()\n" in loop and "for self.iter in range(start_iter, max_iter):" in loop
    assert loop.index("self.before_train()") < loop.index("for self.iter in range")
    assert "finally:\n            self.after_train()" in loop

    seen = []

    class Ends(BaseException):
        pass

    class Shortens(HookBase):  # before_train after TrainerBase set max_iter; the loop's range stays
        def before_train(self):
            seen.append(self.trainer.max_iter)
            self.trainer.max_iter = 3

        def after_step(self):
            if self.trainer.iter + 1 >= self.trainer.max_iter:
                raise Ends

        def after_train(self):
            seen.append(self.trainer.iter)

    trainer = TrainerBase()
    trainer.run_step = lambda: None
    trainer.register_hooks([Shortens()])
    with pytest.raises(Ends):
        trainer.train(0, 10)
    assert seen == [10, 2]
    assert [type(hook) for hook in trainer._hooks] == [Shortens]

    assert "self.trainer.max_iter" in source(hooks.EvalHook.after_step)
    assert "self.trainer.max_iter" in source(hooks.PeriodicWriter.after_step)
    assert "self.max_iter = self.trainer.max_iter" in source(hooks.PeriodicCheckpointer.before_train)
    assert "self._writers" in source(hooks.PeriodicWriter.__init__)
    assert "self._max_iter = max_iter" in source(CommonMetricPrinter.__init__)
    assert "return self._scheduler or self.trainer.scheduler" in source(hooks.LRScheduler.scheduler.fget)

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS = 0.1, 100, 10, (50,)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    stepped = build_lr_scheduler(cfg, optimizer)
    for _ in range(60):
        optimizer.step()
        stepped.step()
    expected = optimizer.param_groups[0]["lr"]
    rebuilt = build_lr_scheduler(cfg, optimizer)
    rebuilt.last_epoch = 59
    rebuilt.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected) == pytest.approx(0.01)

    average = AveragedModel(torch.nn.Linear(1, 1))
    average.avg_fn = lambda averaged, current, count: averaged * 0 + 7.0
    average.update_parameters(torch.nn.Linear(1, 1))
    average.update_parameters(torch.nn.Linear(1, 1))
    assert average.module.weight.item() == 7.0


def test_torch_plateau_counters():
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    groups = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    plateau = ReduceLROnPlateau(groups, mode="min", patience=1, factor=0.5, cooldown=1, min_lr=0.3)
    assert plateau.best == plateau.mode_worse == math.inf
    for value in (1.0, 2.0, 2.0):  # the second bad check is beyond patience 1: a reduction, then the cooldown
        plateau.step(value)
    state = plateau.state_dict()
    assert (state["best"], state["num_bad_epochs"], state["cooldown_counter"]) == (1.0, 0, 1)
    assert groups.param_groups[0]["lr"] == 0.5
    groups.param_groups = [
        dict(group) for group in groups.param_groups * 2
    ]  # more groups than at construction: the scalar min_lr for each
    restored = ReduceLROnPlateau(groups, mode="min", patience=1, factor=0.5, min_lr=0.3)
    restored.load_state_dict({"best": 1.0, "num_bad_epochs": 1, "cooldown_counter": 0})
    assert (restored.best, restored.num_bad_epochs, restored.mode) == (1.0, 1, "min")
    restored.step(2.0)
    assert [group["lr"] for group in groups.param_groups] == [0.3, 0.3]  # 0.25, held at min_lr


def test_hook_state_dict():
    from detectron2.engine import HookBase, TrainerBase

    class Stateful(HookBase):
        def __init__(self):
            self.state = {"best": 1.5}

        def state_dict(self):
            return self.state

        def load_state_dict(self, state):
            self.state = state

    trainer = TrainerBase()
    trainer.register_hooks([Stateful(), HookBase()])
    saved = trainer.state_dict()
    assert saved["hooks"] == {Stateful.__qualname__: {"best": 1.5}}
    fresh = TrainerBase()
    hook = Stateful()
    hook.state = {}
    fresh.register_hooks([hook])
    fresh.load_state_dict(saved)
    assert hook.state == {"best": 1.5}


def test_conv2d_norm():
    from detectron2.layers import Conv2d

    conv = Conv2d(2, 2, 1)
    x = torch.randn(1, 2, 3, 3)
    plain = conv(x)
    conv.norm = torch.nn.GroupNorm(1, 2)  # what norms.add_rpn_norm sets on the RPN head's convs
    assert torch.allclose(conv(x), conv.norm(plain))
    # conv, then norm, then activation (lsuv reads the conv's output as the norm's input)
    conv.activation = torch.nn.functional.relu
    seen = []
    conv.norm.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    assert torch.allclose(conv(x), torch.relu(conv.norm(plain)))
    assert torch.allclose(seen[0], torch.nn.functional.conv2d(x, conv.weight, conv.bias))


def test_get_norm_names():
    from detectron2.layers import get_norm

    from maskinit.norms import NORM_REGISTRY

    names = {cls.detectron2_name for _, cls in NORM_REGISTRY if cls.detectron2_name}
    assert {"GN", "SyncBN", "BN", "naiveSyncBN"} <= names
    for name in names:
        assert isinstance(get_norm(name, 32), torch.nn.Module), name


def test_model_module_names(tiny_cfg):
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

    from maskinit.initializers import COMPONENT_PREFIXES, HEAD_PRIOR_STDS

    model = build_model(tiny_cfg)
    names = {name for name, _ in model.named_modules()}
    for name in (
        "backbone.bottom_up.stem", "backbone.bottom_up.res2", "backbone.bottom_up.res5", "backbone.fpn_lateral2",
        "backbone.fpn_output5", "backbone.top_block", "proposal_generator.rpn_head.conv", "roi_heads.box_head",
        "roi_heads.box_predictor.cls_score", "roi_heads.mask_head.predictor",
    ):
        assert name in names, name
    assert set(HEAD_PRIOR_STDS) <= names
    for component, prefixes in COMPONENT_PREFIXES.items():
        assert any(name.startswith(prefix) for prefix in prefixes for name in names), component
    assert list(model.backbone._out_features) == ["p2", "p3", "p4", "p5", "p6"]
    assert hasattr(BasicBlock(8, 8), "conv2") and hasattr(BottleneckBlock(8, 8, bottleneck_channels=4), "conv3")


def test_instances_to_coco_json_ids():
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.structures import Boxes, Instances

    instances = Instances((4, 4))
    instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    instances.scores = torch.tensor([0.9])
    instances.pred_classes = torch.tensor([2])
    assert [r["category_id"] for r in instances_to_coco_json(instances, 1)] == [2]  # contiguous, not mapped


def test_visualizer_jittering():
    from detectron2.utils.visualizer import Visualizer

    assert "jittering" in parameters(Visualizer.draw_instance_predictions)


def test_compiled_ops_module():
    import importlib.util
    from pathlib import Path

    from maskinit.doctor import check_detectron2

    for module in ("detectron2.evaluation.fast_eval_api", "detectron2.layers.deform_conv"):
        assert "from detectron2 import _C" in Path(importlib.util.find_spec(module).origin).read_text(), module
    compiled = importlib.util.find_spec("detectron2._C") is not None
    ops = next(check for check in check_detectron2() if check.name == "detectron2 _C ops")
    assert ops.detail.startswith("compiled ops present" if compiled else "absent")


# ---------------------------------------------------------------------------------------------
# Export and the deploy runner


@pytest.fixture(scope="module")
def untrained_tiny(tiny_cfg):
    from maskinit import build_model

    cfg = tiny_cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    return cfg, build_model(cfg, data_dependent=False).eval()


@pytest.mark.slow
def test_traced_inference(untrained_tiny):
    from detectron2.export import TracingAdapter
    from detectron2.modeling import GeneralizedRCNN

    cfg, model = untrained_tiny
    assert "do_postprocess" in parameters(GeneralizedRCNN.inference)
    assert parameters(TracingAdapter.__init__)[:4] == ["self", "model", "inputs", "inference_func"]
    image = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        instances = model.inference([{"image": image}], do_postprocess=False)[0]
    assert instances.image_size == (96, 128) and len(instances) > 0
    resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION * 2
    assert tuple(instances.pred_masks.shape[1:]) == (1, resolution, resolution)
    assert 0 <= float(instances.pred_masks.min()) and float(instances.pred_masks.max()) <= 1  # probabilities


def test_fast_rcnn_score_thresh():
    from detectron2.modeling.roi_heads import fast_rcnn

    assert "filter_mask = scores > score_thresh" in body_lines(fast_rcnn.fast_rcnn_inference_single_image)
    inference = source(fast_rcnn.FastRCNNOutputLayers.inference)
    assert "self.test_score_thresh" in inference
    readers = {node.name for node in ast.walk(ast.parse(inspect.getsource(fast_rcnn)))
               if isinstance(node, ast.FunctionDef) and "test_score_thresh" in ast.unparse(node)}
    assert readers == {"__init__", "from_config", "inference"}  # set, configured, and read once


def test_detector_postprocess():
    from detectron2.layers import mask_ops
    from detectron2.modeling.postprocessing import detector_postprocess

    lines = body_lines(detector_postprocess)
    for expected in ("output_boxes.scale(scale_x, scale_y)", "output_boxes.clip(results.image_size)",
                     "results = results[output_boxes.nonempty()]"):
        assert expected in lines, expected
    paste = source(mask_ops._do_paste_mask)
    assert "img_y = torch.arange(y0_int, y1_int, device=device, dtype=torch.float32) + 0.5" in paste
    assert "F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)" in paste
    assert "num_chunks = N" in source(mask_ops.paste_masks_in_image)  # on the CPU: one mask at a time


def test_resize_transform_kinds():
    from detectron2.data.transforms import ResizeTransform

    from maskinit.deploy import resize_linear, resize_pillow

    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (40, 50, 1), dtype=np.uint8), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)):
        assert np.array_equal(ResizeTransform(40, 50, 77, 96).apply_image(image).reshape(77, 96, -1),
                              resize_pillow(image, 77, 96))
    image = rng.random((40, 50, 4)).astype(np.float32)
    np.testing.assert_allclose(
        ResizeTransform(40, 50, 77, 96).apply_image(image), resize_linear(image, 77, 96), atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_group_norm_reshape(tmp_path):
    import onnx

    path = tmp_path / "gn.onnx"
    torch.onnx.export(torch.nn.GroupNorm(4, 8), (torch.rand(2, 8, 3, 3),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    graph = onnx.load(str(path)).graph
    constants = {node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t).tolist()
                 for node in graph.node if node.op_type == "Constant"}
    reshapes = [constants.get(node.input[1]) for node in graph.node if node.op_type == "Reshape"]
    assert [0, 4, -1] in reshapes  # what onnxruntime refuses for an empty batch


def test_torchscript_extra_files_layout(tmp_path):
    import zipfile

    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path), _extra_files={"maskinit.json": "{}"})
    with zipfile.ZipFile(path) as archive:
        assert [n for n in archive.namelist() if n.endswith("/extra/maskinit.json")] == ["m/extra/maskinit.json"]


def test_distributed_worker():
    import importlib

    launch_module = importlib.import_module("detectron2.engine.launch")  # the package exports the function `launch`
    # maskinit.launcher re-states these steps: the same global rank, join, local group and barrier
    lines = body_lines(launch_module._distributed_worker)
    assert "global_rank = machine_rank * num_gpus_per_machine + local_rank" in lines
    assert any("dist.init_process_group(backend='NCCL' if has_gpu else 'GLOO', init_method=dist_url, "
               "world_size=world_size, rank=global_rank, timeout=timeout)" in line for line in lines)
    assert "comm.create_local_process_group(num_gpus_per_machine)" in lines
    assert lines[-2:] == ["comm.synchronize()", "main_func(*args)"]
    assert parameters(launch_module.launch) == ["main_func", "num_gpus_per_machine", "num_machines", "machine_rank",
                                                "dist_url", "args", "timeout"]


# ---------------------------------------------------------------------------------------------
# Optuna


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own ask(), outside optimize
def test_optuna_base_heartbeat(tmp_path):
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    from maskinit.tune.storage import open_journal

    assert BaseHeartbeat.__abstractmethods__ == {
        "record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}
    assert parameters(BaseHeartbeat._get_stale_trial_ids) == ["self", "study_id"]
    assert not issubclass(optuna.storages.JournalStorage, BaseHeartbeat)  # else the subclass is not needed
    storage = open_journal(str(tmp_path / "study.log"), grace_period=2)
    assert is_heartbeat_enabled(storage)
    # the optimize loop fails stale trials first, then beats while the objective runs
    optimize_source = inspect.getsource(optuna.study._optimize._run_trial)
    assert "fail_stale_trials(study)" in optimize_source and "get_heartbeat_thread(trial._trial_id" in optimize_source
    study = optuna.create_study(storage=storage, study_name="s")
    stale = study.ask()  # no heartbeat yet: not stale
    storage.record_heartbeat(stale._trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == []
    import time

    time.sleep(2.5)
    assert storage._get_stale_trial_ids(study._study_id) == [stale._trial_id]


def test_optuna_rdb_engine(tmp_path):
    import inspect

    import optuna
    import sqlalchemy

    from maskinit.tune.storage import open_storage

    source = inspect.getsource(optuna.storages.RDBStorage.set_trial_state_values)
    assert "for_update=True" in source  # the read, then the check, in one transaction
    assert "state == TrialState.RUNNING and trial.state != TrialState.WAITING" in source
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert isinstance(storage.engine, sqlalchemy.engine.Engine)
    with storage.engine.connect() as connection:  # the listeners are on: the transaction holds the write lock
        connection.exec_driver_sql("SELECT 1")
        assert connection.connection.dbapi_connection.in_transaction


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_retry_history():
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from maskinit.tune.storage import retry_trial

    for callback in (RetryHeartbeatStaleTrialCallback(), retry_trial):
        study = optuna.create_study()
        first = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(first, state=optuna.trial.TrialState.FAIL)
        callback(study, study.trials[0])
        retried = study.trials[1]
        again = study.ask()
        study.tell(again, state=optuna.trial.TrialState.FAIL)
        callback(study, study.trials[1])
        assert retried.params == study.trials[0].params
        assert RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[2]) == 0
        assert RetryHeartbeatStaleTrialCallback.retry_history(study.trials[2]) == [0, 1]
