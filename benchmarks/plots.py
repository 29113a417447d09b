"""PNG plots of the recipe benchmark, from results/recipes-*.json and r50-*.json: mask AP per run (mean
and seeds, with the comparator's best and the goal marked) and mask AP against iterations.

Usage: python benchmarks/plots.py [--results-dir DIR]   (one PNG beside each JSON)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, read_json  # noqa: E402

# The goal drawn for result files that record none (the variant sweeps).
DEFAULT_GOAL = 1.15


def mean_curve(runs: list[dict]) -> tuple[list[int], list[float]]:
    """Mask AP against iterations, averaged over the seeds that evaluated at each iteration."""
    points = defaultdict(list)
    for run in runs:
        for iteration, _box, mask in run.get("curve", []):
            points[iteration].append(mask)
    iterations = sorted(points)
    return iterations, [statistics.mean(points[i]) for i in iterations]


def plot(result_file: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_json(result_file)
    table, runs = data["table"], data.get("runs", [])
    goal = data.get("goal", DEFAULT_GOAL)
    names = sorted(table, key=lambda name: table[name]["mask_ap_mean"])
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(15, max(4.5, 0.28 * len(names))))
    colours = ["tab:grey" if name.startswith("d2-") else "tab:blue" for name in names]
    colours = ["tab:orange" if name == "maskinit-default" else colour for name, colour in zip(names, colours)]
    bars.barh(names, [table[name]["mask_ap_mean"] for name in names], color=colours)
    for row, name in enumerate(names):
        bars.plot(table[name]["mask_ap"], [row] * len(table[name]["mask_ap"]), "k.", markersize=4)
    if data.get("comparator_best"):
        best, best_name = data["comparator_best"]
        bars.axvline(best, color="tab:red", linestyle="--", label=f"{best_name}: {best:.1f}")
        bars.axvline(best * goal, color="tab:green", linestyle="--", label=f"goal {goal}x: {best * goal:.1f}")
        bars.legend(loc="lower right", fontsize=8)
    title = f"{result_file.stem} ({data.get('device', 'cpu')}"
    title += f", {data['iters']} iterations)" if data.get("iters") else ")"
    bars.set(xlabel="mask AP (bar: mean over seeds, dots: seeds)", title=title)
    bars.tick_params(axis="y", labelsize=7)
    by_name = defaultdict(list)
    for run in runs:
        by_name[run["name"]].append(run)
    # every run's curve when they are few (an ablation, a probe); of a long table (--all), the comparison's:
    # the scratch-GN LRs and the default
    shown = [
        name
        for name in by_name
        if data.get("ablation") or len(by_name) <= 8 or name.startswith("d2-scratch-gn@") or name == "maskinit-default"
    ]
    for name in shown:
        iterations, masks = mean_curve(by_name[name])
        if iterations:
            curves.plot(iterations, masks, marker="o", linewidth=2.5 if name == "maskinit-default" else 1.2, label=name)
    curves.set(xlabel="iteration", ylabel="mask AP (mean over seeds)", title="mask AP against iterations")
    if shown:
        curves.legend(fontsize=8)
    fig.tight_layout()
    out = result_file.with_suffix(".png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    for result_file in sorted([*args.results_dir.glob("recipes-*.json"), *args.results_dir.glob("r50-*.json")]):
        if (read_json(result_file) or {}).get("table"):
            print(plot(result_file))


if __name__ == "__main__":
    main()
