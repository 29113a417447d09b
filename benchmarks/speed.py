"""Speed of maskinit's default recipe against Detectron2's scratch GN recipe at the tiny scale:
interleaved pairs run one at a time (one thread each, so nothing else shares the cores), 80
iterations each, seconds per iteration from Detectron2's `time` metric. The recipe table's s/iter
come from runs two at a time, whose neighbours differ; this is the clean comparison for the
goal's "no more than 1.25x its s/iter". Writes benchmarks/results/speed.json.

--variant NAME times one of recipes.py's maskinit runs (e.g. maskinit-roi128-box2fc) in place of the
default, written to speed-NAME.json. --iters sets the run length: the heads' cost grows as training
finds more foreground RoIs (the mask head trains on those only), so 80 iterations from scratch
understate it; 400 is the recipe table's budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FAST_EVAL, PAIR_ITERS, RESULTS, interleaved_pairs, paired_report, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--lr", default="0.02", help="the comparator's LR (it does not change the speed)")
    parser.add_argument("--variant", help="a maskinit run of recipes.py (its options added to the default)")
    parser.add_argument("--iters", type=int, default=PAIR_ITERS, help="iterations per run")
    args = parser.parse_args()
    extra: list[str] = []
    if args.variant:
        from recipes import MASKINIT_RUNS

        if args.variant not in MASKINIT_RUNS:
            parser.error(f"unknown --variant {args.variant}: one of {', '.join(sorted(MASKINIT_RUNS))}")
        extra = MASKINIT_RUNS[args.variant]
    suffix = (f"-{args.variant}" if args.variant else "") + (f"-{args.iters}it" if args.iters != PAIR_ITERS else "")
    pairs = interleaved_pairs(
        f"speed{suffix}", args.pairs, args.lr,
        lambda _: ["--preset", "tiny", "--max-iter", str(args.iters), *FAST_EVAL, *extra], iters=args.iters,
    )
    report = {"variant": args.variant or "maskinit-default", **paired_report(pairs, args.iters)}
    write_json(RESULTS / f"speed{suffix}.json", report)
    print(report)


if __name__ == "__main__":
    main()
