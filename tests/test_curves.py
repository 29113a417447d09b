"""`curves.png` from Detectron2's metrics.json: losses, LR and AP against iterations; a damaged or
empty metrics file costs plot lines, never the run."""

from __future__ import annotations

import json

import cv2
import pytest

from maskinit.curves import plot_curves, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(folder, rows, tail: bytes = b""):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    path.write_bytes("".join(json.dumps(row) + "\n" for row in rows).encode() + tail)
    return path


def is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and cv2.imread(str(path)) is not None


@pytest.mark.slow
def test_a_run_s_metrics_become_a_png_with_three_panels(tmp_path):
    rows = [{"iteration": i, "total_loss": 2.0 / (i + 1), "loss_cls": 1.0 / (i + 1), "lr": 0.001 * min(1, i / 3)}
            for i in range(0, 40, 4)]
    rows += [{"iteration": 19, "bbox/AP": 3.0, "segm/AP": 2.5}, {"iteration": 39, "bbox/AP": 7.0, "segm/AP": 6.0}]
    write_metrics(tmp_path, rows)
    out = plot_curves(tmp_path)
    assert out == tmp_path / "curves.png" and is_png(out)
    height, width = cv2.imread(str(out)).shape[:2]
    assert width > 2 * height  # losses | learning rate | validation AP side by side


def test_no_metrics_file_means_no_plot(tmp_path):
    assert plot_curves(tmp_path) is None
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize(
    "rows,tail",
    [
        ([], b""),  # empty: a run stopped before its first metrics
        ([{"iteration": 3, "total_loss": 1.0}], b'{"iteration": 4, "total_lo'),  # torn last line
        ([{"iteration": 3, "total_loss": 1.0}], b"5\n[1, 2]\nnull\n"),  # JSON, but not objects
        ([{"iteration": 3, "total_loss": 1.0}], b"\xff\xfe\x00 not text\n"),  # not UTF-8
        ([{"iteration": 1, "total_loss": 0.0, "lr": None}, {"total_loss": 2.0}], b""),  # no positive loss, no iteration
    ],
)
@pytest.mark.slow
def test_bad_or_empty_metrics_still_give_a_png(tmp_path, rows, tail):
    write_metrics(tmp_path, rows, tail)
    out = plot_curves(tmp_path)
    assert out is not None and is_png(out)


def test_read_metrics_keeps_only_whole_objects(tmp_path):
    path = write_metrics(tmp_path, [{"iteration": 1, "total_loss": 2.0}, {"iteration": 2, "lr": 0.1}],
                         b"[3]\n\xff\n" + b'{"iteration": 3, "total')
    assert read_metrics(path) == [{"iteration": 1, "total_loss": 2.0}, {"iteration": 2, "lr": 0.1}]
