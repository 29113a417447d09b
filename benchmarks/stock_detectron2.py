"""Stock Detectron2, run by its own DefaultTrainer (no maskinit code in the model or the loop).

Usage: stock_detectron2.py RECIPE OUTPUT_DIR --lr LR --seed S [--heldout | --train-json J --train-images D
       --val-json J --val-images D] [--iters N] [--scale tiny|r50] [--eval-period N]
       [--checkpoint-period N] [--resume] [KEY VALUE ...]
RECIPE: naive (mask_rcnn_R_50_FPN_3x with only MODEL.WEIGHTS ""), scratch-gn
(Misc/scratch_mask_rcnn_R_50_FPN_3x_gn), scratch-syncbn (Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn),
each transcribed to the scale (tiny: the tiny preset's ResNet-18 FPN at 128 pixels; r50: the zoo
config's R50-FPN at batch 4) and the benchmark's budget (N iterations, warmup and LR step scaled
from 80 and 320 of 400). Data: the embedded synthetic set (or --heldout), or any COCO set by path;
MODEL.ROI_HEADS.NUM_CLASSES is the number of categories the training JSON lists (Detectron2 maps
their ids, whatever they are, to 0..N-1 in sorted order); INPUT.MASK_FORMAT is bitmask when the
training masks include RLE. Trailing KEY VALUE pairs are applied last
(e.g. INPUT.* sizes). Writes OUTPUT_DIR/result.json. --checkpoint-period N and --resume (Detectron2's own
resume_or_load) let a long run (R50 on CPU) be stopped and continued; its s/iter is then that of the
last part.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ITERS, R50_SCALE, TINY_SCALE, CocoSet, budget, synthetic_set  # noqa: E402

ZOO = {
    "naive": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "scratch-gn": "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml",
    "scratch-syncbn": "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml",
}
SCALES = {"tiny": TINY_SCALE, "r50": R50_SCALE}


def data_set(args) -> CocoSet:
    given = [args.train_json, args.train_images, args.val_json, args.val_images]
    if any(given):
        if not all(given):
            raise SystemExit("--train-json, --train-images, --val-json and --val-images go together")
        return CocoSet("user", *(Path(p) for p in given))
    return synthetic_set(args.heldout)


def check_categories(dataset: CocoSet) -> int:
    """The number of classes; the validation JSON must list the same categories (ids and names), as
    Detectron2's COCOEvaluator maps its ids with the training set's mapping."""
    train, val = dataset.categories("train"), dataset.categories("val")
    key = [(int(c["id"]), c["name"]) for c in train]
    if key != [(int(c["id"]), c["name"]) for c in val]:
        raise SystemExit(f"{dataset.val_json} lists other categories than {dataset.train_json}: "
                         "stock Detectron2 would evaluate against the wrong classes")
    return len(train)


def mask_format(dataset: CocoSet) -> list[str]:
    """`INPUT.MASK_FORMAT bitmask` where the training masks include RLE: stock Detectron2 reads only
    polygons by default and stops at the first RLE mask, so its users set this key (the one thing the
    comparator is given beyond the zoo config, the scale and the budget; maskinit sets it itself)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from maskinit.data.coco import inspect_coco

    found = inspect_coco(dataset.train_json).mask_format
    return ["INPUT.MASK_FORMAT", found] if found != "polygon" else []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", choices=sorted(ZOO))
    parser.add_argument("output_dir")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", action="store_true")
    parser.add_argument("--train-json")
    parser.add_argument("--train-images")
    parser.add_argument("--val-json")
    parser.add_argument("--val-images")
    parser.add_argument("--iters", type=int, default=ITERS, help="budget: warmup and the LR step scale with it")
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--eval-period", type=int, default=0)
    parser.add_argument("--checkpoint-period", type=int, default=0, help="save every N iterations (0: only at the end)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint (Detectron2's resume)"
    )
    args, args.opts = parser.parse_known_args()
    if any(opt.startswith("--") for opt in args.opts[::2]):
        parser.error(f"unknown option(s): {[opt for opt in args.opts[::2] if opt.startswith('--')]}")

    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator
    from detectron2.utils.logger import setup_logger

    dataset = data_set(args)
    num_classes = check_categories(dataset)
    register_coco_instances("bench_train", {}, str(dataset.train_json), str(dataset.train_images))
    register_coco_instances("bench_val", {}, str(dataset.val_json), str(dataset.val_images))
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(ZOO[args.recipe]))
    cfg.merge_from_list(
        SCALES[args.scale]
        + budget(args.iters)
        + [
            "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "SOLVER.BASE_LR", str(args.lr),
            "SEED", str(args.seed), "TEST.EVAL_PERIOD", str(args.eval_period), "SOLVER.CHECKPOINT_PERIOD",
            str(args.checkpoint_period or 100000), "DATASETS.TRAIN", "('bench_train',)", "DATASETS.TEST",
            "('bench_val',)", "OUTPUT_DIR", args.output_dir,
        ]
        + mask_format(dataset)
        + args.opts
    )
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(args.output_dir, "config.yaml").write_text(cfg.dump())
    setup_logger(args.output_dir)

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    started = time.perf_counter()
    status = "finished"
    try:
        trainer.train()
    except FloatingPointError as error:
        status = f"diverged: {str(error).splitlines()[0]}"
    history = trainer.storage.history("time") if "time" in trainer.storage.histories() else None
    results = getattr(trainer, "_last_eval_results", {}) if status == "finished" else {}
    out = {
        "runner": "detectron2 DefaultTrainer",
        "recipe": args.recipe, "lr": args.lr, "seed": args.seed, "heldout": args.heldout, "status": status,
        "scale": args.scale, "iters": args.iters, "num_classes": num_classes, "train_json": str(dataset.train_json),
        "seconds_per_iter": history.global_avg() if history else None,
        "seconds": time.perf_counter() - started,
        "box_ap": results.get("bbox", {}).get("AP", 0.0) if results else 0.0,
        "mask_ap": results.get("segm", {}).get("AP", 0.0) if results else 0.0,
    }
    Path(args.output_dir, "result.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
