"""ResNet-50 scale: maskinit's `--preset r50-fpn` recipe against stock Detectron2's
scratch-GN R50-FPN recipe (Misc/scratch_mask_rcnn_R_50_FPN_3x_gn) on a COCO set, at equal budget
(iterations and batch; warmup and the LR step at 80 and 320 of 400, scaled with --iters) and at the
same reduced input size for both.

Stopping and continuing (a CPU run takes longer than one sitting): both runs save a checkpoint every
--checkpoint-period iterations (maskinit also on SIGTERM/Ctrl-C); stop them with SIGTERM to the two
training processes, and the same command later continues each from its last checkpoint (recipes.execute).

CPU (the default): longest side 320, training shorter side jittered over 256-320 (--size 320
--train-sizes 256 288 320), batch 4, 400 iterations, one run at a time.
GPU (benchmarks/gpu_r50.sh): --device cuda --size 800 --train-sizes 512 576 640 704 768 800, many
runs side by side on the one GPU (--jobs).

maskinit runs `maskinit train --preset r50-fpn --max-iter N --warmup-iters W --lr LR
SOLVER.IMS_PER_BATCH B SOLVER.STEPS (S,)` plus the INPUT.* sizes (LR: the preset's 2e-4 at batch 16
scaled by the square root of the batch, 1e-4 at 4): the preset's recipe (AdamW at its LR scaled to the batch,
GN, RPN GN, focal prior, clipping, class-agnostic heads) and everything else it fits to the data
(pixel statistics, anchors at that input size). Stock Detectron2 runs stock_detectron2.py
scratch-gn --scale r50 at each LR of --lrs.

--maskinit-arms OPT@LR ... adds runs of the same preset with another optimizer and LR (`maskinit-sgd@0.02`:
`--optimizer sgd --lr 0.02` and SGD's weight decay 1e-4, the zoo's; `maskinit-adamw@2e-4`), so that the preset's
optimizer and LR rest on more than one point each; `preset` (the default) is the preset as it stands
(`maskinit-default`).

Usage: python benchmarks/r50.py [--data NAME=PATH ...] [--seeds 0] [--lrs 0.02] [--iters 400] [--batch 4]
                                [--size 320] [--train-sizes 256 288 320] [--maskinit-lr LR]
                                [--maskinit-arms preset sgd@0.02 adamw@2e-4 ...] [--device cpu]
                                [--jobs 1] [--workers 0] [--roi-batch N] [--checkpoint-period N] [--run-timeout S]
                                [--runs-dir DIR] [--results-dir DIR]
                                [--report-only] [--tag=-lr2]
Default data: rice_leaf under ../shared/data (or $MASKINIT_BENCH_DATA). Writes RESULTS/r50-SET-SIZEpx[-Nit].json/.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ITERS, MASKINIT, PYTHON, RESULTS, ROOT, RUNS, budget, eval_period, parse_data, read_json, real_sets  # noqa: E402
from recipes import GOAL_REAL, comparison, execute, maskinit_resume, stopped_left_out, summarize  # noqa: E402


def input_options(size: int, train_sizes: list[int]) -> list[str]:
    """Both runs see the same pixels: the training shorter side jittered over `train_sizes`, the longest side
    at most `size`."""
    return ["INPUT.MIN_SIZE_TRAIN", "(" + ", ".join(map(str, train_sizes)) + ",)", "INPUT.MAX_SIZE_TRAIN", str(size),
            "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size)]


def schedule(iters: int) -> tuple[int, int]:
    keys = budget(iters)
    return int(keys[3]), int(keys[5].strip("(),"))


def preset_lr(batch: int) -> float:
    """The r50-fpn preset's AdamW LR at `batch` images: scaled by the square root of the batch ratio, as
    `maskinit train --ims-per-batch` does (2e-4 at 16 -> 1e-4 at 4)."""
    import yaml

    solver = yaml.safe_load((ROOT / "configs" / "r50-fpn.yaml").read_text())["SOLVER"]
    return float(f"{solver['BASE_LR'] * math.sqrt(batch / solver['IMS_PER_BATCH']):.6g}")


SGD_WEIGHT_DECAY = "0.0001"  # the zoo's scratch-GN weight decay; the preset's 0.05 is AdamW's decoupled one


def arm_name(spec: str) -> str:
    """`preset` -> maskinit-default; `sgd@0.02` -> maskinit-sgd@0.02 (optimizer and LR checked here, before any run)."""
    if spec == "preset":
        return "maskinit-default"
    optimizer, _, lr = spec.partition("@")
    if optimizer not in ("sgd", "adam", "adamw") or not lr:
        raise SystemExit(f"--maskinit-arms: {spec!r} is not preset or OPT@LR with OPT sgd, adam or adamw")
    try:
        float(lr)
    except ValueError as error:
        raise SystemExit(f"--maskinit-arms: {spec!r}: the LR {lr!r} is not a number") from error
    return f"maskinit-{optimizer}@{lr}"


def arm_options(name: str, preset_lr: str) -> tuple[str, list[str]]:
    """Run `name`'s LR and the other `maskinit train` options that make it differ from the preset (none for
    maskinit-default, which runs at `preset_lr`)."""
    if name == "maskinit-default":
        return preset_lr, []
    optimizer, lr = name.removeprefix("maskinit-").split("@")
    return lr, ["--optimizer", optimizer] + (["SOLVER.WEIGHT_DECAY", SGD_WEIGHT_DECAY] if optimizer == "sgd" else [])


def run_one(args, dataset, runs: Path, name: str, seed: int) -> dict:
    folder = runs / name / f"seed{seed}"
    out = folder / "out"
    period = args.eval_period or eval_period(args.iters)
    sizes = input_options(args.size, args.train_sizes)
    loader = ["DATALOADER.NUM_WORKERS", str(args.workers)]
    if args.roi_batch:  # the same RoI batch for both (the zoo's 512 per image dominates the CPU time)
        loader += ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(args.roi_batch)]
    meta = dict(seed=seed, dataset=dataset.name, device=args.device, iters=args.iters, batch=args.batch, size=args.size)
    saves = ["--checkpoint-period", str(args.checkpoint_period)] if args.checkpoint_period else []
    if name.startswith("d2-"):
        lr = name.split("@")[1]
        command = [
            PYTHON,
            str(Path(__file__).with_name("stock_detectron2.py")),
            "scratch-gn", str(out), "--scale", "r50", "--lr", lr, "--seed", str(seed), "--iters", str(args.iters),
            "--eval-period", str(period), *saves,
            *dataset.args(),
            "SOLVER.IMS_PER_BATCH", str(args.batch), "MODEL.DEVICE", args.device, *loader, *sizes,
        ]
        return execute(name, "stock", command, folder, args.run_timeout, resume=[*command, "--resume"], **meta)
    warmup, step = schedule(args.iters)
    lr, options = arm_options(name, str(args.maskinit_lr or preset_lr(args.batch)))
    # The batch as a KEY VALUE pair and the preset's LR scaled to it here: `--ims-per-batch` would also
    # rescale the explicit SOLVER.STEPS (x4 from 16 to 4 images), past the end of the run.
    command = [*MASKINIT, "train", "--preset", "r50-fpn", "--output-dir", str(out), "--overwrite", "--no-progress",
               "--seed", str(seed), "--max-iter", str(args.iters), "--lr", lr, *options,
               "--warmup-iters", str(warmup), "--device", args.device, "--eval-period", str(period), *saves,
               *dataset.args(), "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.STEPS", f"({step},)", *loader, *sizes]
    return execute(name, "maskinit", command, folder, args.run_timeout,
                   resume=maskinit_resume(out, dataset, args.device, period), **meta)


def report(args, dataset, results: list[dict], stem: str) -> None:
    from common import write_json

    table = summarize(results)
    compared = comparison(table, GOAL_REAL)
    write_json(
        args.results_dir / f"{stem}.json",
        {
            "dataset": dataset.name,
            "set": dataset.describe(),
            "scale": "r50-fpn",
            "iters": args.iters,
            "batch": args.batch,
            "size": args.size,
            "train_sizes": args.train_sizes,
            "device": args.device,
            "budget": budget(args.iters),
            "goal": GOAL_REAL,
            "table": table,
            "comparison": compared,
            "comparator_best": [compared["mask_ap"][1], compared["comparator"]] if compared else None,
            "runs": results,
        },
    )
    lines = [
        f"R50-FPN on {dataset.name}: {args.iters} iterations at batch {args.batch}, input longest side {args.size} "
        f"(training shorter side {args.train_sizes}), RoI batch {args.roi_batch or 512} per image, seeds {args.seeds}, "
        f"{args.device}", "", "| run | box AP (mean) | mask AP (mean) | mask AP per seed | s/iter | status |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['box_ap_mean']} | {row['mask_ap_mean']} | {row['mask_ap']} | {row['seconds_per_iter']} "
            f"| {', '.join(row['status'])} |"
        )
    if compared:
        lines += ["", f"maskinit r50-fpn / {compared['comparator']}: mask AP {compared['mask_ratio']}x, box AP "
                      f"{compared['box_ratio']}x, s/iter {compared['speed_ratio']}x"]
        best = table[compared["comparator"]]
        for name, row in table.items():
            if (
                name.startswith("maskinit-")
                and name != "maskinit-default"
                and row["mask_ap_mean"] is not None
                and best["mask_ap_mean"]
            ):
                lines.append(
                    f"{name} / {compared['comparator']}: mask AP {row['mask_ap_mean'] / best['mask_ap_mean']:.3f}x"
                )
    failed = [r for r in results if r.get("status") != "finished"]
    lines += [f"- {r['name']} seed {r['seed']}: {r['status']} ({r.get('error')})" for r in failed]
    (args.results_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", metavar="NAME=PATH", help="COCO set folder(s); default: rice_leaf")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--lrs", nargs="*", default=["0.02"], help="stock scratch-GN LRs at this batch")
    parser.add_argument("--maskinit-lr", type=float, help="maskinit's LR (default: the preset's, scaled to the batch)")
    parser.add_argument("--maskinit-arms", nargs="*", default=["preset"], metavar="OPT@LR",
                        help="maskinit runs: preset (the preset as it stands) and/or OPT@LR (sgd@0.02, adamw@2e-4)")
    parser.add_argument("--iters", type=int, default=ITERS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320, help="longest input side (train and test)")
    parser.add_argument("--train-sizes", nargs="*", type=int, default=[256, 288, 320], help="training shorter sides")
    parser.add_argument("--eval-period", type=int, default=0)
    parser.add_argument(
        "--roi-batch", type=int, default=0, help="MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE for both (0: the zoo's 512)"
    )
    parser.add_argument(
        "--checkpoint-period",
        type=int,
        default=50,
        help="both runs save every N iterations (0: at the end only); a stopped run continues from there",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side")
    parser.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS of each run")
    parser.add_argument("--run-timeout", type=float, default=None, help="seconds after which a run is killed")
    parser.add_argument("--runs-dir", type=Path, default=RUNS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the result files (the runs' folder is shared)")
    args = parser.parse_args()
    args.runs_dir, args.results_dir = args.runs_dir.resolve(), args.results_dir.resolve()
    sets = [parse_data(spec) for spec in args.data] if args.data else real_sets(names=("rice_leaf",))
    names = [f"d2-scratch-gn@{lr}" for lr in args.lrs] + list(
        dict.fromkeys(arm_name(spec) for spec in args.maskinit_arms)
    )
    for dataset in sets:
        tag = (f"r50-{dataset.name}-{args.size}px" + (f"-{args.iters}it" if args.iters != ITERS else "")
               + (f"-roi{args.roi_batch}" if args.roi_batch else ""))
        runs = args.runs_dir / tag
        jobs = [(name, seed) for seed in args.seeds for name in names]
        if args.report_only:
            results = [r for r in (read_json(runs / n / f"seed{s}" / "result.json") for n, s in jobs) if r]
        else:
            with ThreadPoolExecutor(args.jobs) as pool:
                results = stopped_left_out(
                    list(pool.map(lambda job, dataset=dataset, runs=runs: run_one(args, dataset, runs, *job), jobs))
                )
        if results:
            report(args, dataset, results, tag + args.tag)


if __name__ == "__main__":
    main()
