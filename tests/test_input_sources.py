"""What `maskinit predict` runs on (`maskinit.input_sources`): an image, a folder (and its subfolders), a
glob, a list file, a video sampled every N frames; and `predict` itself on them with a run folder or an
exported model, its per-image table, and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import save_untrained_checkpoint
from typer.testing import CliRunner

from maskinit import MaskinitError, load_config
from maskinit.cli import app
from maskinit.config import export_config
from maskinit.input_sources import input_sources
from maskinit.predict import resolve_model
from maskinit.visualize import PREDICTIONS_FILE, predict

runner = CliRunner()


def picture(seed: int, size=(64, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), 30, np.uint8)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(5, min(size) - 20, 2))
        image[y:y + 15, x:x + 15] = rng.integers(100, 255, 3)
    return image


@pytest.fixture
def folder(tmp_path):
    """a.png, b.jpg, c.tif (16-bit), d.npy at the top; sub/e.png and sub/deeper/a.png below; notes.txt."""
    root = tmp_path / "images"
    (root / "sub" / "deeper").mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), picture(0))
    cv2.imwrite(str(root / "b.jpg"), picture(1))
    tifffile.imwrite(root / "c.tif", picture(2)[:, :, 0].astype(np.uint16) * 200)
    np.save(root / "d.npy", picture(3).astype(np.float32))
    cv2.imwrite(str(root / "sub" / "e.png"), picture(4))
    cv2.imwrite(str(root / "sub" / "deeper" / "a.png"), picture(5))
    (root / "notes.txt").write_text("not an image")
    return root


def write_video(path: Path, frames: int = 10, size=(96, 128)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size[1], size[0]))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(picture(index, size))
    writer.release()
    return path


def labels(sources) -> list[str]:
    return [item.label for item in sources.items]


def test_a_folder_gives_its_images_and_recursive_its_subfolders(folder):
    top = input_sources(folder)
    assert labels(top) == ["a.png", "b.jpg", "c.tif", "d.npy"] and top.total == 4 and top.kind == "folder"
    everything = input_sources(folder, recursive=True)
    assert labels(everything) == ["a.png", "b.jpg", "c.tif", "d.npy", "sub/deeper/a.png", "sub/e.png"]
    assert [item.name for item in everything.items] == ["a", "b", "c", "d", "a_5", "e"]  # output names stay unique
    kinds = {item.label: image.shape[2:] + (image.dtype.name,) for item, image in everything}
    assert kinds["c.tif"] == (1, "uint16") and kinds["d.npy"] == (3, "float32") and kinds["b.jpg"] == (3, "uint8")


def test_a_glob_a_list_and_a_single_image(folder, tmp_path):
    assert labels(input_sources(str(folder / "*.png"))) == ["a.png"]
    assert labels(input_sources(str(folder / "**" / "*.png"))) == ["a.png", "sub/deeper/a.png", "sub/e.png"]
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# scans to run\nimages/b.jpg\n\n{folder / 'sub' / 'e.png'}\nimages/missing.png\n")
    listed = input_sources(listing)
    assert listed.kind == "list" and labels(listed) == [
        "images/b.jpg",
        str(folder / "sub" / "e.png"),
        "images/missing.png",
    ]
    results = list(listed)
    assert isinstance(results[2][1], MaskinitError) and "missing.png" in str(results[2][1])  # skipped, not fatal
    single = input_sources(folder / "c.tif")
    assert single.kind == "image" and labels(single) == ["c.tif"]


def test_a_video_gives_every_nth_frame_named_by_index(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=10)
    sources = input_sources(video, every=3)
    assert sources.kind == "video" and sources.total == 4
    frames = list(sources)
    assert [item.frame for item, _ in frames] == [0, 3, 6, 9]
    assert [item.name for item, _ in frames] == ["clip_f000000", "clip_f000003", "clip_f000006", "clip_f000009"]
    assert all(image.shape == (96, 128, 3) and image.dtype == np.uint8 for _, image in frames)


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: str(root / "*.jpeg"), "no file matches"),
    (lambda root: str(root / "*.txt"), "none of them an image"),
    (lambda root: root / "nowhere", "input .*nowhere not found"),
    (lambda root: root / "sub" / "deeper" / "..", None),
])
def test_inputs_that_give_no_image_are_one_line(folder, make, message):
    if message is None:
        assert labels(input_sources(make(folder))) == ["e.png"]
        return
    with pytest.raises(MaskinitError, match=message):
        input_sources(make(folder))


def test_empty_folders_lists_and_bad_videos_are_one_line(tmp_path):
    (tmp_path / "empty" / "inner").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "empty" / "inner" / "x.png"), picture(0))
    with pytest.raises(MaskinitError, match=r"no images .* in .*empty \(images in subfolders: --recursive\)"):
        input_sources(tmp_path / "empty")
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing yet\n\n")
    with pytest.raises(MaskinitError, match="names no file"):
        input_sources(listing)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x01 this is not a video" * 100)
    with pytest.raises(MaskinitError, match="cannot open video .*broken.mp4"):
        input_sources(broken)
    with pytest.raises(MaskinitError, match="--every must be a positive"):
        input_sources(tmp_path, every=0)


# ---------------------------------------------------------------------------------------------
# predict on them


# The module-scoped fixtures train once per test process: under `make test` (pytest-xdist) this module's tests
# run in one of them.
pytestmark = pytest.mark.xdist_group("input_sources")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder of the tiny preset (untrained weights, every detection kept) and its ONNX export."""
    from maskinit.export import export_model

    folder = tmp_path_factory.mktemp("run")
    export_config(folder / "config.yaml", preset="tiny",
                  overrides=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "5"])
    save_untrained_checkpoint(load_config(folder / "config.yaml"), folder)
    export_model(load_config(folder / "config.yaml"), folder / "model_final.pth", "onnx", folder / "model.onnx",
                 score_threshold=0.0)
    return folder


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output)
    return lines[0]


