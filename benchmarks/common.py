"""Shared settings of the benchmarks: the data, the tiny scale, the iteration budget, result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs"
PYTHON = sys.executable
MASKINIT = [sys.executable, "-m", "maskinit"]

# The budget of issue 5: 400 iterations at batch 4, warmup 80, one LR step at 80 %.
ITERS = 400
WARMUP = 80
STEP = 320
SEEDS = (0, 1, 2)
# AP against iterations: evaluate every 100 iterations (eval time is not in s/iter).
EVAL_PERIOD = 100
# A held-out set of the same kind: the same generator, a seed no run ever trains on.
HELDOUT_SEED = 20261123

# The tiny preset's model scale (configs/tiny.yaml), applied to stock Detectron2 configs.
TINY_SCALE = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "400", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "256", "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
    "TEST.DETECTIONS_PER_IMAGE", "50", "SOLVER.IMS_PER_BATCH", "4",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
]
BUDGET = ["SOLVER.MAX_ITER", str(ITERS), "SOLVER.WARMUP_ITERS", str(WARMUP), "SOLVER.STEPS", f"({STEP},)"]


def datasets(heldout: bool = False):
    """(train, val) COCO files: the embedded default, or the held-out set of the same kind."""
    sys.path.insert(0, str(ROOT))
    from maskinit.data.synthetic import ensure_synthetic_dataset

    dataset = ensure_synthetic_dataset(seed=HELDOUT_SEED if heldout else 0)
    return dataset.train, dataset.val


def single_thread_env() -> dict:
    """Two runs side by side on two cores: one thread each (no oversubscription)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def run(command: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=single_thread_env()).returncode


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# Interleaved timing pairs: short runs whose final evaluation is made trivial (eval time is not timed).
PAIR_ITERS = 80
FAST_EVAL = ["TEST.DETECTIONS_PER_IMAGE", "1", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.99"]


def interleaved_pairs(name: str, count: int, lr: str, maskinit_options) -> list[dict]:
    """`count` pairs run one at a time: Detectron2's scratch GN recipe by its DefaultTrainer, then
    `maskinit train` with `maskinit_options(stock_output_dir)`; seconds per iteration of each."""
    train, val = datasets()
    data = ["--train-json", str(train.json_file), "--train-images", str(train.image_root),
            "--val-json", str(val.json_file), "--val-images", str(val.image_root)]
    pairs = []
    for pair in range(count):
        folder = RUNS / name / f"pair{pair}"
        stock_out, ours_out = folder / "stock", folder / "maskinit"
        run([PYTHON, str(ROOT / "benchmarks" / "stock_detectron2.py"), "scratch-gn", str(stock_out), "--lr", lr,
             "--seed", str(pair), "SOLVER.MAX_ITER", str(PAIR_ITERS), *FAST_EVAL], folder / "stock.log")
        run([*MASKINIT, "train", "--output-dir", str(ours_out), "--overwrite", "--no-progress", "--seed", str(pair),
             *data, *maskinit_options(stock_out)], folder / "maskinit.log")
        stock, ours = read_json(stock_out / "result.json"), read_json(ours_out / "run_summary.json")
        pairs.append({"stock_s_per_iter": stock["seconds_per_iter"], "maskinit_s_per_iter": ours["seconds_per_iter"]})
        print(pairs[-1], flush=True)
    return pairs


def paired_report(pairs: list[dict], iterations: int) -> dict:
    """Medians over interleaved (stock, maskinit) pairs of seconds per iteration, and of their ratio."""
    import statistics

    ratio = statistics.median(p["maskinit_s_per_iter"] / p["stock_s_per_iter"] for p in pairs)
    return {
        "iterations_per_run": iterations,
        "pairs": pairs,
        "median_stock_s_per_iter": statistics.median(p["stock_s_per_iter"] for p in pairs),
        "median_maskinit_s_per_iter": statistics.median(p["maskinit_s_per_iter"] for p in pairs),
        "median_ratio": round(ratio, 4),
        "median_overhead_percent": round((ratio - 1) * 100, 2),
    }
