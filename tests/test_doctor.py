"""maskinit.doctor: the checks of an install, each a finding with its fix (the command: test_cli.py)."""

from __future__ import annotations

import platform

from maskinit import doctor


def test_this_install_passes_every_required_check():
    checks = doctor.run_checks()
    names = [check.name for check in checks]
    assert names[:2] == ["python", "torch"] and {"torchvision", "detectron2", "pycocotools", "cv2"} <= set(names)
    assert checks[0].detail == platform.python_version()
    failed = [check for check in checks if check.required and not check.ok]
    assert failed == []


def test_a_missing_module_is_a_finding_with_its_fix():
    needed = doctor.check_module("maskinit_no_such_module", True, "pip install it")
    assert (needed.ok, needed.detail, needed.fix) == (False, "missing (ModuleNotFoundError)", "pip install it")
    optional = doctor.check_module("maskinit_no_such_module", False, "optional")
    assert optional.ok and not optional.required  # an optional module missing does not fail the install
    present = doctor.check_module("numpy", True, "")
    assert present.ok and present.detail == __import__("numpy").__version__


def test_faster_coco_eval_says_which_cocoeval_is_used():
    (fast,) = [check for check in doctor.run_checks() if check.name == "faster_coco_eval"]
    assert not fast.required
    assert fast.detail.endswith(("(used as the COCOeval backend)", "pycocotools' COCOeval is used"))


def test_torchvision_ops_are_run_not_only_imported():
    check = doctor.check_torchvision()
    assert check.ok and "ops load" in check.detail
