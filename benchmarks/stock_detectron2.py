"""Stock Detectron2, run by its own DefaultTrainer (no maskinit code in the model or the loop).

Usage: stock_detectron2.py RECIPE OUTPUT_DIR --lr LR --seed S [--heldout] [--eval-period N] [KEY VALUE ...]
RECIPE: naive (mask_rcnn_R_50_FPN_3x with only MODEL.WEIGHTS ""), scratch-gn
(Misc/scratch_mask_rcnn_R_50_FPN_3x_gn), scratch-syncbn (Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn),
each transcribed to the tiny scale and the benchmark's budget. Writes OUTPUT_DIR/result.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BUDGET, TINY_SCALE, datasets  # noqa: E402

ZOO = {
    "naive": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "scratch-gn": "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml",
    "scratch-syncbn": "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", choices=sorted(ZOO))
    parser.add_argument("output_dir")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", action="store_true")
    parser.add_argument("--eval-period", type=int, default=0)
    args, args.opts = parser.parse_known_args()

    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator
    from detectron2.utils.logger import setup_logger

    train, val = datasets(args.heldout)
    register_coco_instances("bench_train", {}, str(train.json_file), str(train.image_root))
    register_coco_instances("bench_val", {}, str(val.json_file), str(val.image_root))
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(ZOO[args.recipe]))
    cfg.merge_from_list(TINY_SCALE + BUDGET + [
        "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "5", "SOLVER.BASE_LR", str(args.lr),
        "SEED", str(args.seed), "TEST.EVAL_PERIOD", str(args.eval_period), "SOLVER.CHECKPOINT_PERIOD", "100000",
        "DATASETS.TRAIN", "('bench_train',)", "DATASETS.TEST", "('bench_val',)", "OUTPUT_DIR", args.output_dir,
    ] + args.opts)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(args.output_dir, "config.yaml").write_text(cfg.dump())
    setup_logger(args.output_dir)

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
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
        "seconds_per_iter": history.global_avg() if history else None,
        "seconds": time.perf_counter() - started,
        "box_ap": results.get("bbox", {}).get("AP", 0.0) if results else 0.0,
        "mask_ap": results.get("segm", {}).get("AP", 0.0) if results else 0.0,
    }
    Path(args.output_dir, "result.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
