"""Every place maskinit relies on Detectron2, fvcore or Optuna internals, in one list.

Internals here means: a private name (a leading `_`), a module global patched at run time, a public
function whose body maskinit re-states with changes, a message or a logger name it matches, or a
behaviour that is not part of the documented API (an ordering, a default, an id mapping).

Checked against **Detectron2 0.7.2** and **fvcore 0.1.5.post20221221** (with iopath 0.1.9, torch
2.13.0, Pillow 13.0.0, onnxruntime 1.32.0 and Optuna 5.0.0). `tests/test_internals.py` has one test per entry, named
`test_<entry>`: it checks that the upstream thing still has the shape relied on (a signature, the re-stated
source lines, an attribute, a behaviour), so that an upgrade that moves one of them fails there, by name,
instead of deep in a training run. When upgrading, run that file first, then update the versions above.

Entries (`where` is the maskinit code that relies on it):

- `fast_cocoeval_slot`: evaluation (`_install_faster_coco_eval`, `_detectron2_has_fast_eval`,
  `_cocoeval_class`). The module global `detectron2.evaluation.coco_evaluation.COCOeval_opt`: it
  holds pycocotools' `COCOeval` when Detectron2's `_C` is missing, and `COCOEvaluator` reads it at
  evaluation time (`COCOeval_opt if self._use_fast_impl else COCOeval`). maskinit puts
  faster-coco-eval's class into that empty slot.
- `evaluate_predictions_on_coco`: evaluation.coco_summary_stats. The private
  `coco_evaluation._evaluate_predictions_on_coco(coco_gt, coco_results, iou_type, cocoeval_fn=...)`,
  which returns the evaluated COCOeval (its `.stats`).
- `coco_evaluator_arguments`: evaluation.build_evaluator. `COCOEvaluator(dataset_name, tasks=,
  distributed=, output_dir=, use_fast_impl=)` and its private `_use_fast_impl` (read by the tests).
- `trainer_init`: trainer.Trainer.__init__ re-states `DefaultTrainer.__init__` step by step, with DDP
  without device_ids on CPU, AMP in bf16 and the audited checkpointer; it also relies on
  `AMPTrainer(grad_scaler=, precision=)` and `create_ddp_model(model, **ddp_kwargs)`.
- `last_eval_results`: worker.worker reads `trainer._last_eval_results`, which the closure in
  `DefaultTrainer.build_hooks` sets after every evaluation; trainer.Trainer.hooks_with_ema re-states
  that closure (evaluating on the weight average).
- `eval_hook`: trainer.Trainer.hooks_with_ema replaces Detectron2's `EvalHook` by
  `EvalHook(eval_period, eval_function)` (the same period, the closure above) and places the
  `EMAHook` before the first `PeriodicCheckpointer` or `EvalHook` of `DefaultTrainer.build_hooks`.
- `build_hooks_order`: trainer.Trainer.build_hooks inserts ReduceLROnPlateau at index -1 on the main
  process: after `EvalHook` (a fresh AP is in the storage), before `PeriodicWriter`, which
  `DefaultTrainer.build_hooks` appends last.
- `eval_after_train`: worker.worker (an interrupt during the final evaluation keeps `model_final.pth`)
  relies on `EvalHook.after_train` evaluating once more when `trainer.iter + 1 >= max_iter`, after
  fvcore's `PeriodicCheckpointer` saved `model_final` at the last iteration.
- `train_loop_exception_log`: worker.no_console_traceback and hooks.TrainingInterrupted. Detectron2's
  `TrainerBase.train` catches `Exception` only (so a `BaseException` passes through untouched) and
  logs it with `logger.exception("Exception during training:")` on the logger
  `detectron2.engine.train_loop`, whose records reach the `detectron2` logger's handlers.
- `after_train_in_finally`: trainer.Trainer.after_train re-states `TrainerBase.after_train` (`storage.iter
  = iter`, then every hook's `after_train`) and relies on `TrainerBase.train` calling it in the `finally`
  of its loop: during a failure, `sys.exc_info()` holds the exception the loop propagates.
- `log_file_handler`: worker.on_console tells Detectron2's console handler from its log file's:
  `setup_logger` writes the file through a plain `logging.StreamHandler` on a cached file stream (no
  `FileHandler`) and the console through a `StreamHandler` on `sys.stdout` (rank 0 only).
- `divergence_message`: worker.DIVERGED and worker.BAD_TERM parse the `FloatingPointError` of
  `SimpleTrainer.write_metrics`: "Loss became infinite or NaN at iteration=N!" and the loss dict's repr.
- `adamw_optimizer`: trainer.Trainer.build_optimizer re-states `detectron2.solver.build_optimizer` for
  Adam/AdamW: `get_default_optimizer_params(model, base_lr=, weight_decay_norm=, bias_lr_factor=,
  weight_decay_bias=)` and `maybe_add_gradient_clipping(cfg, optimizer type)`.
- `checkpointer_save`: checkpoint.AuditedCheckpointer.save and tag_last_checkpoint re-state fvcore's
  `Checkpointer.save` (the saved dict, `<name>.pth`, `last_checkpoint`), written atomically; fvcore's
  `PeriodicCheckpointer` passes `iteration=` to it.
- `checkpointer_load_file`: checkpoint.AuditedCheckpointer._load_file records each file: fvcore's
  `Checkpointer.load` reads every file through the private `_load_file(filename)` (a dict with
  "model"), and `DefaultTrainer.resume_or_load` loads only through the checkpointer.
- `checkpointer_load_model`: checkpoint._CheckingCheckpointer._load_model keeps what the private
  `_load_model(checkpoint)` returns: fvcore's `_IncompatibleKeys` (missing_keys, unexpected_keys,
  incorrect_shapes), which Detectron2 only logs.
- `registry_do_register`: initializers.register_initializer and norms.register_norm register under
  a chosen name with fvcore's private `Registry._do_register(name, obj)` (a repeated name is an
  AssertionError); the CLI iterates a registry as (name, object) pairs.
- `fixed_size_crop`: augment.FixedSizeCrop overrides the private `T.FixedSizeCrop._get_crop(image)`,
  which returns a `CropTransform` (x0, y0, w, h, orig_w, orig_h), and `_get_pad(image)`, which returns
  a `PadTransform` (x0, y0, x1, y1, orig_w, orig_h, pad_value, seg_pad_value); augment.ClippingCropTransform
  replaces fvcore's `CropTransform.apply_polygons`, which needs shapely, and augment.ChannelPadTransform
  re-states `PadTransform.apply_image` (`np.pad` of ((y0, y1), (x0, x1)) with a constant).
- `lsj_pad_defaults`: augment.build_train_augmentations states Detectron2's `FixedSizeCrop` defaults
  (pad_value 128.0, seg_pad_value 255) as the LSJ configs use them.
- `default_augmentation`: augment.build_train_augmentations re-states `DatasetMapper.from_config`:
  `build_augmentation(cfg, is_train)` with `RandomCrop` inserted first when `INPUT.CROP.ENABLED`.
- `dataset_mapper`: augment.build_train_mapper (`DatasetMapper(cfg, is_train=True, augmentations=,
  recompute_boxes=True)`), batches.coco_batch (explicit keyword arguments) and
  visualize.save_comparisons (`DatasetMapper(cfg, is_train=False)`).
- `dataset_mapper_call`: data.mapper.ImageMapper.map_image re-states `DatasetMapper.__call__` with
  maskinit's image reader (size check, augmentation, tensor, proposals, annotations) and calls its
  private `_transform_annotations(dataset_dict, transforms, image_shape)`; it reads the mapper's
  `augmentations`, `image_format`, `proposal_topk` and `is_train` attributes.
- `register_coco_instances_metadata`: data.coco.register_coco_dataset sets `thing_classes` and
  `thing_dataset_id_to_contiguous_id` when registering; `load_coco_json` sets them again when the
  data is first read, and `Metadata` refuses a different value (AssertionError), so both must agree.
- `load_coco_json_id_mapping`: data.coco.inspect_coco (and data.analysis) re-state
  `load_coco_json`'s class order: classes by category id, ids mapped to 0..N-1 in sorted order.
- `load_coco_json_annotation_rules`: data.validate re-states what `load_coco_json` refuses or drops:
  `ignore` other than 0 (an assertion), polygons of odd length or fewer than 6 coordinates.
- `check_image_size`: data.validate (sizes as integral floats pass) re-states
  `detection_utils.check_image_size`, which compares (width, height) with `==`.
- `exif_orientation`: data.images.read_image and data.image_files turn images as Detectron2's
  `read_image` does with the private `detection_utils._apply_exif_orientation` (5-8 transpose).
- `resize_shortest_edge`: data.analysis.resize_factors re-states
  `ResizeShortestEdge.get_output_shape`: scale min(short / shorter side, max / longer side).
- `auto_scale_workers`: config.build.apply_ims_per_batch calls `DefaultTrainer.auto_scale_workers` with the
  old batch as `REFERENCE_WORLD_SIZE`, relying on its arithmetic (batch and LR times the scale;
  MAX_ITER, WARMUP_ITERS, STEPS, EVAL_PERIOD, CHECKPOINT_PERIOD divided by it).
- `lr_scheduler_base_lrs`: hooks.ReduceLROnPlateau scales `trainer.scheduler.base_lrs`; Detectron2's
  `build_lr_scheduler` returns an `LRMultiplier` whose LR is base LR times its multiplier and whose
  `state_dict` keeps `base_lrs` (so resume restores a reduction); trainer.Trainer.build_lr_scheduler
  names `WarmupCosineLR`, and empties `SOLVER.STEPS` for a constant LR.
- `time_budget_replan`: time_budget.TimeBudgetHook and trainer.Trainer.train (`--time`).
  `TrainerBase.train(start_iter, max_iter)` sets `self.max_iter` before the hooks' `before_train` and loops
  over a `range` fixed at its start (so the loop runs to the longest the run may grow to, and a
  `BaseException` from the last hook's `after_step` ends it, with `after_train` still run); `EvalHook` and
  `PeriodicWriter` read `trainer.max_iter` at each step; fvcore's `PeriodicCheckpointer` keeps its own
  `max_iter` (set in Detectron2's hook's `before_train`); `CommonMetricPrinter` keeps the private `_max_iter`
  (its ETA), `PeriodicWriter` its writers in the private `_writers` and the trainer its hooks in the private
  `_hooks`; Detectron2's `LRScheduler` hook built without a scheduler steps `trainer.scheduler` (so a rebuilt
  one takes over); an `LRMultiplier` with `last_epoch` set to N - 1 and stepped once gives the LR of iteration
  N; `AveragedModel` applies its `avg_fn` attribute at each update.
- `torch_plateau_counters`: hooks.ReduceLROnPlateau saves and restores torch's `ReduceLROnPlateau` through its
  `state_dict`/`load_state_dict` keys `best`, `num_bad_epochs` and `cooldown_counter` (its attributes of those
  names), reads `mode_worse` (the best before any value), and lets it lower a stand-in optimizer's param groups
  (`param_groups[i]["lr"]`, with a scalar `min_lr` for any number of groups).
- `hook_state_dict`: hooks.ReduceLROnPlateau.state_dict and ema.EMAHook.state_dict are saved with the checkpoint because
  `TrainerBase.state_dict` collects each hook's non-empty `state_dict()` under
  `type(hook).__qualname__`, and `load_state_dict` gives it back.
- `conv2d_norm`: norms.add_rpn_norm sets `.norm` on the RPN head's Detectron2 `Conv2d`, whose
  forward applies `self.norm` when it is not None; lsuv measures a layer's own output as the input
  of that `.norm` (a pre-hook), or recomputes `F.conv2d` for a conv with an activation only: the
  forward is conv, then `self.norm`, then `self.activation`.
- `get_norm_names`: each norms variant's `detectron2_name` (GN, SyncBN, BN, naiveSyncBN) is a name
  `detectron2.layers.get_norm` builds.
- `model_module_names`: initializers (COMPONENT_PREFIXES, HEAD_PRIOR_STDS, residual_last_norms),
  norms.add_rpn_norm and diagnostics._stage_modules name GeneralizedRCNN's submodules:
  `backbone.bottom_up.{stem,res2..res5}`, `backbone.fpn_{lateral,output}N`, `backbone.top_block`,
  the private `backbone._out_features`, `proposal_generator.rpn_head.{conv,objectness_logits,
  anchor_deltas}`, `roi_heads.{box_head,box_predictor.{cls_score,bbox_pred},mask_head.predictor}`,
  and the last conv of `BasicBlock` (conv2) and `BottleneckBlock` (conv3).
- `instances_to_coco_json_ids`: visualize.predict maps `category_id` itself: `instances_to_coco_json`
  returns contiguous class indices (COCOEvaluator maps them to dataset ids afterwards).
- `visualizer_jittering`: visualize.draw_predictions passes `jittering=False` to
  `Visualizer.draw_instance_predictions`.
- `trainer_test_signature`: trainer.Trainer.test overrides the classmethod `DefaultTrainer.test(cfg,
  model, evaluators=None)` to mark evaluations.
- `compiled_ops_module`: doctor.check_detectron2 imports `detectron2._C` to tell whether the compiled
  ops are there; Detectron2's fast COCOeval imports it from there too.
- `traced_inference`: export._inference traces `GeneralizedRCNN.inference(batched_inputs,
  do_postprocess=False)` through `TracingAdapter(model, inputs, inference_func)`, as Detectron2's
  `tools/deploy/export_model.py` does: one `Instances` in the input's pixels whose `pred_masks` are the
  mask head's (N, 1, M, M) probabilities, so that the masks survive the export.
- `fast_rcnn_score_thresh`: export._inference sets `FastRCNNOutputLayers.test_score_thresh` to a 0-dim
  tensor (the graph's second input): `fast_rcnn_inference_single_image` compares `scores >
  score_thresh` before NMS and the top-k, and reads it from nowhere else.
- `detector_postprocess`: deploy.runner.postprocess and paste_masks re-state `detector_postprocess`
  (scale by output size / input size, clip, drop empty boxes) and `_do_paste_mask` on the CPU (one
  mask at a time over its box's pixels plus one, `grid_sample(align_corners=False)`, threshold >= 0.5).
- `resize_transform_kinds`: deploy.runner.ExportedModel.model_input re-states `ResizeTransform.apply_image`:
  Pillow's bilinear resize for uint8 images (mode "L" for one channel), `F.interpolate(bilinear,
  align_corners=False)` for every other type (as data.mapper relies on too), and
  `ResizeShortestEdge.get_output_shape` (deploy.runner.resize_shape, as `resize_shortest_edge`).
- `onnx_group_norm_reshape`: export.ShapedGroupNorm exists because torch's TorchScript-based ONNX
  exporter (`torch.onnx.export(..., dynamo=False)`) writes `aten::group_norm` as a Reshape to (0, groups,
  -1), which onnxruntime refuses for an empty batch (a mask head on zero boxes).
- `torchscript_extra_files_layout`: deploy.runner reads `torch.jit.save(..., _extra_files=)` entries
  from the archive as `<archive name>/extra/<file>` with `zipfile` (no torch needed to read the settings).
- `distributed_worker`: launcher.join_group and launcher.launch re-state Detectron2's `launch` and its
  private `detectron2.engine.launch._distributed_worker`: global rank = machine rank x processes per
  machine + local rank, `init_process_group(init_method=dist_url, world_size=, rank=, timeout=)`, then
  `comm.create_local_process_group(processes per machine)` and `comm.synchronize()`; with gloo for a CPU
  run, `torch.cuda.set_device(local rank)` before the join, and the children's PIDs known to the parent.
- `optuna_base_heartbeat`: tune.storage.HeartbeatJournalStorage subclasses Optuna's private
  `optuna.storages._heartbeat.BaseHeartbeat` (`record_heartbeat(trial_id)`, `_get_stale_trial_ids(study_id)`,
  `get_heartbeat_interval()`, `get_heartbeat_stale_trial_callback()`): `Study.optimize` beats and
  `fail_stale_trials` fails stale trials only for a storage that is one, and `JournalStorage` is not.
- `optuna_rdb_engine`: tune.storage.serialized_sqlite adds SQLAlchemy event listeners to
  `RDBStorage.engine` (an attribute, not documented API), and relies on `RDBStorage.set_trial_state_values`
  marking a waiting trial running only after reading, in the same transaction, that it is waiting.
- `optuna_retry_history`: tune.storage.retry_trial writes, and tune.report.trial_row and
  tune.storage.fail_stale_trials read, the `failed_trial` and `retry_history` system attributes in the
  format of `RetryHeartbeatStaleTrialCallback` (its `retried_trial_number` and `retry_history`).
"""

