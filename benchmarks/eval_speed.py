"""Evaluation benchmark: faster-coco-eval against pycocotools' COCOeval on a large generated result
set (5,000 images), for box and mask AP: time of each and the largest difference in the 12 COCO
summary numbers (must be < 1e-4). Writes benchmarks/results/eval_speed.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS, RUNS, write_json  # noqa: E402

NUM_IMAGES = 5000


def main() -> None:
    from maskinit.data.synthetic import generate_coco_dataset, synthetic_predictions
    from maskinit.evaluation import FASTER_COCO_EVAL, PYCOCOTOOLS, coco_summary_stats

    folder = RUNS / f"eval{NUM_IMAGES}"
    json_file = folder / "annotations.json"
    if not json_file.is_file():
        generate_coco_dataset(folder, NUM_IMAGES, seed=7)
    results = synthetic_predictions(json_file, seed=7)
    report = {"images": NUM_IMAGES, "predictions": len(results), "tasks": {}}
    for iou_type in ("bbox", "segm"):
        stats, seconds = {}, {}
        for backend in (PYCOCOTOOLS, FASTER_COCO_EVAL):
            started = time.perf_counter()
            stats[backend] = coco_summary_stats(json_file, results, iou_type, backend)
            seconds[backend] = time.perf_counter() - started
        difference = float(abs(stats[PYCOCOTOOLS] - stats[FASTER_COCO_EVAL]).max())
        report["tasks"][iou_type] = {
            "pycocotools_s": round(seconds[PYCOCOTOOLS], 2),
            "faster_coco_eval_s": round(seconds[FASTER_COCO_EVAL], 2),
            "speedup": round(seconds[PYCOCOTOOLS] / seconds[FASTER_COCO_EVAL], 2),
            "ap": round(float(stats[PYCOCOTOOLS][0]) * 100, 3),
            "max_abs_difference": difference,
        }
        print(iou_type, report["tasks"][iou_type], flush=True)
    write_json(RESULTS / "eval_speed.json", report)
    assert all(task["max_abs_difference"] < 1e-4 for task in report["tasks"].values()), report


if __name__ == "__main__":
    main()
