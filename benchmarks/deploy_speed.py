"""Deployment speed: images per second of prediction with the Detectron2 model (`maskinit predict`'s
path) against the same model exported as TorchScript (torch) and ONNX (onnxruntime), run by
`maskinit.deploy`, on the same images, CPU, one image at a time, one thread each.

The model is the tiny preset trained for 200 iterations on the embedded synthetic set (cached under
benchmarks/runs/deploy-speed/), exported with `maskinit export` (score threshold 0.5, as predict).
The images are 50 held-out synthetic pictures rescaled to 128-256 px on their longer side (the model
resizes each to its 128 px input). Each path is timed per image from the image array to boxes, scores,
classes and full-image masks (resize, model, box scaling, mask pasting), after 5 warm-up images; the
three paths take turns for 3 rounds and each reports its median round. Writes
benchmarks/results/deploy-speed.json and deploy-speed.md.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_speed.py [--busy "what else ran"]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS, RUNS, write_json  # noqa: E402

FOLDER = RUNS / "deploy-speed"
ITERATIONS = 200
IMAGES = 50
WARMUP = 5
ROUNDS = 3
THREADS = 1
SCORE_THRESHOLD = 0.5


def trained_run() -> Path:
    """The tiny preset trained on the embedded synthetic set (cached)."""
    from maskinit import load_config
    from maskinit.train import DataOptions, TrainOptions, train

    run = FOLDER / "run"
    if not (run / "model_final.pth").is_file():
        options = TrainOptions(output_dir=str(run), data=DataOptions(), max_iter=ITERATIONS, seed=0, progress=False,
                               overwrite=run.exists())
        train(load_config(preset="tiny"), options)
    return run


def benchmark_images() -> list:
    """50 held-out synthetic pictures, each rescaled so that its longer side is 128 to 256 px."""
    import cv2
    import numpy as np

    from maskinit.data.images import read_image
    from maskinit.data.synthetic import generate_coco_dataset

    folder = FOLDER / "images"
    files = generate_coco_dataset(folder, IMAGES, seed=20261206)
    rng = np.random.default_rng(0)
    images = []
    for path in sorted(files.image_root.iterdir()):
        image = read_image(path)
        scale = rng.uniform(1.0, 2.0)
        size = (round(image.shape[1] * scale * rng.uniform(0.8, 1.0)), round(image.shape[0] * scale))
        images.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    return images


def time_path(predict, images) -> tuple[float, int]:
    """Seconds for all images one at a time, and the detections found."""
    found = 0
    started = time.perf_counter()
    for image in images:
        found += predict(image)
    return time.perf_counter() - started, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="", help="What else ran on the machine during the timings.")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    from maskinit import load_config
    from maskinit.deploy import load
    from maskinit.export import export_model
    from maskinit.predict import Detectron2Predictor
    from maskinit.visualize import _categories

    run = trained_run()
    cfg = load_config(run / "config.yaml")
    exported = {}
    for fmt, suffix in (("torchscript", "ts"), ("onnx", "onnx")):
        path = FOLDER / f"model.{suffix}"
        export_model(cfg, run / "model_final.pth", fmt, path, score_threshold=SCORE_THRESHOLD)
        exported[fmt] = load(path, threads=THREADS)
    detectron2 = Detectron2Predictor(cfg, run / "model_final.pth", SCORE_THRESHOLD, *_categories(cfg))
    images = benchmark_images()
    paths = {
        "Detectron2 (eager)": lambda image: len(detectron2(image, "image")),
        "TorchScript (torch)": lambda image: len(exported["torchscript"](image)),
        "ONNX (onnxruntime)": lambda image: len(exported["onnx"](image)),
    }
    for predict in paths.values():
        time_path(predict, images[:WARMUP])
    rounds = {name: [] for name in paths}
    detections = {}
    for _ in range(ROUNDS):
        for name, predict in paths.items():
            seconds, found = time_path(predict, images)
            rounds[name].append(seconds)
            detections[name] = found
            print(f"{name}: {len(images) / seconds:.1f} images/s ({found} detections)", flush=True)
    baseline = statistics.median(rounds["Detectron2 (eager)"])
    results = {}
    for name, seconds in rounds.items():
        median = statistics.median(seconds)
        results[name] = {
            "images_per_s": round(len(images) / median, 2),
            "ms_per_image": round(1000 * median / len(images), 1),
            "speedup": round(baseline / median, 2),
            "rounds_s": [round(s, 3) for s in seconds],
            "detections": detections[name],
        }
    sizes = sorted(max(image.shape[:2]) for image in images)
    report = {
        "what": "images/s of predict, image array to boxes, scores, classes and full-image masks, one at a time",
        "model": f"tiny preset, {ITERATIONS} iterations on the embedded synthetic set, "
        f"score threshold {SCORE_THRESHOLD}",
        "images": len(images),
        "longer_side_px": [sizes[0], sizes[-1]],
        "threads": THREADS,
        "rounds": ROUNDS,
        "warmup_images": WARMUP,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "busy": args.busy,
        "torch": torch.__version__,
        "results": results,
    }
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    write_json(RESULTS / "deploy-speed.json", report)
    lines = ["| path | images/s | ms per image | vs Detectron2 | detections |", "|---|---:|---:|---:|---:|"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['images_per_s']:.1f} | {row['ms_per_image']:.1f} | {row['speedup']:.2f}x | "
                     f"{row['detections']} |")
    note = f"\n\n{len(images)} images ({sizes[0]}-{sizes[-1]} px), {THREADS} thread, median of {ROUNDS} rounds"
    note += f"; measured beside other work: {args.busy}" if args.busy else ""
    (RESULTS / "deploy-speed.md").write_text("\n".join(lines) + note + "\n")
    print("\n".join(lines) + note)


if __name__ == "__main__":
    main()
