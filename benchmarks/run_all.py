"""`make bench`: every benchmark; JSON results and PNG plots in benchmarks/results/.

Runs are cached under benchmarks/runs/, so an interrupted `make bench` resumes where it stopped.
Order: evaluation speed (minutes), overhead (minutes), speed, the recipe comparison on
the embedded and the held-out synthetic set, on a synthetic set from another generator
(plain_shapes.py), and on the real sets rice_leaf and coco128 (from
../shared/data beside the project, or --real-data DIR / $MASKINIT_BENCH_DATA; a set not found is
skipped with a printed line), then, where a CUDA GPU is present, the variant sweep and the
full-scale throughput, and the plots. --extended adds on CPU: the 4x budget
(1,600 iterations, one seed, the comparator at its best LR of the 400-iteration sweep) on the
embedded set and rice_leaf, the ablation of the recipe on both, rice_leaf at equal wall-clock time
(equal_time.py), and the R50-FPN comparison at 256
pixels on rice_leaf (R50_CPU: two runs side by side, about 2.3 hours), and the tuning benchmark on rice_leaf
(TUNE_CPU). Estimated CPU hours are in docs/benchmarks.md.

Usage: python benchmarks/run_all.py [--real-data DIR] [--no-real] [--extended]   (make bench BENCH_ARGS=...)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REAL_DATA_ENV, real_sets  # noqa: E402

# written by plain_shapes.py (the same bytes on every call), kept beside the run cache
PLAIN_SHAPES = HERE / "runs" / "data" / "plain_shapes"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# R50-FPN on CPU: longest side 256, the same RoI batch for both, the two
# runs side by side; each saves every 25 iterations, so a stopped benchmark continues where it was.
R50_CPU = ["--size", "256", "--train-sizes", "208", "232", "256", "--roi-batch", "128", "--jobs", "2",
           "--checkpoint-period", "25"]

# maskinit tune against the default at an equal budget: 1,200 iterations in all, trials of 200
# (evaluated every 50, median pruning) until the final 400-iteration run no longer fits; one seed
TUNE_CPU = ["--budget", "1200", "--trial-iters", "200", "--final-iters", "400", "--seeds", "0"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real-data", type=Path, default=None,
                        help=f"folder holding rice_leaf/ and coco128/ (default ${REAL_DATA_ENV} or ../shared/data)")
    parser.add_argument("--no-real", action="store_true", help="the synthetic sets only")
    parser.add_argument(
        "--extended", action="store_true", help="also the 4x budget, the ablations, R50 on CPU and the tuning benchmark"
    )
    args = parser.parse_args()
    steps = [
        ("eval_speed.py", []),
        ("overhead.py", []),
        ("speed.py", []),
        ("recipes.py", []),
        ("recipes.py", ["--heldout"]),
        # a synthetic set from another generator (plain_shapes.py: Matterport's toy shapes, RLE masks)
        ("plain_shapes.py", [str(PLAIN_SHAPES)]),
        ("recipes.py", ["--data", f"plain_shapes={PLAIN_SHAPES}", "--synthetic"]),
    ]
    real = [] if args.no_real else real_sets(args.real_data)
    if args.no_real:
        print("--no-real: the real sets are skipped", flush=True)
    data = {dataset.name: f"{dataset.name}={dataset.train_json.parent}" for dataset in real}
    steps += [("recipes.py", ["--data", spec]) for spec in data.values()]
    if args.extended:
        steps += [("recipes.py", ["--iters", "1600", "--seeds", "0", "--lrs", "best"]),
                  ("recipes.py", ["--ablation"])]
        if "rice_leaf" in data:
            steps += [("recipes.py", ["--data", data["rice_leaf"], "--iters", "1600", "--seeds", "0", "--lrs", "best"]),
                      ("recipes.py", ["--data", data["rice_leaf"], "--ablation"]),
                      ("equal_time.py", ["--data", data["rice_leaf"], "--lr", "best", "--seeds", "0"]),
                      ("r50.py", ["--data", data["rice_leaf"], *R50_CPU]),
                      ("tune.py", [data["rice_leaf"].split("=", 1)[1], *TUNE_CPU])]
    if cuda_available():
        steps += [
            (
                "recipes.py",
                [
                    "--all", "--device", "cuda", "--jobs", "14", "--runs-dir", str(HERE / "runs" / "gpu"),
                    "--tag=-variants-gpu",
                ],
            ),
            ("gpu_throughput.py", ["--iters", "200"]),
        ]
    else:
        print(
            "no CUDA GPU: the variant sweep, gpu_throughput.py and gpu_r50.sh are skipped (see benchmarks/gpu.md)",
            flush=True,
        )
    steps.append(("plots.py", []))
    for script, script_args in steps:
        print(f"== {script} {' '.join(script_args)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *script_args], check=True, env=dict(os.environ))


if __name__ == "__main__":
    main()
