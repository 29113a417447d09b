"""The "data fit against the preset" tables of docs/benchmarks.md, from the recipe benchmark's result files.

For each set (`recipes.py --data NAME=PATH --tag=-fit ...`, one result file `recipes-NAME-fit.json` holding
every run of the set): the default (`--fit safe`), the fit off and `--fit full` (mask and box AP, mean over
the seeds that ran, the seeds, the input size), Detectron2's scratch-GN recipe at its best LR at the
default's input sizes and per-image budget, the ratio, and the estimated s/iter of each maskinit config
against the preset's on the set (machine.step_seconds, the same estimate `train` prints). A second table
gives each fitted group of keys switched back to the preset alone (`maskinit-fit-preset-*`), as the
difference in mask AP to the default of the same seed, averaged over the seeds both ran; a third the recipe
probes (PROBED) in the same way, and a fourth the probes whose result files (`recipes-NAME-probes.json`,
`--tag=-probes`) hold a default of their own, run beside them.

Usage: python benchmarks/fit_table.py [--results benchmarks/results] [--sets NAME ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))  # recipes.py, for its runs' options

ARMS = {"maskinit-default": "default (safe)", "maskinit-fit-off": "fit off", "maskinit-fit-full": "--fit full"}
ABLATED = {
    "maskinit-fit-preset-input": "input size",
    "maskinit-fit-preset-pixels": "pixel statistics",
    "maskinit-fit-preset-ratios": "aspect ratios",
    "maskinit-fit-preset-anchors": "anchor sizes",
    "maskinit-fit-preset-test-counts": "detections and test proposals",
    "maskinit-fit-preset-roi-batch": "sampled RoIs",
    "maskinit-fit-preset-mask-pool": "mask pool",
}


def estimated_cost(result: dict, name: str) -> float | None:
    """The estimated s/iter of the run's config over the tiny preset's on its training set: the run's
    config.yaml where its folder is still there, else the tiny preset with the run's KEY VALUE options
    fitted to the set again (the same config `maskinit train` built, for the code that is here)."""
    from maskinit.config import load_config
    from maskinit.data.analysis import analyze_coco
    from maskinit.data.cost import relative_cost
    from maskinit.data.fit import fit_to_data
    from maskinit.run_options import DataOptions

    run = next((r for r in result["runs"] if r["name"] == name), None)
    if not run or not run.get("command"):
        return None
    data = result["data"]
    if data.get("synthetic") == "True":  # the embedded set is not fitted (only the user's own data is)
        return 1.0 if name != "maskinit-fit-full" else None
    out = Path(run["command"][run["command"].index("--output-dir") + 1])
    if (out / "config.yaml").is_file():
        cfg = load_config(out / "config.yaml")
    else:
        from recipes import MASKINIT_RUNS

        options = MASKINIT_RUNS.get(name)
        if options is None or any(option.startswith("--") for option in options):
            return None
        preset = load_config(preset="tiny", overrides=options)
        cfg, _ = fit_to_data(preset, DataOptions(data["train_json"], data["train_images"]), keep=set(options[::2]))
    analysis = analyze_coco(data["train_json"], data["train_images"])
    return relative_cost(analysis, cfg, load_config(preset="tiny"))


def mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f}" if values else "-"


def seeds(row: dict) -> str:
    return ", ".join(str(s) for s in sorted(row["seeds"]))


def main_table(results: dict[str, dict]) -> list[str]:
    lines = ["| set | run | mask AP | box AP | seeds | input (train / test) | est. s/iter vs preset |",
             "|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        table = result["table"]
        for arm, label in ARMS.items():
            row = table.get(arm)
            if not row:
                continue
            cost = estimated_cost(result, arm)
            lines.append(f"| {name} | {label} | {row['mask_ap_mean']:.1f} | {row['box_ap_mean']:.1f} | {seeds(row)} | "
                         f"{'; '.join(row['input'])} | {f'{cost:.2f}x' if cost else '-'} |")
        compared = result.get("comparison")
        if compared:
            best = table[compared["comparator"]]
            lr = compared["comparator"].split("@")[1]
            lines.append(f"| {name} | Detectron2 scratch GN, LR {lr} (the default's input and per-image budget) | "
                         f"{best['mask_ap_mean']:.1f} | {best['box_ap_mean']:.1f} | {seeds(best)} | "
                         f"{'; '.join(best['input'])} | |")
            lines.append(f"| {name} | **default / Detectron2** | **{compared['mask_ratio']}x** | "
                         f"{compared['box_ratio']}x | | | |")
    return lines


def fitted_arms(result: dict) -> set[str] | None:
    """The `maskinit-fit-preset-*` arms whose keys the default fits on the set (the others would train the
    default's config again); None where the set's training data is not here to fit to."""
    from recipes import FIT_ABLATION

    from maskinit.cfgkeys import get_key
    from maskinit.config import load_config
    from maskinit.data.fit import fit_to_data
    from maskinit.run_options import DataOptions

    data = result["data"]
    if not Path(data["train_json"]).is_file():
        return None
    preset = load_config(preset="tiny")
    fitted, _ = fit_to_data(preset, DataOptions(data["train_json"], data["train_images"]))
    arms = set()
    for arm in ABLATED:
        keys = FIT_ABLATION[arm][::2]
        if any(get_key(fitted, key) != get_key(preset, key) for key in keys):
            arms.add(arm)
    return arms


def ablation_table(results: dict[str, dict]) -> list[str]:
    fitted = {name: fitted_arms(result) for name, result in results.items()}
    return delta_table(results, ABLATED, "switched back to the preset", fitted)


# Probes of the recipe on the photo sets (recipes.PHOTO_PROBES): the default with one thing changed.
PROBED = {
    "maskinit-mask14": "the mask head's 14x14 pool (28x28 masks) for the fitted one",
    "maskinit-mask14-input128": "the same at the preset's 128-px input",
    "maskinit-mask14-dim32": "the 14x14 pool with a 32-channel mask head (the preset: 64)",
    "maskinit-mask14-dim32-input160": "the same at the fitted 160-px input",
    "maskinit-mask14-conv2": "the 14x14 pool with two mask-head convs (the preset: four)",
    "maskinit-mask9": "a 9x9 mask pool (18x18 masks)",
    "maskinit-lr2e-3": "AdamW at 2e-3 (the preset: 1e-3)",
    "maskinit-lr1.5e-3": "AdamW at 1.5e-3 (the preset: 1e-3)",
    "maskinit-box2fc": "a box head of two fully connected layers (the preset: four GN convs and one)",
    "maskinit-cp1.0": "Copy-Paste on every image (the preset: on half of them)",
    "maskinit-ema": "weight EMA (decay 0.98, a window of about 50 iterations)",
    "maskinit-no-copy-paste": "no Copy-Paste (the preset: on half of the images)",
    "maskinit-lsj-mild": "a mild large-scale jitter (0.5-1.5 of the fitted square) under Copy-Paste",
    "maskinit-pos0.5": "half of the sampled RoIs foreground (the preset: a quarter)",
    "maskinit-maskloss2": "the mask loss at twice its weight",
    "maskinit-canonical112": "RoIs pooled from coarser FPN levels (canonical box 112 at P4; Detectron2: 224)",
    "maskinit-mask-up4": "masks at 4x the pool's side (a second 2x upsampling, 32 channels; the preset: 2x)",
    "maskinit-photometric": "photometric jitter (brightness, contrast, saturation 0.8-1.2)",
    "maskinit-gn8": "GroupNorm with 8 groups (the preset: 32)",
    "maskinit-anchors-2scale": "two anchor sizes per FPN level, half an octave apart (the preset: one)",
    "maskinit-mask-dice": "a Dice loss beside the mask head's cross-entropy (weight 1)",
    "maskinit-giou": "the box head's GIoU loss, weight 10 (the preset: L1 of the box deltas)",
}


def delta_table(results: dict[str, dict], arms: dict[str, str], header: str,
                fitted: dict[str, set[str] | None] | None = None) -> list[str]:
    """Per arm and set: the arm's mask AP minus the default's, paired by seed and averaged over the seeds both
    ran, with the range over those seeds where there are several ("-" where the arm did not run, "not
    fitted" where `fitted` says the default keeps the preset's values of the arm's keys on the set)."""
    names = list(results)
    lines = [f"| {header} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for arm, label in arms.items():
        cells = []
        for name in names:
            table = results[name]["table"]
            row, default = table.get(arm), table.get("maskinit-default")
            here = (fitted or {}).get(name)
            if here is not None and arm not in here:
                cells.append("not fitted")
                continue
            paired = sorted(set(row["seeds"]) & set(default["seeds"])) if row and default else []
            if not paired:
                cells.append("-")
                continue
            deltas = [row["mask_ap"][row["seeds"].index(s)] - default["mask_ap"][default["seeds"].index(s)]
                      for s in paired]
            cell = f"{statistics.mean(deltas):+.1f}"
            if len(deltas) > 1:
                cell += f" ({min(deltas):+.1f} to {max(deltas):+.1f}, {len(deltas)} seeds)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def ran(arms: dict[str, str], results: dict[str, dict]) -> dict[str, str]:
    """The arms that ran on at least one of the sets."""
    return {arm: label for arm, label in arms.items() if any(arm in result["table"] for result in results.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--sets", nargs="*",
                        default=["nuclei_tissue", "nuclei_gray", "balloons", "pedestrians", "rice_leaf"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--probes-tag", default="-probes",
                        help="the result files (recipes-NAME{TAG}.json) of probes run beside a default of their own")
    args = parser.parse_args()
    results, probes = {}, {}
    for name in args.sets:
        path = args.results / f"recipes-{name}-fit.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
        else:
            print(f"{name}: {path} not found, left out", file=sys.stderr)
        path = args.results / f"recipes-{name}{args.probes_tag}.json"
        if path.is_file():
            probes[name] = json.loads(path.read_text())
    lines = ["Mask and box AP at 400 iterations (mean over the seeds listed):", "", *main_table(results), "",
             "Each group of fitted keys switched back to the preset's values alone, mask AP minus the default's "
             "(paired by seed: the mean over the seeds both ran, and its range where there are several):",
             "", *ablation_table(results), "",
             "The recipe with one thing changed, mask AP minus the default's (paired by seed, as above):", "",
             *delta_table(results, ran(PROBED, results), "changed")]
    if probes:
        lines += ["", "Probes run beside a default of their own (on the same machine, one run a core), "
                  "mask AP minus that default's (paired by seed, as above):", "",
                  *delta_table(probes, ran(PROBED, probes), "changed")]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
