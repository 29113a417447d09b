"""maskinit.worker, in parts: the divergence message, the console filter, the signal handlers, the refusals of
`launch_workers`, and what rank 0 shares with the other ranks (its config and its ending), in a real two-process
gloo group. Whole runs through `worker` are in test_train.py, test_reliability.py and test_cluster.py."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading

import pytest
import torch.multiprocessing as mp

from maskinit import MaskinitError, load_config
from maskinit.run_options import TrainOptions
from maskinit.worker import (
    config_of_rank_0,
    divergence_message,
    ending_of_rank_0,
    install_signal_handlers,
    launch_workers,
    no_console_traceback,
)


def test_the_divergence_message_names_the_iteration_the_terms_and_the_checkpoint_left(tmp_path):
    (tmp_path / "model_0000019.pth").write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("model_0000019.pth")
    error = FloatingPointError(
        "Loss became infinite or NaN at iteration=23!\nloss_dict = {'loss_cls': np.float64(nan), "
        "'loss_mask': 0.5, 'loss_rpn_loc': inf, 'total_loss': nan}"
    )
    assert divergence_message(error, str(tmp_path), iteration=0) == {
        "iteration": 23, "terms": ["loss_cls", "loss_rpn_loc"], "checkpoint": "model_0000019.pth",
    }


def test_the_divergence_message_of_refused_weights_and_of_another_error(tmp_path):
    weights = FloatingPointError("weights became non-finite at iteration 40: 3 of 212 tensors")
    assert divergence_message(weights, str(tmp_path), iteration=41) == {
        "iteration": 40, "terms": ["weights (3 of 212 tensors)"], "checkpoint": None,
    }
    other = FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has diverged.\nmore")
    found = divergence_message(other, str(tmp_path), iteration=7)
    assert found["iteration"] == 7
    assert found["terms"] == ["values (Predicted boxes or scores contain Inf/NaN. Training has diverged.)"]


def test_the_console_leaves_tracebacks_to_the_log_file():
    def record(exc_info):
        return logging.LogRecord("d2", logging.ERROR, __file__, 1, "Exception during training:", (), exc_info)

    try:
        raise ValueError("boom")
    except ValueError:
        assert not no_console_traceback(record(sys.exc_info()))
    assert no_console_traceback(record(None))


def test_signal_handlers_are_installed_and_restored_in_the_main_thread_only():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        pass

    restore = install_signal_handlers(handler)
    assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is handler
    restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(install_signal_handlers(handler)))
    thread.start()
    thread.join()
    seen[0]()  # a no-op restore
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_launch_workers_refuses_hooks_with_several_processes_and_machines_without_an_address(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(preset="tiny")
    with pytest.raises(MaskinitError, match="extra training hooks run in one process only"):
        launch_workers(cfg, TrainOptions(output_dir=str(tmp_path), num_gpus=2), hooks=[object()])
    with pytest.raises(MaskinitError, match="--dist-url tcp://HOST:PORT is required with several machines"):
        launch_workers(cfg, TrainOptions(output_dir=str(tmp_path), num_machines=2))


def test_one_process_keeps_its_own_config_and_ending():
    cfg = load_config(preset="tiny")
    assert config_of_rank_0(cfg) is cfg
    assert ending_of_rank_0({"status": "finished"}, {"status": "failed"}) == {"status": "finished"}


def share(rank: int, port: int, folder: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        lr = "0.001" if rank == 0 else "0.5"  # rank 1 fitted (or was given) another config
        cfg = load_config(preset="tiny", overrides=["SOLVER.BASE_LR", lr, "OUTPUT_DIR", f"{folder}/rank{rank}"])
        cfg.freeze()
        shared = config_of_rank_0(cfg)
        ending = ending_of_rank_0({"status": "diverged", "iteration": 9} if rank == 0 else None,
                                  {"status": "finished"})
        queue.put((rank, shared.SOLVER.BASE_LR, shared.OUTPUT_DIR, ending))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_every_rank_trains_rank_0s_config_in_its_own_folder_and_ends_as_rank_0(tmp_path):
    from maskinit.launcher import free_port

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=share, args=(rank, port, str(tmp_path), queue)) for rank in (0, 1)]
    for process in processes:
        process.start()
    found = dict((row[0], row[1:]) for row in (queue.get(timeout=120) for _ in processes))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank in (0, 1):
        lr, output_dir, ending = found[rank]
        assert lr == 0.001 and output_dir == f"{tmp_path}/rank{rank}"
        assert ending == {"status": "diverged", "iteration": 9}


def test_the_rendezvous_store_address_of_each_init_method(monkeypatch):
    from maskinit.launcher import store_address

    monkeypatch.setenv("MASTER_ADDR", "node-0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert store_address("tcp://10.0.0.1:1234") == ("10.0.0.1", 1234)
    assert store_address("tcp://[::1]:29501") == ("::1", 29501)
    assert store_address("env://") == ("node-0", 29500)
    assert store_address("file:///shared/rendezvous") is None
    monkeypatch.delenv("MASTER_PORT")
    assert store_address("env://") is None


@pytest.fixture
def run_store(monkeypatch):
    """A real TCPStore server in this process standing for the run's rendezvous store, and rank 0 of 3."""
    import torch.distributed as dist

    from maskinit import launcher, worker

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setattr(launcher, "_rendezvous", ("127.0.0.1", server.port))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)  # a run's first attempt
    monkeypatch.setattr(worker.comm, "get_world_size", lambda: 3)
    monkeypatch.setattr(worker.comm, "is_main_process", lambda: True)
    return server


