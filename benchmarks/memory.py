"""Calibrate the memory estimate of `maskinit.machine`: peak resident memory of CPU training steps
against model and input size.

Each point trains 3 iterations in a fresh process on generated square images and records that
process's peak RSS (`ru_maxrss`). `maskinit/machine.py` holds the fitted constants and names this
command: `.venv/bin/python benchmarks/memory.py [--out benchmarks/results/memory.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# (preset, depth, FPN channels, image side, batch)
POINTS = [
    ("tiny", 18, 64, 128, 4), ("tiny", 18, 64, 256, 4), ("tiny", 18, 64, 512, 2),
    ("r50-fpn", 50, 256, 256, 2), ("r50-fpn", 50, 256, 512, 1), ("r50-fpn", 50, 256, 512, 2),
]

CHILD = r"""
import resource, sys, json
from maskinit import load_config
from maskinit.train import DataOptions, TrainOptions, train
preset, side, batch, data, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = load_config(preset=preset, overrides=["INPUT.MIN_SIZE_TRAIN", f"({side},)", "INPUT.MAX_SIZE_TRAIN", str(side),
      "INPUT.MIN_SIZE_TEST", str(side), "INPUT.MAX_SIZE_TEST", str(side), "MODEL.DEVICE", "cpu",
      "MASKINIT.AUGMENT.COPY_PASTE.PROB", "0.0"])  # the model and input only: Copy-Paste's bitmasks are counted
train(cfg, TrainOptions(output_dir=out, max_iter=3, ims_per_batch=batch, progress=False, eval_period=0,
      data=DataOptions(data + "/train/annotations.json", data + "/train/images")))
print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    args = parser.parse_args()
    from maskinit.data.synthetic import generate_coco_dataset

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, depth, fpn, side, batch in POINTS:
            data = Path(tmp) / f"data{side}"
            if not data.is_dir():
                generate_coco_dataset(data / "train", 8, seed=1, image_size=side)
            out = Path(tmp) / f"run-{preset}-{side}-{batch}"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKINIT_CACHE": tmp}
            proc = subprocess.run([sys.executable, "-c", CHILD, preset, str(side), str(batch), str(data), str(out)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            peak = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kib"] * 1024
            row = {
                "preset": preset,
                "depth": depth,
                "fpn_channels": fpn,
                "side": side,
                "batch": batch,
                "peak_bytes": peak,
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "benchmarks/memory.py", "points": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
