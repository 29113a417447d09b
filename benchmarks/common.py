"""Shared settings of the benchmarks: the data (the synthetic sets or any COCO set by path), the tiny
scale, the iteration budget, result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs"
PYTHON = sys.executable
MASKINIT = [sys.executable, "-m", "maskinit"]

# The budget: 400 iterations at batch 4, warmup 80, one LR step at 80 %.
ITERS = 400
WARMUP = 80
STEP = 320
SEEDS = (0, 1, 2)
# AP against iterations: evaluate every 100 iterations (eval time is not in s/iter).
EVAL_PERIOD = 100
# A held-out set of the same kind: the same generator, a seed no run ever trains on.
HELDOUT_SEED = 20261123

# The real-photo sets, each a folder {train.json, train/, val.json, val/}: by default
# ../shared/data/ beside the project (never copied into it); MASKINIT_BENCH_DATA points elsewhere.
REAL_SETS = ("rice_leaf", "coco128")
REAL_DATA_ENV = "MASKINIT_BENCH_DATA"

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
# Stock Detectron2 at the R50-FPN scale of the zoo config (depth 50, 256 channels, its RPN and RoI
# sizes), batch 4 on one device: only the batch, the device and the loader are set.
R50_SCALE = ["SOLVER.IMS_PER_BATCH", "4", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]


def budget(iters: int = ITERS) -> list[str]:
    """Detectron2 keys of the budget scaled to `iters`: warmup and the LR step keep their share (80 of
    400, step at 320), as `maskinit train --max-iter` rescales the preset's schedule."""
    warmup, step = round(WARMUP * iters / ITERS), round(STEP * iters / ITERS)
    step = max(1, min(step, iters - 1))  # fvcore wants the step before the last iteration
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.WARMUP_ITERS", str(warmup), "SOLVER.STEPS", f"({step},)"]


BUDGET = budget(ITERS)


