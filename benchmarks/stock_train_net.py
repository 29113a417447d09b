"""Detectron2's tools/train_net.py, reduced to training (the wheel does not ship tools/): stock
DefaultTrainer on a config file, on N processes through Detectron2's `launch`.

Usage: stock_train_net.py --config-file FILE [--num-gpus N] [--coco NAME JSON IMAGES ...] [KEY VALUE ...]
Each --coco registers a COCO set (Detectron2's register_coco_instances, which maps any category ids
to 0..N-1). When DATASETS.TRAIN names a --coco set and MODEL.ROI_HEADS.NUM_CLASSES is not given,
NUM_CLASSES is the number of categories its JSON lists (all listed ones, present or not).
"""

from __future__ import annotations

import json

from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch


def main(args):
    listed = {}
    for name, json_file, image_root in args.coco or ():
        register_coco_instances(name, {}, json_file, image_root)
        with open(json_file) as handle:
            listed[name] = len(json.load(handle)["categories"])
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    trained = [listed[name] for name in cfg.DATASETS.TRAIN if name in listed]
    if trained and "MODEL.ROI_HEADS.NUM_CLASSES" not in args.opts[::2]:
        if len(set(trained)) > 1:
            raise SystemExit(f"the training sets list different numbers of categories: {trained}")
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = trained[0]
    cfg.freeze()
    default_setup(cfg, args)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument(
        "--coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGES"), help="register a COCO set"
    )
    args = parser.parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
