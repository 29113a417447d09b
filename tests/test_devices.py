"""Which device and how many processes a run may use: refused in one line before anything starts."""

from __future__ import annotations

import pytest
import torch

from maskinit import MaskinitError, load_config
from maskinit.devices import check_device, set_device, with_device


@pytest.fixture(scope="module")
def cfg():
    return load_config(preset="tiny")


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `count` CUDA GPUs (0: no CUDA)."""

    def have(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return have


def test_cpu_is_always_allowed(gpus):
    gpus(0)
    check_device("cpu")
    check_device("cpu", num_gpus=4)  # CPU processes over gloo


@pytest.mark.parametrize(
    "device,num_gpus,count,message",
    [
        ("tpu", 1, 0, "--device must be cpu or cuda, got 'tpu'"),
        ("cuda", 1, 0, "--device cuda but CUDA is not available here (use --device cpu)"),
        ("cuda:0", 1, 0, "--device cuda:0 but CUDA is not available here"),
        ("cpu", 0, 0, "--num-gpus must be at least 1, got 0"),
        ("cuda", 3, 2, "--num-gpus 3 but only 2 GPUs are present"),
    ],
)
def test_refusals_name_the_option_and_the_value(gpus, device, num_gpus, count, message):
    gpus(count)
    with pytest.raises(MaskinitError) as error:
        check_device(device, num_gpus)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cuda_with_enough_gpus_passes(gpus):
    gpus(2)
    check_device("cuda", 2)
    check_device("cuda:1", 1)


def test_a_refusal_names_where_the_device_came_from(gpus):
    gpus(0)
    with pytest.raises(MaskinitError, match="^MODEL.DEVICE cuda but CUDA"):
        check_device("cuda", 1, source="MODEL.DEVICE")


def test_set_device_writes_the_option_into_the_config(cfg, gpus):
    gpus(1)
    clone = cfg.clone()
    set_device(clone, "cuda", 1)
    assert clone.MODEL.DEVICE == "cuda"
    set_device(clone, None, 1)  # no --device: the config's own device, checked
    assert clone.MODEL.DEVICE == "cuda"
    with pytest.raises(MaskinitError, match="--device must be cpu or cuda, got 'cuda:0'"):
        set_device(clone, "cuda:0", 1)  # an index is not an option value (MODEL.DEVICE may hold one)


def test_set_device_checks_the_config_s_own_device_under_its_key(cfg, gpus):
    gpus(0)
    clone = cfg.clone()
    clone.MODEL.DEVICE = "cuda"
    with pytest.raises(MaskinitError, match="^MODEL.DEVICE cuda but CUDA is not available"):
        set_device(clone, None, 1)


def test_with_device_returns_a_checked_copy(cfg, gpus):
    gpus(0)
    before = cfg.MODEL.DEVICE
    moved = with_device(cfg, "cpu", 2)
    assert moved is not cfg and moved.MODEL.DEVICE == "cpu" and cfg.MODEL.DEVICE == before
    with pytest.raises(MaskinitError, match="--num-gpus must be at least 1"):
        with_device(cfg, "cpu", 0)


def test_cpu_training_flushes_denormals_and_cuda_keeps_its_own_settings(monkeypatch):
    import torch

    from maskinit.devices import configure_backends

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's normal range (1.18e-38)
    try:
        torch.set_flush_denormal(False)
        assert (tiny * 2).item() > 0
        configure_backends("cpu")
        assert (tiny * 2).item() == 0.0  # flushed: no slow denormal arithmetic
    finally:
        torch.set_flush_denormal(False)
    calls = []
    monkeypatch.setattr(torch, "set_flush_denormal", calls.append)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends("cuda", cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is True and torch.backends.cuda.matmul.allow_tf32 and not calls
