"""`maskinit doctor`: is this install able to train from scratch, and what is missing?"""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        return [Check("torch", False, f"import failed: {error}", "make setup (installs torch==2.13.0)")]
    build = (
        f"{torch.__version__} (CUDA build {torch.version.cuda})"
        if torch.version.cuda
        else f"{torch.__version__} (CPU build)"
    )
    if torch.cuda.is_available():
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = f"available: {gpus}"
    else:
        cuda = "not available: training runs on CPU"
    return [Check("torch", True, build), Check("CUDA", True, cuda, required=False)]


def check_torchvision() -> Check:
    try:
        import torch
        import torchvision
        from torchvision.ops import nms

        nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1.0]), 0.5)
        return Check("torchvision", True, f"{torchvision.__version__}, ops load")
    except Exception as error:  # noqa: BLE001
        return Check(
            "torchvision", False, f"ops broken: {str(error).splitlines()[0]}",
            "install torch and torchvision from the same build: make setup",
        )


def check_detectron2() -> list[Check]:
    try:
        import detectron2
    except Exception as error:  # noqa: BLE001
        return [
            Check(
                "detectron2", False, f"import failed: {error}", "make setup (repacks the registry's detectron2 wheel)"
            )
        ]
    checks = [Check("detectron2", True, f"{detectron2.__version__} at {detectron2.__path__[0]}")]
    try:
        from detectron2 import _C  # noqa: F401

        checks.append(Check("detectron2 _C ops", True, "compiled ops present", required=False))
    except Exception:  # noqa: BLE001
        checks.append(Check(
            "detectron2 _C ops", True,
            "absent: rotated boxes, deformable conv and Detectron2's compiled COCOeval unavailable "
            "(Mask R-CNN unaffected)", required=False,
        ))
    try:
        from detectron2 import model_zoo  # noqa: F401  (imports pkg_resources)
    except Exception as error:  # noqa: BLE001
        checks.append(Check("detectron2 model_zoo", False, f"import failed: {error}", "pip install 'setuptools<81'"))
    return checks


def check_module(name: str, required: bool, fix: str) -> Check:
    try:
        module = importlib.import_module(name)
        return Check(name, True, getattr(module, "__version__", "present"), required=required)
    except Exception as error:  # noqa: BLE001
        return Check(name, not required, f"missing ({type(error).__name__})", fix, required=required)


def run_checks() -> list[Check]:
    checks = [Check("python", True, platform.python_version())]
    checks += check_torch()
    checks.append(check_torchvision())
    checks += check_detectron2()
    checks.append(check_module("pycocotools", True, "pip install pycocotools"))
    fast = check_module("faster_coco_eval", False, "pip install faster-coco-eval (optional, faster COCO eval)")
    if fast.ok and fast.detail != "present" and "missing" not in fast.detail:
        fast.detail += " (used as the COCOeval backend)"
    elif "missing" in fast.detail:
        fast.detail += ": pycocotools' COCOeval is used"
    checks.append(fast)
    checks.append(check_module("cv2", True, "pip install opencv-python-headless"))
    return checks
