"""`make bench`: every benchmark, then the README tables from their JSON results.

Runs are cached under benchmarks/runs/, so an interrupted `make bench` resumes where it stopped.
Order: evaluation speed (minutes), overhead (minutes), recipes (hours on 2 CPU cores).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    for script, args in (
        ("eval_speed.py", []),
        ("overhead.py", []),
        ("recipes.py", []),
        ("recipes.py", ["--heldout"]),
        ("plots.py", []),
    ):
        print(f"== {script} {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)


if __name__ == "__main__":
    main()