from __future__ import annotations

from typing import NamedTuple

DETECTRON2_VERSION = "0.7.2"
FVCORE_VERSION = "0.1.5.post20221221"


class Reach(NamedTuple):
    where: str  # the maskinit code that relies on it
    upstream: str  # the Detectron2 / fvcore name it relies on


REACHES: dict[str, Reach] = {
    "fast_cocoeval_slot": Reach(
        "evaluation._install_faster_coco_eval", "detectron2.evaluation.coco_evaluation.COCOeval_opt"
    ),
    "evaluate_predictions_on_coco": Reach(
        "evaluation.coco_summary_stats", "detectron2.evaluation.coco_evaluation._evaluate_predictions_on_coco"
    ),
    "coco_evaluator_arguments": Reach("evaluation.build_evaluator", "detectron2.evaluation.COCOEvaluator"),
    "trainer_init": Reach("trainer.Trainer.__init__", "detectron2.engine.DefaultTrainer.__init__"),
    "last_eval_results": Reach(
        "worker.worker, trainer.Trainer.hooks_with_ema", "detectron2.engine.DefaultTrainer._last_eval_results"
    ),
    "eval_hook": Reach("trainer.Trainer.hooks_with_ema", "detectron2.engine.hooks.EvalHook.__init__"),
    "build_hooks_order": Reach("trainer.Trainer.build_hooks", "detectron2.engine.DefaultTrainer.build_hooks"),
    "eval_after_train": Reach("worker.worker", "detectron2.engine.hooks.EvalHook.after_train"),
    "train_loop_exception_log": Reach("worker.no_console_traceback", "detectron2.engine.train_loop.TrainerBase.train"),
    "after_train_in_finally": Reach("trainer.Trainer.after_train", "detectron2.engine.train_loop.TrainerBase.train"),
    "log_file_handler": Reach("worker.on_console", "detectron2.utils.logger.setup_logger"),
    "divergence_message": Reach("worker.divergence_message", "detectron2.engine.SimpleTrainer.write_metrics"),
    "adamw_optimizer": Reach("trainer.Trainer.build_optimizer", "detectron2.solver.build_optimizer"),
    "checkpointer_save": Reach("checkpoint.AuditedCheckpointer.save", "fvcore.common.checkpoint.Checkpointer.save"),
    "checkpointer_load_file": Reach(
        "checkpoint.AuditedCheckpointer._load_file", "fvcore.common.checkpoint.Checkpointer._load_file"
    ),
    "checkpointer_load_model": Reach(
        "checkpoint._CheckingCheckpointer._load_model", "fvcore.common.checkpoint.Checkpointer._load_model"
    ),
    "registry_do_register": Reach(
        "initializers.register_initializer, norms.register_norm", "fvcore.common.registry.Registry._do_register"
    ),
    "fixed_size_crop": Reach(
        "augment.FixedSizeCrop, augment.ChannelPadTransform",
        "detectron2.data.transforms.FixedSizeCrop._get_crop/_get_pad",
    ),
    "lsj_pad_defaults": Reach("augment.build_train_augmentations", "detectron2.data.transforms.FixedSizeCrop.__init__"),
    "default_augmentation": Reach("augment.build_train_augmentations", "detectron2.data.DatasetMapper.from_config"),
    "dataset_mapper": Reach(
        "augment.build_train_mapper, batches.coco_batch, visualize.save_comparisons",
        "detectron2.data.DatasetMapper.__init__",
    ),
    "dataset_mapper_call": Reach("data.mapper.ImageMapper.map_image", "detectron2.data.DatasetMapper.__call__"),
    "register_coco_instances_metadata": Reach(
        "data.coco.register_coco_dataset", "detectron2.data.datasets.register_coco_instances"
    ),
    "load_coco_json_id_mapping": Reach("data.coco.inspect_coco", "detectron2.data.datasets.load_coco_json"),
    "load_coco_json_annotation_rules": Reach("data.validate", "detectron2.data.datasets.load_coco_json"),
    "check_image_size": Reach("data.validate", "detectron2.data.detection_utils.check_image_size"),
    "exif_orientation": Reach(
        "data.images.read_image, data.image_files", "detectron2.data.detection_utils._apply_exif_orientation"
    ),
    "resize_shortest_edge": Reach(
        "data.analysis.resize_factors", "detectron2.data.transforms.ResizeShortestEdge.get_output_shape"
    ),
    "auto_scale_workers": Reach(
        "config.build.apply_ims_per_batch", "detectron2.engine.DefaultTrainer.auto_scale_workers"
    ),
    "lr_scheduler_base_lrs": Reach(
        "hooks.ReduceLROnPlateau, trainer.Trainer.build_lr_scheduler", "detectron2.solver.lr_scheduler.LRMultiplier"
    ),
    "torch_plateau_counters": Reach("hooks.ReduceLROnPlateau", "torch.optim.lr_scheduler.ReduceLROnPlateau.state_dict"),
    "hook_state_dict": Reach(
        "hooks.ReduceLROnPlateau.state_dict, ema.EMAHook.state_dict",
        "detectron2.engine.train_loop.TrainerBase.state_dict",
    ),
    "conv2d_norm": Reach("norms.add_rpn_norm, lsuv (its hooks)", "detectron2.layers.Conv2d.forward"),
    "get_norm_names": Reach("norms (detectron2_name of each variant)", "detectron2.layers.get_norm"),
    "model_module_names": Reach(
        "initializers, norms.add_rpn_norm, diagnostics._stage_modules", "detectron2.modeling.GeneralizedRCNN"
    ),
    "instances_to_coco_json_ids": Reach(
        "visualize.predict", "detectron2.evaluation.coco_evaluation.instances_to_coco_json"
    ),
    "visualizer_jittering": Reach(
        "visualize.draw_predictions", "detectron2.utils.visualizer.Visualizer.draw_instance_predictions"
    ),
    "trainer_test_signature": Reach("trainer.Trainer.test", "detectron2.engine.DefaultTrainer.test"),
    "compiled_ops_module": Reach("doctor.check_detectron2", "detectron2._C"),
    "traced_inference": Reach("export._inference", "detectron2.modeling.GeneralizedRCNN.inference"),
    "fast_rcnn_score_thresh": Reach(
        "export._inference", "detectron2.modeling.roi_heads.fast_rcnn.fast_rcnn_inference_single_image"
    ),
    "detector_postprocess": Reach(
        "deploy.runner.postprocess, deploy.runner.paste_masks",
        "detectron2.modeling.postprocessing.detector_postprocess",
    ),
    "resize_transform_kinds": Reach(
        "deploy.runner.ExportedModel.model_input", "detectron2.data.transforms.ResizeTransform.apply_image"
    ),
    "onnx_group_norm_reshape": Reach(
        "export.ShapedGroupNorm", "torch.onnx (TorchScript-based exporter) aten::group_norm"
    ),
    "torchscript_extra_files_layout": Reach("deploy.runner.read_metadata", "torch.jit.save(_extra_files=)"),
    "distributed_worker": Reach("launcher.join_group, launcher.launch", "detectron2.engine.launch._distributed_worker"),
    "optuna_base_heartbeat": Reach("tune.storage.HeartbeatJournalStorage", "optuna.storages._heartbeat.BaseHeartbeat"),
    "optuna_rdb_engine": Reach("tune.storage.serialized_sqlite", "optuna.storages.RDBStorage.engine"),
    "time_budget_replan": Reach(
        "time_budget.TimeBudgetHook, trainer.Trainer.train", "detectron2.engine.train_loop.TrainerBase.train"
    ),
    "optuna_retry_history": Reach(
        "tune.storage.retry_trial, tune.report.trial_row", "optuna.storages.RetryHeartbeatStaleTrialCallback"
    ),
}
