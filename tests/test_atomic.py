"""Every file maskinit writes for something to read back goes through `write_atomically`: a write that
fails midway (here: the flush to disk) leaves the previous file whole, no temporary behind, and one
line naming the file."""

from __future__ import annotations

import errno
import json
import os

import pytest
from typer.testing import CliRunner

from maskinit.atomic import write_atomically
from maskinit.errors import MaskinitError

OLD = "the previous, complete file\n"


def fill_disk(monkeypatch) -> None:
    """From now on the disk is full when new content is flushed."""

    def refuse(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("maskinit.atomic.os.fsync", refuse)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_atomically_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "file.txt"
    assert write_atomically(path, "text") == path and path.read_text() == "text"
    write_atomically(path, b"bytes")
    assert path.read_bytes() == b"bytes"
    write_atomically(path, lambda handle: handle.write(b"streamed"))
    assert path.read_text() == "streamed"

    def half(handle):
        handle.write(b"half")
        raise RuntimeError("torch.save failed")

    with pytest.raises(RuntimeError):
        write_atomically(path, half)
    assert path.read_text() == "streamed" and leftovers(path.parent) == []


def test_export_config_write_is_atomic(tmp_path, monkeypatch):
    from maskinit.config import export_config

    out = tmp_path / "tiny.yaml"
    out.write_text(OLD)
    fill_disk(monkeypatch)
    with pytest.raises(MaskinitError, match=f"cannot write {out}: No space left on device"):
        export_config(out, preset="tiny")
    assert out.read_text() == OLD and leftovers(tmp_path) == []


def test_results_json_write_is_atomic(tmp_path, monkeypatch):
    from maskinit.evaluation import write_results_json

    out = tmp_path / "eval.json"
    out.write_text(OLD)
    fill_disk(monkeypatch)
    with pytest.raises(MaskinitError, match=f"cannot write {out}: No space left on device"):
        write_results_json({"bbox": {"AP": float("nan")}}, out)
    assert out.read_text() == OLD and leftovers(tmp_path) == []


def small_coco(folder):
    from maskinit.data.synthetic import generate_coco_dataset

    return generate_coco_dataset(folder, 2, seed=3)


def test_clean_json_write_is_atomic(tmp_path, monkeypatch):
    from maskinit.data.validate import check_coco, write_clean_json

    files = small_coco(tmp_path / "set")
    report = check_coco(files.json_file, files.image_root)
    out = tmp_path / "clean.json"
    out.write_text(OLD)
    fill_disk(monkeypatch)
    with pytest.raises(MaskinitError, match="cannot write the cleaned annotations .*No space left on device"):
        write_clean_json(files.json_file, report, out)
    assert out.read_text() == OLD and leftovers(tmp_path) == []


def test_model_categories_copy_write_is_atomic(tmp_path, monkeypatch):
    from maskinit.data.coco import _write_as_trained
    from maskinit.data.synthetic import CLASS_NAMES

    files = small_coco(tmp_path / "set")
    monkeypatch.setenv("MASKINIT_CACHE", str(tmp_path / "cache"))
    classes = dict(zip(reversed(CLASS_NAMES), range(1, len(CLASS_NAMES) + 1)))
    fill_disk(monkeypatch)
    with pytest.raises(MaskinitError, match="the model's categories for .*No space left on device"):
        _write_as_trained(files.json_file, classes)
    folder = tmp_path / "cache" / "classes"
    assert list(folder.iterdir()) == []  # nothing half-written that a later run would take as the copy
    monkeypatch.undo()
    monkeypatch.setenv("MASKINIT_CACHE", str(tmp_path / "cache"))
    copy = _write_as_trained(files.json_file, classes)
    assert [c["name"] for c in json.loads(copy.read_text())["categories"]] == list(classes)


def test_synthetic_annotations_write_is_atomic(tmp_path, monkeypatch):
    from maskinit.data.synthetic import ANNOTATIONS_FILE

    folder = tmp_path / "set"
    folder.mkdir()
    (folder / ANNOTATIONS_FILE).write_text(OLD)
    fill_disk(monkeypatch)
    with pytest.raises(OSError):
        small_coco(folder)
    assert (folder / ANNOTATIONS_FILE).read_text() == OLD and leftovers(folder) == []


@pytest.mark.slow
def test_check_data_json_out_write_is_atomic(tmp_path, monkeypatch):
    from maskinit.cli import app

    files = small_coco(tmp_path / "set")
    out = tmp_path / "report.json"
    out.write_text(OLD)
    fill_disk(monkeypatch)
    result = CliRunner().invoke(app, ["check-data", str(files.json_file), "--images", str(files.image_root),
                                      "--json-out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"cannot write {out}: No space left on device" in result.stderr
    assert out.read_text() == OLD and leftovers(tmp_path) == []


@pytest.mark.slow
def test_predictions_json_write_is_atomic(tmp_path, monkeypatch):
    from conftest import save_untrained_checkpoint

    from maskinit.config import load_config
    from maskinit.visualize import PREDICTIONS_FILE, predict

    cfg = load_config(preset="tiny")
    weights = save_untrained_checkpoint(cfg, tmp_path)
    files = small_coco(tmp_path / "set")
    out = tmp_path / "out"
    out.mkdir()
    (out / PREDICTIONS_FILE).write_text(OLD)
    fill_disk(monkeypatch)
    with pytest.raises(OSError):
        predict(cfg, weights, files.image_root, out)
    assert (out / PREDICTIONS_FILE).read_text() == OLD and leftovers(out) == []
