"""maskinit.checkpoint: atomic, audited saves (never a torn or non-finite checkpoint), the resume helpers, and
trained weights loaded for eval and predict (refused in one line when they are of another model, damaged or
diverged)."""

from __future__ import annotations

import errno

import pytest
import torch
from conftest import save_untrained_checkpoint

from maskinit import MaskinitError, load_config
from maskinit.checkpoint import (
    AuditedCheckpointer,
    checkpoint_iteration,
    last_checkpoint,
    load_trained_model,
    load_weights,
    non_finite_tensors,
    weights_fingerprint,
    write_failure,
)


def test_checkpoint_writes_are_atomic_and_a_full_disk_keeps_the_previous(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpointer = AuditedCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    good = {k: v.clone() for k, v in model.state_dict().items()}
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")  # half a file reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(MaskinitError, match=r"disk full.*model_0000001.pth.*intact"):
        checkpointer.save("model_0000002")
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000002.pth").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["model"]
    assert all(torch.equal(loaded[k], good[k]) for k in good)

def test_disk_full_from_torch_save_is_said_in_words(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    torn = RuntimeError(
        "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/3: file write failed"
    )
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30, 3 * 2**20))
    assert write_failure(torn, tmp_path) == "disk full, 3 MiB free"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 2**30, 9 * 2**30))
    assert write_failure(torn, tmp_path) == "the file system refused the write"
    assert write_failure(OSError(errno.ENOSPC, "No space left on device"), tmp_path).startswith("disk full")

def test_non_finite_weights_are_never_written_as_a_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = AuditedCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError, match=r"weights became non-finite at iteration 2: 1 of 2 tensors \(e.g. weight\)"
    ):
        checkpointer.save("model_0000002", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000002.pth").exists()

def test_eval_refuses_weights_of_a_diverged_run(tmp_path):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[1] = float("inf")
    torch.save({"model": model.state_dict()}, tmp_path / "nan.pth")
    with pytest.raises(MaskinitError, match=r"NaN or infinite values in 1 tensors \(e.g. bias\).*diverged"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "nan.pth")


def test_the_final_checkpoint_holds_the_average_and_training_resumes_from_the_raw_weights(tmp_path):
    model = torch.nn.Linear(3, 2)
    averaged = {key: torch.full_like(value, 7.0) for key, value in model.state_dict().items()}
    checkpointer = AuditedCheckpointer(model, str(tmp_path))
    checkpointer.final_weights = lambda: averaged
    checkpointer.save("model_final", iteration=9)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert torch.equal(saved["model"]["weight"], averaged["weight"]) and saved["iteration"] == 9
    assert torch.equal(saved["raw_model"]["weight"], model.weight.detach())
    fresh = torch.nn.Linear(3, 2)
    reader = AuditedCheckpointer(fresh, str(tmp_path))
    reader.load(str(tmp_path / "model_final.pth"), checkpointables=[])
    assert torch.equal(fresh.weight, model.weight)  # the training weights, not their average
    assert reader.files_read == [{"file": str(tmp_path / "model_final.pth"), "tensors": 2}]


def test_last_checkpoint_names_a_file_that_is_there(tmp_path):
    assert last_checkpoint(tmp_path) is None
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth\n")
    assert last_checkpoint(tmp_path) is None  # named, but not there
    (tmp_path / "model_0000004.pth").write_bytes(b"")
    assert last_checkpoint(tmp_path) == "model_0000004.pth"


def test_checkpoint_iteration_from_the_name_or_the_file(tmp_path):
    assert checkpoint_iteration(tmp_path / "model_0000199.pth") == 199  # the name is enough: nothing is read
    torch.save({"model": {}, "iteration": 42}, tmp_path / "model_final.pth")
    assert checkpoint_iteration(tmp_path / "model_final.pth") == 42
    torch.save({"model": {}}, tmp_path / "renamed.pth")
    with pytest.raises(MaskinitError, match=r"renamed\.pth records no iteration: not a checkpoint of maskinit train"):
        checkpoint_iteration(tmp_path / "renamed.pth")
    (tmp_path / "torn.pth").write_bytes(b"PK\x03\x04 not a whole archive")
    with pytest.raises(MaskinitError, match=r"^--resume: cannot read .*torn\.pth") as caught:
        checkpoint_iteration(tmp_path / "torn.pth")
    assert caught.value.__cause__ is not None


def test_fingerprint_follows_every_tensor_and_buffer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    first = weights_fingerprint(model)
    assert first == weights_fingerprint(model) and len(first) == 64
    model[1].num_batches_tracked += 1  # a 0-dim buffer counts too
    assert weights_fingerprint(model) != first


def test_non_finite_tensors_names_float_tensors_only():
    state = {"a": torch.tensor([1.0, float("nan")]), "b": torch.tensor([1, 2]), "c": torch.tensor(float("-inf")),
             "d": torch.zeros(2), "e": "not a tensor"}
    assert non_finite_tensors(state) == ["a", "c"]


def test_load_weights_refusals_name_the_file(tmp_path):
    with pytest.raises(MaskinitError, match=r"^weights .*absent\.pth not found$"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "absent.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MaskinitError, match=r"^cannot read weights .*garbage\.pth") as caught:
        load_weights(torch.nn.Linear(3, 2), tmp_path / "garbage.pth")
    assert caught.value.__cause__ is not None  # --debug shows what torch.load said
    torch.save({"model": torch.nn.Linear(4, 2).state_dict()}, tmp_path / "other.pth")
    with pytest.raises(
        MaskinitError, match=r"do not match this model \(1 missing, 1 wrong shape parameters, e\.g\. weight\)"
    ):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "other.pth")


@pytest.mark.slow
def test_load_trained_model_is_the_built_model_with_the_weights_in_eval_mode(tmp_path):
    cfg = load_config(preset="tiny")
    path = save_untrained_checkpoint(cfg, tmp_path)
    model = load_trained_model(cfg, path)
    assert not model.training
    saved = torch.load(path, weights_only=False)["model"]
    assert all(torch.equal(saved[key], value) for key, value in model.state_dict().items())