def eval_period(iters: int = ITERS) -> int:
    """Evaluations for the AP-against-iterations curves: every 100 iterations up to the 400 budget, 8
    points on longer runs (every 200 at 1,600)."""
    return EVAL_PERIOD if iters <= ITERS else max(EVAL_PERIOD, iters // 8)


@dataclass(frozen=True)
class CocoSet:
    """A COCO instance-segmentation set: training and validation JSON files and image folders."""

    name: str
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path
    synthetic: bool = False

    def args(self) -> list[str]:
        """The four data options, as `maskinit train` and stock_detectron2.py take them."""
        return ["--train-json", str(self.train_json), "--train-images", str(self.train_images),
                "--val-json", str(self.val_json), "--val-images", str(self.val_images)]

    def categories(self, split: str = "train") -> list[dict]:
        data = json.loads(Path(self.train_json if split == "train" else self.val_json).read_text())
        return sorted(data["categories"], key=lambda category: int(category["id"]))

    def describe(self) -> dict:
        """Counts a reader needs to judge the set: images, instances, classes listed and present."""
        info = {}
        for split, path in (("train", self.train_json), ("val", self.val_json)):
            data = json.loads(Path(path).read_text())
            ids = sorted(int(c["id"]) for c in data["categories"])
            present = {int(a["category_id"]) for a in data["annotations"]}
            info[split] = {"images": len(data["images"]), "instances": len(data["annotations"]),
                           "classes_listed": len(ids), "classes_present": len(present),
                           "category_ids_contiguous_from_1": ids == list(range(1, len(ids) + 1))}
        return info


def coco_set(name: str, folder: Path | str) -> CocoSet:
    """The set in `folder`: train.json, train/, val.json, val/ (the layout of ../shared/data/*)."""
    folder = Path(folder).expanduser().resolve()
    dataset = CocoSet(name, folder / "train.json", folder / "train", folder / "val.json", folder / "val")
    missing = [str(p) for p in (dataset.train_json, dataset.val_json) if not p.is_file()]
    missing += [str(p) for p in (dataset.train_images, dataset.val_images) if not p.is_dir()]
    if missing:
        raise SystemExit(f"{name}: not a COCO set folder (missing {', '.join(missing)}); "
                         "expected train.json, train/, val.json, val/")
    return dataset


def parse_data(spec: str) -> CocoSet:
    """`NAME=PATH` or `PATH` (the name is then the folder's): a set folder, as coco_set."""
    name, _, path = spec.rpartition("=")
    path = Path(path)
    return coco_set(name or path.resolve().name, path)


def real_data_dir() -> Path:
    return Path(os.environ.get(REAL_DATA_ENV) or ROOT.parent / "shared" / "data")


def real_sets(folder: Path | None = None, names=REAL_SETS) -> list[CocoSet]:
    """The real sets found under `folder` (default real_data_dir()); an absent one is skipped with a printed line."""
    folder = Path(folder) if folder else real_data_dir()
    found = []
    for name in names:
        if (folder / name / "train.json").is_file():
            found.append(coco_set(name, folder / name))
        else:
            print(f"real set {name} skipped: {folder / name}/train.json not found "
                  f"(point {REAL_DATA_ENV} or --real-data at the folder holding {', '.join(names)})", flush=True)
    return found


def datasets(heldout: bool = False):
    """(train, val) COCO files: the embedded default, or the held-out set of the same kind."""
    sys.path.insert(0, str(ROOT))
    from maskinit.data.synthetic import ensure_synthetic_dataset

    dataset = ensure_synthetic_dataset(seed=HELDOUT_SEED if heldout else 0)
    return dataset.train, dataset.val


def synthetic_set(heldout: bool = False) -> CocoSet:
    """The embedded synthetic set ("default") or its held-out twin ("heldout"), as a CocoSet."""
    train, val = datasets(heldout)
    return CocoSet("heldout" if heldout else "default", Path(train.json_file), Path(train.image_root),
                   Path(val.json_file), Path(val.image_root), synthetic=True)


# What the comparator gets of maskinit's default on a set: its input sizes and its per-image budget.
COMPARATOR_KEYS = (
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TEST",
    "TEST.DETECTIONS_PER_IMAGE",
)


def comparator_settings(dataset: CocoSet, preset: str, cache: Path) -> list[str]:
    """The input sizes and the per-image budget (sampled RoIs, proposals, detections) of `maskinit train
    --preset PRESET` on this set (its config as fitted to the training set by the default fit, cached in
    `cache`), as KEY VALUE options for a stock Detectron2 config: the comparator then sees the images at
    the size maskinit's default trains and tests on, with as many RoIs, proposals and detections."""
    cached = read_json(cache)
    if not cached:
        sys.path.insert(0, str(ROOT))
        from maskinit.cfgkeys import get_key
        from maskinit.config import load_config
        from maskinit.data.fit import fit_to_data
        from maskinit.run_options import DataOptions

        fitted, _ = fit_to_data(
            load_config(preset=preset), DataOptions(str(dataset.train_json), str(dataset.train_images))
        )
        cached = {key: get_key(fitted, key) for key in COMPARATOR_KEYS}
        write_json(cache, cached)
    options = []
    for key, value in cached.items():
        if key.endswith("MIN_SIZE_TRAIN"):
            value = "(" + ", ".join(str(v) for v in value) + ",)"
        options += [key, str(value)]
    return options


def input_sizes(config_yaml: Path) -> str | None:
    """"train MIN/MAX, test MIN/MAX" of a run's config.yaml, for the tables."""
    if not config_yaml.is_file():
        return None
    import yaml

    cfg = (yaml.safe_load(config_yaml.read_text()) or {}).get("INPUT", {})
    train = cfg.get("MIN_SIZE_TRAIN")
    train = "-".join(str(v) for v in train) if isinstance(train, (list, tuple)) else train
    return f"{train}/{cfg.get('MAX_SIZE_TRAIN')}, test {cfg.get('MIN_SIZE_TEST')}/{cfg.get('MAX_SIZE_TEST')}"


def single_thread_env() -> dict:
    """Two runs side by side on two cores: one thread each (no oversubscription)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def run(command: list[str], log: Path, timeout: float | None = None, append: bool = False) -> int:
    """Run `command` (one thread), its output in `log` (added to it with `append`); past `timeout`
    seconds it is killed (exit 124)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a" if append else "w") as handle:
        try:
            return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=single_thread_env(),
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            handle.write(f"\nkilled after {timeout} s\n")
            return 124


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# Interleaved timing pairs: short runs whose final evaluation is made trivial (eval time is not timed).
PAIR_ITERS = 80
FAST_EVAL = ["TEST.DETECTIONS_PER_IMAGE", "1", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.99"]


def interleaved_pairs(name: str, count: int, lr: str, maskinit_options, iters: int = PAIR_ITERS) -> list[dict]:
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
             "--seed", str(pair), "SOLVER.MAX_ITER", str(iters), *FAST_EVAL], folder / "stock.log")
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
