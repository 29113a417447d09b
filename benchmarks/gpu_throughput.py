"""GPU throughput of the full-scale R50-FPN preset: maskinit with AMP, maskinit in fp32, and stock
Detectron2's DefaultTrainer on the same config (exported with `--plain`), on one GPU.

The embedded synthetic set is resized to the preset's 800-pixel scale, so no download is needed;
images/s = batch / median `time` of Detectron2's metrics.json after the first WARM iterations.

Usage: python benchmarks/gpu_throughput.py [--iters 80] [--batch 8]   (writes results/gpu.json)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MASKINIT, PYTHON, RESULTS, ROOT, datasets, write_json  # noqa: E402

WARM = 20


def median_step_seconds(metrics: Path) -> float | None:
    from maskinit.curves import read_metrics

    times = [row["time"] for row in read_metrics(metrics) if "time" in row and row.get("iteration", 0) >= WARM]
    return statistics.median(times) if times else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=80)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda", help="cpu only to check the script itself")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "gpu")
    args = parser.parse_args()
    train, _ = datasets()
    data = ["--train-json", str(train.json_file), "--train-images", str(train.image_root), "DATASETS.TEST", "()"]
    common = [
        "--preset", "r50-fpn", "--device", args.device, "--max-iter", str(args.iters), "--ims-per-batch",
        str(args.batch), "--overwrite", "--no-progress", *data, "SOLVER.CHECKPOINT_PERIOD", "100000",
        "DATALOADER.NUM_WORKERS", "4",
    ]
    runs = {}
    for name, extra in (("maskinit-amp", ["--amp"]), ("maskinit-fp32", ["--no-amp"])):
        out = args.out / name
        subprocess.run([*MASKINIT, "train", *common, *extra, "--output-dir", str(out)], check=True)
        runs[name] = out / "metrics.json"
    plain = args.out / "r50-fpn-plain.yaml"
    subprocess.run(
        [*MASKINIT, "export-config", "--preset", "r50-fpn", "--plain", "--num-classes", "5", "--output", str(plain)],
        check=True,
    )
    for name, amp in (("stock-fp32", "False"), ("stock-amp-fp16", "True")):
        out = args.out / name
        subprocess.run(
            [
                PYTHON,
                str(Path(__file__).with_name("stock_train_net.py")),
                "--config-file", str(plain), "--coco", "bench_train", str(train.json_file), str(train.image_root),
                "MODEL.DEVICE", args.device, "SOLVER.MAX_ITER", str(args.iters), "SOLVER.IMS_PER_BATCH",
                str(args.batch), "SOLVER.AMP.ENABLED", amp, "SOLVER.CHECKPOINT_PERIOD", "100000",
                "DATALOADER.NUM_WORKERS", "4", "DATASETS.TRAIN", "('bench_train',)", "DATASETS.TEST", "()",
                "OUTPUT_DIR", str(out),
            ],
            check=True,
        )
        runs[name] = out / "metrics.json"
    import torch

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    table = {}
    for name, metrics in runs.items():
        seconds = median_step_seconds(metrics)
        table[name] = {"seconds_per_iter": round(seconds, 4) if seconds else None,
                       "images_per_second": round(args.batch / seconds, 2) if seconds else None}
    result = {"device": device, "torch": torch.__version__, "batch": args.batch,
              "iterations": args.iters, "warm_iterations_skipped": WARM, "table": table}
    write_json(RESULTS / "gpu.json", result)
    for name, row in table.items():
        print(f"{name:16s} {row['seconds_per_iter']} s/iter  {row['images_per_second']} images/s")


if __name__ == "__main__":
    main()
