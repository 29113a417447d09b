"""Detectron2's tools/train_net.py, reduced to training (the wheel does not ship tools/): stock
DefaultTrainer on a config file, on N processes through Detectron2's `launch`.

Usage: stock_train_net.py --config-file FILE [--num-gpus N] [--coco NAME JSON IMAGES] [KEY VALUE ...]
"""

from __future__ import annotations

from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch


def main(args):
    for name, json_file, image_root in args.coco or ():
        register_coco_instances(name, {}, json_file, image_root)
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGES"), help="register a COCO set")
    args = parser.parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