@pytest.mark.slow
def test_predict_on_a_video_with_an_exported_model(run_dir, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=7)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(run_dir / "model.onnx"), "--input", str(video), "--every", "2",
                                 "--output-dir", str(out), "--score-threshold", "0.0", "--threads", "1", "--progress"])
    assert result.exit_code == 0, result.output
    coco = json.loads((out / PREDICTIONS_FILE).read_text())
    assert [(image["file_name"], image["frame"]) for image in coco["images"]] == [("clip.avi", i) for i in (0, 2, 4, 6)]
    assert sorted(p.name for p in out.glob("*.png")) == [f"clip_f{i:06d}.png" for i in (0, 2, 4, 6)]
    assert len(coco["annotations"]) == 4 * 5 and all("segmentation" in a for a in coco["annotations"])
    assert "clip.avi frame 6" in result.stdout and "4 images, 20 instances" in result.stdout


@pytest.mark.slow
def test_predict_on_a_glob_with_a_run_folder(run_dir, folder, tmp_path):
    out = tmp_path / "out"
    pattern = str(folder / "**" / "*.png")
    result = runner.invoke(app, ["predict", str(run_dir), "--input", pattern, "--output-dir", str(out),
                                 "--score-threshold", "0.0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    coco = json.loads((out / PREDICTIONS_FILE).read_text())
    assert [image["file_name"] for image in coco["images"]] == ["a.png", "sub/deeper/a.png", "sub/e.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "a_2.png", "e.png"]
    for column in ("image", "instances", "classes", "best score"):
        assert column in result.stdout
    assert "3 images, 15 instances" in result.stdout


@pytest.mark.slow
def test_the_library_takes_an_exported_model_without_a_config(run_dir, folder, tmp_path):
    """`predict(None, exported file, ...)`: the same detections as from the run's checkpoint with its config."""
    from_checkpoint = predict(load_config(run_dir / "config.yaml"), run_dir / "model_final.pth", str(folder / "*.png"),
                              tmp_path / "a", score_threshold=0.0)
    from_export = predict(None, run_dir / "model.onnx", str(folder / "*.png"), tmp_path / "b", score_threshold=0.0)
    ours, theirs = (json.loads(path.read_text())["annotations"] for path in (from_export, from_checkpoint))
    assert len(ours) == len(theirs) == 5
    for a, b in zip(ours, theirs):
        assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-4
        np.testing.assert_allclose(a["bbox"], b["bbox"], rtol=1e-3, atol=1e-2)


@pytest.mark.slow
def test_model_resolution_and_its_refusals(run_dir, tmp_path):
    assert resolve_model(run_dir).config == run_dir / "config.yaml"
    assert resolve_model(run_dir).weights == run_dir / "model_final.pth"
    assert resolve_model(run_dir / "model.onnx").exported
    assert resolve_model(None, run_dir / "config.yaml", run_dir / "model_final.pth").config == run_dir / "config.yaml"
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    for args, message in [
        ((tmp_path / "unfinished",), "has no model_final.pth"),
        ((tmp_path,), "no config.yaml"),
        ((None, None, run_dir / "model_final.pth"), "is a checkpoint: give its run's --config"),
        ((None, run_dir / "config.yaml", run_dir / "model.onnx"), "carries its settings"),
        ((None,), "no model"),
    ]:
        with pytest.raises(MaskinitError, match=message):
            resolve_model(*args)


@pytest.mark.slow
def test_predict_refusals_are_one_line(run_dir, tmp_path):
    base = ["--output-dir", str(tmp_path / "out")]
    line = one_line(runner.invoke(app, ["predict", str(run_dir), "--input", str(tmp_path / "*.png"), *base]))
    assert "no file matches" in line
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF but nothing else")
    assert "cannot open video" in one_line(runner.invoke(app, ["predict", str(run_dir / "model.onnx"), "--input",
                                                                str(broken), *base]))
    assert "--every must be a positive" in one_line(runner.invoke(app, ["predict", str(run_dir), "--input",
                                                                         str(broken), "--every", "0", *base]))
    assert not (tmp_path / "out" / PREDICTIONS_FILE).exists()
