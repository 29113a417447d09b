"""Recipe benchmark: stock Detectron2 (naive, scratch GN over an LR sweep, scratch SyncBN) against
maskinit's default and its variants, at the tiny scale, 400 iterations, 3 seeds, on the embedded
set and on a held-out set of the same kind. Runs are cached under benchmarks/runs/ (delete a run's
folder to redo it); two run side by side, one thread each.

Usage: python benchmarks/recipes.py [--only NAME ...] [--seeds 0 1 2] [--heldout] [--jobs 2]
Writes benchmarks/results/recipes.json, recipes.md and recipes.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BUDGET, ITERS, MASKINIT, PYTHON, RESULTS, RUNS, SEEDS, datasets, read_json, run, write_json  # noqa: E402

# name -> (runner, arguments). Stock runs go through Detectron2's DefaultTrainer only.
STOCK = {
    "d2-naive": ("stock", ["naive", "--lr", "0.02"]),
    "d2-scratch-gn@0.01": ("stock", ["scratch-gn", "--lr", "0.01"]),
    "d2-scratch-gn@0.02": ("stock", ["scratch-gn", "--lr", "0.02"]),
    "d2-scratch-gn@0.04": ("stock", ["scratch-gn", "--lr", "0.04"]),
    "d2-scratch-gn@0.08": ("stock", ["scratch-gn", "--lr", "0.08"]),
    "d2-scratch-syncbn": ("stock", ["scratch-syncbn", "--lr", "0.02"]),
}
# maskinit runs: `maskinit train --preset tiny` plus these options (the budget is added).
ANCHORS = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[16],[32],[64],[128],[256]]"]
KAIMING = ["--init", "kaiming_normal"]
MASKINIT_RUNS = {
    "maskinit-default": [],  # GN, c2 init, PIXEL_STD 57, LR 0.02, 4conv1fc
    "maskinit-kaiming-std1": [*KAIMING, "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"],
    "maskinit-kaiming": KAIMING,
    "maskinit-kaiming-anchors": [*KAIMING, *ANCHORS],
    "maskinit-kaiming-anchors-lr0.04": [*KAIMING, "--lr", "0.04", *ANCHORS],
    "maskinit-kaiming-anchors-lr0.04-cosine-zir": [*KAIMING, "--lr", "0.04", "--lr-schedule", "cosine", *ANCHORS, "MASKINIT.ZERO_INIT_RESIDUAL", "True"],
    "maskinit-kaiming-anchors-lr0.08-cosine-clip": [*KAIMING, "--lr", "0.08", "--lr-schedule", "cosine", "--clip-grad", "1.0", *ANCHORS],
    # next candidates (not run yet)
    "maskinit-std1": ["MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"],
    "maskinit-anchors": ANCHORS,
    "maskinit-anchors-lr0.04-prior": ["--lr", "0.04", *ANCHORS, "MASKINIT.PRIOR_PROB", "0.01"],
}
COMPARATOR = [name for name in STOCK if name.startswith("d2-scratch-gn@")]


def run_one(name: str, seed: int, heldout: bool) -> dict:
    folder = RUNS / ("heldout" if heldout else "default") / name / f"seed{seed}"
    result_file = folder / "result.json"
    cached = read_json(result_file)
    if cached:
        return cached
    if name in STOCK:
        _, args = STOCK[name]
        command = [PYTHON, str(Path(__file__).with_name("stock_detectron2.py")), args[0], str(folder / "out"), *args[1:], "--seed", str(seed)]
        if heldout:
            command.append("--heldout")
        code = run(command, folder / "log.txt")
        result = read_json(folder / "out" / "result.json") or {"status": f"exit {code}", "box_ap": 0.0, "mask_ap": 0.0}
    else:
        train, val = datasets(heldout)
        command = [MASKINIT, "train", "--preset", "tiny", "--output-dir", str(folder / "out"), "--overwrite", "--no-progress",
                   "--seed", str(seed), "--max-iter", str(ITERS),
                   "--train-json", str(train.json_file), "--train-images", str(train.image_root),
                   "--val-json", str(val.json_file), "--val-images", str(val.image_root),
                   *MASKINIT_RUNS[name]]
        code = run(command, folder / "log.txt")
        summary = read_json(folder / "out" / "run_summary.json") or {}
        evaluation = summary.get("eval", {})
        result = {
            "runner": "maskinit train", "status": summary.get("status", f"exit {code}"),
            "seconds_per_iter": summary.get("seconds_per_iter"),
            "box_ap": (evaluation.get("bbox", {}).get("AP") or 0.0),
            "mask_ap": (evaluation.get("segm", {}).get("AP") or 0.0),
        }
    result.update(name=name, seed=seed, heldout=heldout)
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
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--heldout", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    names = args.only or [*STOCK, *MASKINIT_RUNS]
    jobs = [(name, seed, args.heldout) for seed in args.seeds for name in names]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job), jobs))
    table = summarize(results)
    comparator = max((table[n]["mask_ap_mean"], n) for n in COMPARATOR if n in table) if any(n in table for n in COMPARATOR) else None
    split = "heldout" if args.heldout else "default"
    write_json(RESULTS / f"recipes-{split}.json", {"budget": BUDGET, "table": table, "comparator_best": comparator})
    lines = ["| run | box AP (mean) | mask AP (mean) | mask AP per seed | s/iter |", "|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['box_ap_mean']} | {row['mask_ap_mean']} | {row['mask_ap']} | {row['seconds_per_iter']} |")
    (RESULTS / f"recipes-{split}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
