"""`make bench`: every benchmark; JSON results and PNG plots in benchmarks/results/.

Runs are cached under benchmarks/runs/, so an interrupted `make bench` resumes where it stopped.
Order: evaluation speed (minutes), overhead (minutes), the recipe table on the embedded and the
held-out set (about 3 hours on 2 CPU cores), then, where a CUDA GPU is present, the variant sweep
and the full-scale throughput, and the plots.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    steps = [
        ("eval_speed.py", []),
        ("overhead.py", []),
        ("speed.py", []),
        ("recipes.py", []),
        ("recipes.py", ["--heldout"]),
    ]
    if cuda_available():
        steps += [
            ("recipes.py", ["--all", "--device", "cuda", "--jobs", "14", "--runs-dir", str(HERE / "runs" / "gpu"), "--tag=-gpu"]),
            ("gpu_throughput.py", ["--iters", "200"]),
        ]
    else:
        print("no CUDA GPU: the variant sweep and gpu_throughput.py are skipped (see benchmarks/gpu.md)", flush=True)
    steps.append(("plots.py", []))
    for script, args in steps:
        print(f"== {script} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)


if __name__ == "__main__":
    main()
