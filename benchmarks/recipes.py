"""Recipe benchmark: stock Detectron2 (naive, scratch GN over an LR sweep, scratch SyncBN) against
maskinit's default and its variants, at the tiny scale, 400 iterations, 3 seeds, on the embedded
set and on a held-out set of the same kind. Runs are cached under benchmarks/runs/ (delete a run's
folder to redo it); two run side by side, one thread each (on a GPU, --jobs 14 share it).

Usage: python benchmarks/recipes.py [--only NAME ... | --all] [--seeds 0 1 2] [--heldout] [--jobs 2]
                                   [--device cuda] [--runs-dir DIR] [--tag=-gpu] [--report-only]
Writes benchmarks/results/recipes-{default,heldout}{TAG}.json and .md (plots.py draws the PNGs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BUDGET, EVAL_PERIOD, ITERS, MASKINIT, PYTHON, RESULTS, RUNS, SEEDS, datasets, read_json, run, write_json  # noqa: E402

# name -> arguments of stock_detectron2.py. Stock runs go through Detectron2's DefaultTrainer only.
STOCK = {
    "d2-naive": ["naive", "--lr", "0.02"],
    "d2-scratch-gn@0.01": ["scratch-gn", "--lr", "0.01"],
    "d2-scratch-gn@0.02": ["scratch-gn", "--lr", "0.02"],
    "d2-scratch-gn@0.04": ["scratch-gn", "--lr", "0.04"],
    "d2-scratch-gn@0.08": ["scratch-gn", "--lr", "0.08"],
    "d2-scratch-syncbn": ["scratch-syncbn", "--lr", "0.02"],
}
COMPARATOR = [name for name in STOCK if name.startswith("d2-scratch-gn@")]

# maskinit runs: `maskinit train --preset tiny` plus these options (the budget is the preset's).
# The variants were swept against the previous default, an SGD recipe (SGD_BASE restates it on top
# of today's default, so that every name keeps meaning what it meant when it ran).
SGD_BASE = [
    "--optimizer", "sgd", "--lr", "0.02", "SOLVER.WEIGHT_DECAY", "0.0001", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
    "MASKINIT.PRIOR_PROB", "0.0", "MASKINIT.RPN_NORM", "False", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False", "MODEL.ANCHOR_GENERATOR.SIZES", "[[32],[64],[128],[256],[512]]",
]
ANCHORS = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]"]
CLS_AGNOSTIC = ["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"]
CLS_AGNOSTIC_BOX = ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"]
ADAMW = ["--optimizer", "adamw", "SOLVER.WEIGHT_DECAY", "0.05"]
# lr 0.04 with clipping, focal prior on the classifiers, GN in the RPN head
COMBO = ["--lr", "0.04", "--clip-grad", "1.0", "MASKINIT.PRIOR_PROB", "0.01", "MASKINIT.RPN_NORM", "True"]
# AdamW 1e-3 with clipping, on top of the rest of COMBO, anchors and class-agnostic heads: today's default
A1 = [*ADAMW, "--lr", "0.001", "--clip-grad", "1.0", "MASKINIT.PRIOR_PROB", "0.01", "MASKINIT.RPN_NORM", "True",
      *ANCHORS, *CLS_AGNOSTIC, *CLS_AGNOSTIC_BOX]
MASKINIT_RUNS = {
    "maskinit-default": [],
    "maskinit-sgd-previous-default": [*SGD_BASE],
    # one change at a time against the default
    "maskinit-kaiming": [*SGD_BASE, "--init", "kaiming_normal"],
    "maskinit-gnws": [*SGD_BASE, "--norm", "GNWS"],
    "maskinit-bn": [*SGD_BASE, "--norm", "BN"],
    "maskinit-zero-init-residual": [*SGD_BASE, "MASKINIT.ZERO_INIT_RESIDUAL", "True"],
    "maskinit-prior0.01": [*SGD_BASE, "MASKINIT.PRIOR_PROB", "0.01"],
    "maskinit-rpn-norm": [*SGD_BASE, "MASKINIT.RPN_NORM", "True"],
    "maskinit-lr0.01": [*SGD_BASE, "--lr", "0.01"],
    "maskinit-lr0.03": [*SGD_BASE, "--lr", "0.03"],
    "maskinit-lr0.04-clip": [*SGD_BASE, "--lr", "0.04", "--clip-grad", "1.0"],
    "maskinit-warmup20": [*SGD_BASE, "--warmup-iters", "20"],
    "maskinit-cosine": [*SGD_BASE, "--lr-schedule", "cosine"],
    "maskinit-adamw1e-4": [*SGD_BASE, *ADAMW, "--lr", "0.0001"],
    "maskinit-adamw3e-4": [*SGD_BASE, *ADAMW, "--lr", "0.0003"],
    "maskinit-adamw1e-3": [*SGD_BASE, *ADAMW, "--lr", "0.001", "--clip-grad", "1.0"],
    "maskinit-pixel-std1": [*SGD_BASE, "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"],
    "maskinit-wd-norm": [*SGD_BASE, "SOLVER.WEIGHT_DECAY_NORM", "0.0001"],
    "maskinit-box-2fc": [*SGD_BASE, "MODEL.ROI_BOX_HEAD.NUM_CONV", "0", "MODEL.ROI_BOX_HEAD.NUM_FC", "2"],
    "maskinit-giou": [*SGD_BASE, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", "2.0"],
    "maskinit-anchors16": [*SGD_BASE, *ANCHORS],
    "maskinit-pos0.5": [*SGD_BASE, "MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.5"],
    "maskinit-scale-aug": [*SGD_BASE, "INPUT.MIN_SIZE_TRAIN", "(96, 112, 128, 144, 160)", "INPUT.MAX_SIZE_TRAIN", "160"],
    "maskinit-score0": [*SGD_BASE, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"],
    "maskinit-cls-agnostic-mask": [*SGD_BASE, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"],
    # combinations of what helped alone
    "maskinit-c1": [*SGD_BASE, *COMBO],
    "maskinit-c1-anchors16": [*SGD_BASE, *COMBO, *ANCHORS],
    "maskinit-c1-cls-agnostic-mask": [*SGD_BASE, *COMBO, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True"],
    "maskinit-c1-lr0.06": [*SGD_BASE, *COMBO, "--lr", "0.06"],
    "maskinit-c2": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC],
    "maskinit-c2-lr0.06": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, "--lr", "0.06"],
    "maskinit-c2-lr0.06-warmup40": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, "--lr", "0.06", "--warmup-iters", "40"],
    "maskinit-c3": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, *CLS_AGNOSTIC_BOX],
    "maskinit-c3-gn16": [*SGD_BASE, *COMBO, *ANCHORS, *CLS_AGNOSTIC, *CLS_AGNOSTIC_BOX, "--norm", "GN:groups=16"],
    "maskinit-a1": [*SGD_BASE, *A1],
    "maskinit-a1-lr5e-4": [*SGD_BASE, *A1, "--lr", "0.0005"],
    "maskinit-a1-lr2e-3": [*SGD_BASE, *A1, "--lr", "0.002"],
}


# The README's table: the stock recipes and maskinit's default (the variants were swept on a GPU, --all).
MAIN = [*STOCK, "maskinit-default"]


def run_dir(runs: Path, name: str, seed: int, heldout: bool) -> Path:
    return runs / ("heldout" if heldout else "default") / name / f"seed{seed}"


def ap_curve(metrics: Path) -> list[list[float]]:
    """[iteration, box AP, mask AP] at each evaluation, from Detectron2's metrics.json."""
    if not metrics.is_file():
        return []
    from maskinit.curves import read_metrics

    return [[min(row["iteration"] + 1, ITERS), round(row["bbox/AP"], 3), round(row.get("segm/AP", 0.0), 3)]
            for row in read_metrics(metrics) if "bbox/AP" in row and "iteration" in row]


