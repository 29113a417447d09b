"""maskinit.errors: one error type, its one line, interrupts by signal; and what the CLI makes of them: one red
line and exit 2, or with `--debug` the traceback down to the underlying exception."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import format_writers as w
import pytest

from maskinit.errors import (
    EXIT_CODES,
    Interrupted,
    MaskinitError,
    RunDiverged,
    RunFailed,
    RunInterrupted,
    exit_code,
    one_line,
    signal_name,
)


def test_one_line_is_the_first_line_or_the_type():
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(ValueError("  \n  padded  \n")) == "padded"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(MaskinitError("")) == "MaskinitError"


def test_interrupts_name_their_signal():
    assert signal_name(Interrupted("SIGTERM")) == "SIGTERM"
    assert signal_name(Interrupted()) == "SIGINT"
    assert signal_name(KeyboardInterrupt()) == "SIGINT"  # Ctrl-C
    assert isinstance(Interrupted(), KeyboardInterrupt)  # stops what Ctrl-C stops


def test_maskinit_error_is_an_exception_with_its_message():
    error = MaskinitError("data/train.json: no images")
    assert isinstance(error, Exception) and str(error) == "data/train.json: no images"


def test_each_ending_has_the_exit_code_a_scheduler_acts_on():
    assert EXIT_CODES == {"failed": 1, "bad_input": 2, "diverged": 3, "SIGINT": 130, "SIGTERM": 143}
    assert exit_code(MaskinitError("bad option")) == 2
    assert exit_code(RunFailed("crashed")) == 1
    assert exit_code(RunDiverged("NaN")) == 3
    assert exit_code(RunInterrupted("stopped", "SIGTERM")) == 143
    assert exit_code(RunInterrupted("stopped", "SIGINT")) == 130
    assert exit_code(Interrupted("SIGTERM")) == 143 and exit_code(KeyboardInterrupt()) == 130
    assert all(isinstance(error, MaskinitError) for error in (RunFailed(""), RunDiverged(""), RunInterrupted("")))


@pytest.fixture(scope="module")
def broken_labelme(tmp_path_factory):
    """A LabelMe folder whose second file has a mask shape whose mask is not a PNG."""
    root = tmp_path_factory.mktemp("labelme")
    parts = w.source_set(root / "source", num_train=2, num_val=1, mask_format="polygon")
    w.write_labelme({"train": parts["train"]}, root / "data")
    second = sorted((root / "data" / "train").glob("*.json"))[1]
    data = json.loads(second.read_text())
    data["shapes"].append({"label": data["shapes"][0]["label"], "points": [[2, 2], [9, 9]], "shape_type": "mask",
                           "mask": "", "group_id": None, "flags": {}})
    second.write_text(json.dumps(data))
    return root / "data", second


def maskinit(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "maskinit", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_refused_input_is_one_line_and_debug_shows_the_cause(broken_labelme):
    folder, second = broken_labelme
    plain = maskinit("check-data", "--data", folder, "--format", "labelme")
    assert plain.returncode == 2, plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and Path(second).name in lines[0] and "mask is not a base64 PNG" in lines[0], plain.stderr
    assert "Traceback" not in plain.stderr + plain.stdout

    debug = maskinit("--debug", "check-data", "--data", folder, "--format", "labelme")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    underlying, _, raised = debug.stderr.partition(
        "The above exception was the direct cause of the following exception"
    )
    assert "PIL.UnidentifiedImageError" in underlying  # the exception underneath, named by its type
    assert "maskinit.errors.MaskinitError" in raised and "mask is not a base64 PNG" in raised
