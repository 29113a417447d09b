"""The default against Detectron2's scratch-GN recipe at equal wall-clock time on one set: the comparator
trains its 400 iterations (at the given LR, the input size and per-image budget maskinit fits to the set),
then `maskinit train --time T` gets the comparator's training time T (its s/iter x its iterations) and
plans its own iteration count from the s/iter it measures before training, re-planned as it goes. "s" is
s/iter x iterations on both sides; "wall s" is what maskinit's `--time` counts (wall-clock from the loop's
start, evaluations apart: checkpoints and metric writes included). One run at a time at one
thread, nothing else on the machine, so both times come from the same conditions. Each evaluates once, at
its end (evaluation time is not training time).

Usage: python benchmarks/equal_time.py --data NAME=PATH --lr 0.02|best [--seeds 0 1 2] [--iters 400] [--tag=-fit]
`--lr best`: the comparator's best LR in the set's recipe comparison (RESULTS/recipes-NAME{TAG}.json).
Writes RESULTS/equal-time-NAME.json and .md; runs are kept under RUNS/equal-time/NAME/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import ITERS, MASKINIT, PYTHON, RESULTS, RUNS, parse_data, read_json, write_json  # noqa: E402


def comparator_command(dataset, out: Path, lr: str, seed: int, iters: int, settings: list[str]) -> list[str]:
    return [PYTHON, str(Path(__file__).with_name("stock_detectron2.py")), "scratch-gn", str(out), "--lr", lr,
            "--seed", str(seed), "--iters", str(iters), "--eval-period", "0", *dataset.args(), *settings]


def maskinit_command(dataset, out: Path, seed: int, seconds: float) -> list[str]:
    return [*MASKINIT, "train", "--preset", "tiny", "--output-dir", str(out), "--overwrite", "--no-progress",
            "--seed", str(seed), "--time", f"{seconds:.1f}s", *dataset.args()]


def training_seconds(seconds_per_iter: float | None, iterations: int) -> float | None:
    return None if seconds_per_iter is None else seconds_per_iter * iterations


def pair_result(stock: dict, summary: dict, evaluation: dict, iters: int) -> dict:
    """One seed's row: each side's AP, iterations and training seconds (s/iter x iterations)."""
    ours_iters = int(summary.get("iterations") or 0)
    budget = summary.get("time_budget") or {}
    return {
        "comparator": {
            "mask_ap": stock.get("mask_ap"), "box_ap": stock.get("box_ap"), "iterations": iters,
            "seconds_per_iter": stock.get("seconds_per_iter"),
            "training_seconds": training_seconds(stock.get("seconds_per_iter"), iters),
        },
        "maskinit": {
            "mask_ap": evaluation.get("segm", {}).get("AP"), "box_ap": evaluation.get("bbox", {}).get("AP"),
            "iterations": ours_iters, "seconds_per_iter": summary.get("seconds_per_iter"),
            "training_seconds": training_seconds(summary.get("seconds_per_iter"), ours_iters),
            # what --time counts: wall-clock from the loop's start, evaluations apart; and its first plan
            "wall_training_seconds": budget.get("trained_seconds"), "planned_iter": budget.get("planned_iter"),
        },
    }


def markdown(name: str, lr: str, iters: int, rows: list[dict]) -> str:
    lines = [
        f"{name}: maskinit's default with `--time` set to the training time of Detectron2's scratch-GN recipe "
        f"(LR {lr}, {iters} iterations), one run at a time, one thread",
        "",
        "| seed | comparator mask AP | box AP | s | maskinit mask AP | box AP | s | wall s | iterations (planned) "
        "| mask ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        theirs, ours = row["comparator"], row["maskinit"]
        ratio = ours["mask_ap"] / theirs["mask_ap"] if theirs["mask_ap"] and ours["mask_ap"] is not None else None
        lines.append(
            f"| {row['seed']} | {theirs['mask_ap']:.2f} | {theirs['box_ap']:.2f} | {theirs['training_seconds']:.0f} "
            f"| {ours['mask_ap']:.2f} | {ours['box_ap']:.2f} | {ours['training_seconds']:.0f} "
            f"| {ours.get('wall_training_seconds') or 0:.0f} | {ours['iterations']} ({ours.get('planned_iter')}) "
            f"| {'-' if ratio is None else f'{ratio:.2f}x'} |"
        )
    return "\n".join(lines) + "\n"


def best_lr(results: Path, name: str, tag: str) -> str:
    """The comparator's best LR of recipes.py's comparison on the set (its `comparator_best` run)."""
    path = results / f"recipes-{name}{tag}.json"
    best = (read_json(path) or {}).get("comparator_best")
    if not best:
        sys.exit(f"--lr best: no comparator result in {path} (run recipes.py --data {name}=PATH first)")
    return best[1].split("@", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="NAME=PATH of a COCO set (train.json, train/, val.json, val/)")
    parser.add_argument("--lr", required=True, help="the comparator's LR, or `best`: its best in recipes.py's result")
    parser.add_argument("--tag", default="", help="the recipe result's tag for --lr best (e.g. -fit)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iters", type=int, default=ITERS, help="the comparator's iterations")
    parser.add_argument("--runs-dir", type=Path, default=RUNS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    dataset = parse_data(args.data)
    if args.lr == "best":
        args.lr = best_lr(args.results_dir, dataset.name, args.tag)
    folder = args.runs_dir / "equal-time" / dataset.name
    cache = args.runs_dir / dataset.name / "comparator-settings-tiny.json"  # recipes.py's: the same settings
    settings = common.comparator_settings(dataset, "tiny", cache)
    rows = []
    for seed in args.seeds:
        stock_out, ours_out = folder / f"seed{seed}" / "comparator", folder / f"seed{seed}" / "maskinit"
        if common.run(comparator_command(dataset, stock_out, args.lr, seed, args.iters, settings),
               folder / f"seed{seed}" / "comparator.log"):
            sys.exit(f"the comparator's run failed: see {folder / f'seed{seed}' / 'comparator.log'}")
        stock = read_json(stock_out / "result.json")
        seconds = training_seconds(stock["seconds_per_iter"], args.iters)
        if common.run(maskinit_command(dataset, ours_out, seed, seconds), folder / f"seed{seed}" / "maskinit.log"):
            sys.exit(f"maskinit's run failed: see {folder / f'seed{seed}' / 'maskinit.log'}")
        row = {"seed": seed, **pair_result(stock, read_json(ours_out / "run_summary.json"),
                                           read_json(ours_out / "eval.json") or {}, args.iters)}
        rows.append(row)
        print(row, flush=True)
    stem = args.results_dir / f"equal-time-{dataset.name}"
    write_json(stem.with_suffix(".json"), {
        "dataset": dataset.name, "lr": args.lr, "iters": args.iters, "rows": rows,
        "command": " ".join(["benchmarks/equal_time.py", *sys.argv[1:]]),
    })
    stem.with_suffix(".md").write_text(markdown(dataset.name, args.lr, args.iters, rows))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