def run_one(name: str, seed: int, heldout: bool, runs: Path = RUNS, device: str = "cpu", eval_period: int = EVAL_PERIOD) -> dict:
    folder = run_dir(runs, name, seed, heldout)
    result_file = folder / "result.json"
    cached = read_json(result_file)
    if cached:
        return cached
    out = folder / "out"
    if name in STOCK:
        command = [PYTHON, str(Path(__file__).with_name("stock_detectron2.py")), STOCK[name][0], str(out), *STOCK[name][1:],
                   "--seed", str(seed), "--eval-period", str(eval_period), "MODEL.DEVICE", device]
        if heldout:
            command.append("--heldout")
        code = run(command, folder / "log.txt")
        result = read_json(out / "result.json") or {"status": f"exit {code}", "box_ap": 0.0, "mask_ap": 0.0}
    else:
        train, val = datasets(heldout)
        command = [*MASKINIT, "train", "--preset", "tiny", "--output-dir", str(out), "--overwrite", "--no-progress",
                   "--seed", str(seed), "--max-iter", str(ITERS), "--device", device, "--eval-period", str(eval_period),
                   "--train-json", str(train.json_file), "--train-images", str(train.image_root),
                   "--val-json", str(val.json_file), "--val-images", str(val.image_root),
                   *MASKINIT_RUNS[name]]
        code = run(command, folder / "log.txt")
        summary = read_json(out / "run_summary.json") or {}
        evaluation = summary.get("eval", {})
        result = {
            "runner": "maskinit train", "status": summary.get("status", f"exit {code}"),
            "seconds_per_iter": summary.get("seconds_per_iter"),
            "box_ap": (evaluation.get("bbox", {}).get("AP") or 0.0),
            "mask_ap": (evaluation.get("segm", {}).get("AP") or 0.0),
        }
    result.update(name=name, seed=seed, heldout=heldout, device=device, curve=ap_curve(out / "metrics.json"))
    write_json(result_file, result)
    return result


