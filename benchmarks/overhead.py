"""Overhead benchmark: `maskinit train` against stock Detectron2's DefaultTrainer on an identical
config (Detectron2's scratch GN recipe at the tiny scale, Detectron2's own c2 init in both), run in
interleaved pairs, one at a time; the median over pairs of the per-iteration time (Detectron2's
`time` metric, data loading included) gives the overhead. Writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MASKINIT, PYTHON, RESULTS, RUNS, datasets, paired_report, read_json, run, write_json  # noqa: E402

ITERS = "80"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    train, val = datasets()
    pairs = []
    for pair in range(args.pairs):
        folder = RUNS / "overhead" / f"pair{pair}"
        stock_out = folder / "stock"
        run([PYTHON, str(Path(__file__).with_name("stock_detectron2.py")), "scratch-gn", str(stock_out),
             "--lr", "0.02", "--seed", str(pair), "SOLVER.MAX_ITER", ITERS, "TEST.DETECTIONS_PER_IMAGE", "1",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.99"], folder / "stock.log")
        stock = read_json(stock_out / "result.json")
        # the same config, run by maskinit: Detectron2's exact config file plus c2 (as-built) init
        ours_out = folder / "maskinit"
        run([*MASKINIT, "train", "--config", str(stock_out / "config.yaml"), "--output-dir", str(ours_out), "--overwrite",
             "--no-progress", "--seed", str(pair), "--init", "c2",
             "--train-json", str(train.json_file), "--train-images", str(train.image_root),
             "--val-json", str(val.json_file), "--val-images", str(val.image_root)], folder / "maskinit.log")
        ours = read_json(ours_out / "run_summary.json")
        pairs.append({"stock_s_per_iter": stock["seconds_per_iter"], "maskinit_s_per_iter": ours["seconds_per_iter"]})
        print(pairs[-1], flush=True)
    report = paired_report(pairs, int(ITERS))
    write_json(RESULTS / "overhead.json", report)
    print(report)


if __name__ == "__main__":
    main()