def test_rank_0_names_the_process_whose_own_failure_stopped_the_run(run_store, monkeypatch):
    from maskinit.launcher import FAILURE_KEY
    from maskinit.worker import PEER_GONE, with_posted_cause

    own = {"status": "failed",
           "error": "training failed at iteration 4: RuntimeError: boom (traceback in log.txt.rank2)"}
    monkeypatch.setattr("maskinit.worker.comm.is_main_process", lambda: False)
    assert with_posted_cause(own, rank=2) == own  # its own ending, left in the store for rank 0
    assert run_store.get(f"{FAILURE_KEY}/0/2").decode() == own["error"]
    monkeypatch.setattr("maskinit.worker.comm.is_main_process", lambda: True)
    gone = {"status": "failed", "error": f"training stopped at iteration 4: {PEER_GONE} (its own log says why)",
            "iteration": 4}
    assert with_posted_cause(gone, rank=0) == {"status": "failed", "error": own["error"], "iteration": 4,
                                                "failed_process": 2}
    # stopped by the signal with which torchrun ends the other processes of a failed run
    interrupted = {"status": "interrupted", "signal": "SIGTERM", "checkpoint": "model_0000003.pth"}
    assert with_posted_cause(interrupted, rank=0) == {
        "status": "failed", "signal": "SIGTERM", "checkpoint": "model_0000003.pth", "error": own["error"],
        "failed_process": 2}
    finished = {"status": "finished"}
    assert with_posted_cause(finished, rank=0) is finished
    # torchrun restarted the run: the failure of its earlier attempt is not this attempt's
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert with_posted_cause(interrupted, rank=0) == interrupted


def test_without_a_posted_failure_or_a_store_rank_0_keeps_its_own_ending(run_store, monkeypatch):
    from maskinit import launcher
    from maskinit.launcher import post_failure, posted_failure
    from maskinit.worker import PEER_GONE, with_posted_cause

    gone = {"status": "failed", "error": f"training stopped at iteration 4: {PEER_GONE} (its own log says why)"}
    assert posted_failure(3, wait=0.2) is None
    interrupted = {"status": "interrupted", "signal": "SIGINT"}
    assert with_posted_cause(interrupted, rank=0) == interrupted  # a signal of the user's: nobody failed
    with socket.socket() as closed:  # a port nobody listens on: the store's host is gone
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(launcher, "_rendezvous", ("127.0.0.1", closed.getsockname()[1]))
    assert posted_failure(3, wait=0.2) is None
    assert post_failure(1, "training failed") is False
    monkeypatch.setattr(launcher, "_rendezvous", None)  # a file:// rendezvous: no store to share through
    assert post_failure(1, "training failed") is False and posted_failure(3, wait=0) is None
    assert with_posted_cause(gone, rank=0) == gone