def summarize(results: list[dict]) -> dict:
    table = {}
    for name in dict.fromkeys(r["name"] for r in results):
        rows = [r for r in results if r["name"] == name]
        speeds = [r["seconds_per_iter"] for r in rows if r.get("seconds_per_iter")]
        table[name] = {
            "seeds": [r["seed"] for r in rows],
            "box_ap": [round(r["box_ap"], 2) for r in rows],
            "mask_ap": [round(r["mask_ap"], 2) for r in rows],
            "box_ap_mean": round(statistics.mean(r["box_ap"] for r in rows), 2),
            "mask_ap_mean": round(statistics.mean(r["mask_ap"] for r in rows), 2),
            "seconds_per_iter": round(statistics.median(speeds), 3) if speeds else None,
            "status": sorted({r["status"] for r in rows}),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help="run names (default: the README's table, MAIN)")
    parser.add_argument("--all", action="store_true", help="every run defined here (hours on 2 CPU cores)")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--heldout", action="store_true", help="the held-out set instead of the embedded one")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (all runs share the device)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="cache of finished runs")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. --tag=-gpu)")
    parser.add_argument("--report-only", action="store_true", help="summarize the cached runs, start none")
    args = parser.parse_args()
    names = [*STOCK, *MASKINIT_RUNS] if args.all else (args.only or MAIN)
    unknown = [name for name in names if name not in STOCK and name not in MASKINIT_RUNS]
    if unknown:
        parser.error(f"unknown run(s): {', '.join(unknown)}")
    jobs = [(name, seed) for seed in args.seeds for name in names]  # every name's first seed first
    if args.report_only:
        found = [read_json(run_dir(args.runs_dir, name, seed, args.heldout) / "result.json") for name, seed in jobs]
        results = [result for result in found if result]
    else:
        datasets(args.heldout)  # generate the data once, before runs start side by side
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: run_one(*job, args.heldout, args.runs_dir, args.device), jobs))
    table = summarize(results)
    ranked = [(table[n]["mask_ap_mean"], n) for n in COMPARATOR if n in table]
    split = ("heldout" if args.heldout else "default") + args.tag
    write_json(RESULTS / f"recipes-{split}.json", {
        "budget": BUDGET, "device": args.device, "table": table, "comparator_best": max(ranked) if ranked else None,
        "runs": results,
    })
    lines = ["| run | box AP (mean) | mask AP (mean) | mask AP per seed | s/iter |", "|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['box_ap_mean']} | {row['mask_ap_mean']} | {row['mask_ap']} | {row['seconds_per_iter']} |")
    (RESULTS / f"recipes-{split}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
