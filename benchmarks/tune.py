"""`maskinit tune` against the default recipe at an equal total compute budget.

The data is any COCO set given by path, a folder {train.json, train/, val.json, val/}, e.g.
../shared/data/rice_leaf or ../shared/data/coco128. The budget is counted in training iterations at
one scale (the tiny preset by default, batch 4):

- tuned: `maskinit tune` trials of --trial-iters iterations (evaluated every quarter, median pruning,
  scored on --val-fraction of the training images held back from the trials' training, so the search
  never sees the validation set the arms are compared on; 0: scored on it)
  while the iterations they trained (pruned trials count what they ran) leave room for the final run,
  then the best config retrained for --final-iters iterations (`maskinit train --config best_config.yaml`);
- tuned, same budget: the best config trained for what the trials left of --budget (the schedule
  rescaled): what a user who tunes first and then trains as long as the compute allows gets;
- default, same length: the default recipe trained for --final-iters iterations (the tuning cost is
  what the tuned arm paid more);
- default, same budget: the default recipe trained for the whole --budget in one run (the schedule
  rescaled by --max-iter): what the same compute buys without searching.

Each final run is repeated for --seeds (mean and per seed). Runs go to benchmarks/runs/tune/<set>/ and
are reused when finished (an interrupted benchmark resumes); the result to
benchmarks/results/tune-<set>.json. `--smoke` runs everything at a few iterations (a check of the script).

    .venv/bin/python benchmarks/tune.py ../shared/data/rice_leaf --budget 4000 --final-iters 400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MASKINIT = [sys.executable, "-m", "maskinit"]
ARMS = ("tuned", "tuned_same_budget", "default_same_length", "default_same_budget")
TUNED = ("tuned", "tuned_same_budget")


def data_args(folder: Path) -> list[str]:
    missing = [name for name in ("train.json", "train", "val.json", "val") if not (folder / name).exists()]
    if missing:
        raise SystemExit(
            f"{folder} is not a set folder {{train.json, train/, val.json, val/}}: missing {', '.join(missing)}"
        )
    return ["--train-json", str(folder / "train.json"), "--train-images", str(folder / "train"),
            "--val-json", str(folder / "val.json"), "--val-images", str(folder / "val")]


def run(command: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        code = subprocess.call(
            command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
    print(f"  {time.time() - started:7.0f} s  exit {code}  {' '.join(command[3:6])} ... (log {log})", flush=True)
    return code


def finished_run(out: Path) -> dict:
    """What a `maskinit train` run in `out` reached (status None when it has not run or not finished)."""
    summary = out / "run_summary.json"
    result = json.loads(summary.read_text()) if summary.is_file() else {}
    segm, bbox = result.get("eval", {}).get("segm", {}), result.get("eval", {}).get("bbox", {})
    row = {"status": result.get("status"), "iterations": result.get("iterations"), "mask_ap": segm.get("AP"),
           "box_ap": bbox.get("AP"), "seconds": result.get("seconds")}
    resumed_at = (result.get("from_scratch") or {}).get("start_iter") or 0
    if resumed_at:  # maskinit's summary times the last sitting only: say so rather than report it as the run's
        row.update(seconds=None, seconds_last_sitting=result.get("seconds"), resumed_at=resumed_at)
    return row


def train_run(out: Path, args: list[str], log: Path) -> dict:
    """A `maskinit train` run, reused when it finished before, continued from its last checkpoint when
    it was interrupted (SIGTERM or Ctrl-C: maskinit saves one), else started afresh."""
    status = finished_run(out)["status"]
    if status != "finished":
        again = "--resume" if status == "interrupted" and (out / "last_checkpoint").is_file() else "--overwrite"
        run([*MASKINIT, "train", *args, "--output-dir", str(out), again], log)
    return finished_run(out)


def trials_used(study: Path) -> tuple[int, list[dict]]:
    table = study / "trials.json"
    rows = json.loads(table.read_text()) if table.is_file() else []
    return sum(row.get("iterations") or 0 for row in rows), rows


def mean(values):
    values = [v for v in values if v is not None and v == v]
    return round(statistics.mean(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="set folder {train.json, train/, val.json, val/}")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ims-per-batch", type=int, default=4)
    parser.add_argument(
        "--budget",
        type=int,
        default=4000,
        help="training iterations the tuned arm may spend in all (trials + final run)",
    )
    parser.add_argument("--final-iters", type=int, default=400, help="length of the final runs")
    parser.add_argument(
        "--trial-iters", type=int, default=None, help="length of a tuning trial (default: --final-iters)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pruner", default="median")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of the training images the trials are scored on (0: the validation set)")
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "tune")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--smoke", action="store_true", help="a few iterations everywhere: checks the script, measures nothing"
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="arms to train now (two processes can split them: the study with `tuned`, the rest "
                        "beside it); the report counts every arm whose runs are finished")
    args = parser.parse_args()
    if args.smoke:
        args.budget, args.final_iters, args.trial_iters, args.seeds = 16, 4, 4, [0]
        args.ims_per_batch = min(args.ims_per_batch, 2)
    trial_iters = args.trial_iters or args.final_iters
    data = data_args(args.data.resolve())
    name = args.data.resolve().name + ("-smoke" if args.smoke else "")
    runs = args.runs / name
    common = [
        "--preset", args.preset, "--device", args.device, "--ims-per-batch", str(args.ims_per_batch), "--no-progress",
    ]
    eval_period = max(1, trial_iters // 4)

    # tuned arm: one trial per `maskinit tune --resume` call, while the budget leaves room for one more and the
    # final run
    study = runs / ("study" if not args.val_fraction else f"study-val{args.val_fraction:g}")
    held_back = ["--val-fraction", str(args.val_fraction)] if args.val_fraction else []
    print(
        f"tuning on {args.data} ({args.budget} iterations in all, trials of {trial_iters}, "
        f"final runs of {args.final_iters})"
    )
    while set(TUNED) & set(args.arms):
        used, rows = trials_used(study)
        count = len([row for row in rows if row["state"] in ("complete", "pruned", "diverged", "failed")])
        if used + trial_iters + args.final_iters > args.budget:
            break
        tune = [
            *MASKINIT, "tune", *common, *data, "--max-iter", str(trial_iters), "--eval-period", str(eval_period),
            "--pruner", args.pruner, "--trials", str(count + 1), "--seed", "0", "--output-dir", str(study), *held_back,
        ]
        if (study / "study.db").is_file():
            tune.append("--resume")
        if run(tune, runs / "tune.log") not in (0, 1):
            raise SystemExit(f"maskinit tune failed: see {runs / 'tune.log'}")
        if trials_used(study)[0] == used:
            raise SystemExit(f"a trial trained nothing: see {runs / 'tune.log'}")
    best_config = study / "best_config.yaml"
    if set(TUNED) & set(args.arms) and not (
        best_config.is_file() and any(row["state"] == "complete" for row in trials_used(study)[1])
    ):
        raise SystemExit(f"no trial completed within the budget: see {runs / 'tune.log'}")

    rest = args.budget - trials_used(study)[0]
    arms = {
        "tuned": lambda seed: [
            "--config", str(best_config), "--device", args.device, "--no-progress", "--max-iter", str(args.final_iters),
        ],
        "tuned_same_budget": lambda seed: [
            "--config", str(best_config), "--device", args.device, "--no-progress", "--max-iter", str(rest),
        ],
        "default_same_length": lambda seed: [*common, "--max-iter", str(args.final_iters)],
        "default_same_budget": lambda seed: [*common, "--max-iter", str(args.budget)],
    }
    for arm, options in arms.items():
        if arm in args.arms:
            for seed in args.seeds:
                print(f"{arm}, seed {seed}")
                train_run(runs / f"{arm}-seed{seed}", [*options(seed), *data, "--seed", str(seed)], runs / f"{arm}.log")
    # the report, read when this process's arms are done: the study and the other process's arms as they are now
    used, rows = trials_used(study)
    count = len([row for row in rows if row["state"] in ("complete", "pruned", "diverged", "failed")])
    complete = [row for row in rows if row["state"] == "complete"]
    best = max(complete, key=lambda row: row["ap"]) if complete else None
    results = {}
    for arm in arms:
        per_seed = {seed: finished_run(runs / f"{arm}-seed{seed}") for seed in args.seeds}
        results[arm] = {"mask_ap": mean(r["mask_ap"] for r in per_seed.values()),
                        "box_ap": mean(r["box_ap"] for r in per_seed.values()), "per_seed": per_seed}
    report = {
        "data": str(args.data),
        "preset": args.preset,
        "device": args.device,
        "ims_per_batch": args.ims_per_batch,
        "trials_scored_on": f"{args.val_fraction:g} of the training images, held back"
        if args.val_fraction
        else "the validation set",
        "budget_iterations": args.budget,
        "final_iterations": args.final_iters,
        "trial_iterations": trial_iters,
        "tuned_same_budget_iterations": rest,
        "tuning": {
            "trials": count,
            "iterations_used": used,
            "best_trial": best and best["number"],
            "best_trial_ap": best and best["ap"],
            "best_params": best and best["params"],
            "trials_table": rows,
        },
        "arms": results,
        "smoke": args.smoke,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"tune-{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    for arm, result in results.items():
        print(f"{arm:22s} mask AP {result['mask_ap']}  box AP {result['box_ap']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
