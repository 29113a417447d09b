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
from common import PAIR_ITERS, RESULTS, interleaved_pairs, paired_report, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    # the same config, run by maskinit: Detectron2's exact config file plus c2 (as-built) init
    pairs = interleaved_pairs(
        "overhead", args.pairs, "0.02", lambda stock_out: ["--config", str(stock_out / "config.yaml"), "--init", "c2"]
    )
    report = paired_report(pairs, PAIR_ITERS)
    write_json(RESULTS / "overhead.json", report)
    print(report)


if __name__ == "__main__":
    main()
