"""A run's processes on several machines: start this machine's share, join them into one torch process
group with the other machines', forward SIGINT/SIGTERM to them, and return what the run's first
process (global rank 0) says about how the run ended.

`launch(main, plan, args)` runs `main(*args)` in `plan.per_machine` processes of this machine (global ranks
`machine_rank * per_machine + local rank`), after each joined the process group at `plan.dist_url`;
`join_group` is the join alone, for processes that a launcher started (torchrun, srun).

Hand-written in place of Detectron2's `detectron2.engine.launch` (about 20 lines of it re-stated with
changes), because a cluster needs four things it does not do:
- signals: `launch` hides its children behind `torch.multiprocessing.start_processes`, so the parent cannot
  forward SIGTERM/SIGINT to them; here the parent knows each child's PID and forwards every signal, and the
  children start with default signal handling (never an inherited SIG_IGN);
- the backend: `launch` picks NCCL whenever CUDA is present; a `--device cpu` run needs gloo on any machine;
- the ending: `launch` returns nothing from its children; here each machine returns rank 0's ending, so that
  every machine exits with the run's exit code, whatever output folder it was given;
- a missing machine or an unreachable `--dist-url`: `launch` waits in its children until a traceback;
  here the join has the run's `--dist-timeout` and ends with one line saying who is missing.
It keeps Detectron2's conventions: `detectron2.utils.comm.create_local_process_group` after the join, and
`torch.cuda.set_device(local rank)` before it on GPUs.
"""

from __future__ import annotations

import logging
import os
import queue as queues
import re
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

from .errors import EXIT_CODES, Interrupted, MaskinitError, RunFailed, one_line, signal_name

# How long the other processes of this machine may go on after one of them failed, before they are killed:
# they normally end at once (their collective calls fail when a peer is gone).
FAILURE_GRACE_SECONDS = 30.0
# How a process's ending says that it stopped only because another process of the run had gone.
PEER_GONE = "another process of the run ended first"
# A collective call's error when another process of the run is gone (gloo says so; NCCL's watchdog raises
# DistBackendError after --dist-timeout).
PEER_CLOSED = re.compile(r"Connection (closed|reset) by peer|Broken pipe")


# Where a process that failed on its own leaves its error in the run's rendezvous store (the TCPStore that
# init_process_group met at: rank 0's under maskinit's launcher and srun, torchrun's agent's under torchrun), for
# rank 0 to name the cause when it saw only that another process had gone: FAILURE_KEY/ATTEMPT/GLOBAL_RANK, the
# attempt torchrun's TORCHELASTIC_RESTART_COUNT (its store outlives a failed attempt of a run it restarts).
FAILURE_KEY = "maskinit/failure"
# How long rank 0 waits for a lost peer's error to arrive in the store (it is left there before the process
# ends, so normally at once).
FAILURE_POST_WAIT_SECONDS = 3.0
# The rendezvous of this process's group, (host, port), when it met at a TCP store (set by join_group).
_rendezvous: tuple[str, int] | None = None


@dataclass(frozen=True)
class GroupPlan:
    """Where this machine's processes sit in the run: `per_machine` processes on each of `num_machines`
    machines, this one `machine_rank`; they meet at `dist_url` (tcp://HOST:PORT of machine 0) within
    `timeout` seconds; `cuda`: one GPU per process (NCCL), else gloo on CPU."""

    per_machine: int
    num_machines: int
    machine_rank: int
    dist_url: str
    timeout: float = 1800.0
    cuda: bool = False

    @property
    def world(self) -> int:
        return self.per_machine * self.num_machines


def free_port() -> int:
    """A TCP port free on this host now (for a one-machine run's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def join_group(global_rank: int, world: int, local_rank: int, local_size: int, init_method: str, timeout: float,
               cuda: bool) -> None:
    """Join the run's process group as `global_rank` of `world` (`local_rank` of `local_size` on this machine);
    a `RunFailed` saying which processes are missing when they do not all join within `timeout` seconds."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    if cuda:  # GPU `local_rank` of those CUDA_VISIBLE_DEVICES shows (one each when a scheduler hides the others)
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method=init_method, world_size=world,
                                rank=global_rank, timeout=timedelta(seconds=timeout))
        comm.create_local_process_group(local_size)
        comm.synchronize()
        global _rendezvous
        _rendezvous = store_address(init_method)
    except (RuntimeError, ValueError, OSError) as error:  # torch's DistStoreError, DistNetworkError, timeouts
        where = init_method if init_method != "env://" else (
            f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}")
        raise RunFailed(
            f"process {global_rank} of {world} could not join the run at {where} within --dist-timeout {timeout:g} s: "
            f"{one_line(error)[:200]}; start every machine with the same --num-machines and --dist-url "
            "(machine 0's address and a free port) and check that it is reachable"
        ) from error


def store_address(init_method: str) -> tuple[str, int] | None:
    """(host, port) of the TCP store a process group meets at with `init_method` (tcp://HOST:PORT, or env:// with
    MASTER_ADDR and MASTER_PORT); None for another rendezvous (file://)."""
    match = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+)", init_method)
    if match:
        return match.group(1), int(match.group(2))
    if init_method == "env://" and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT", "").isdigit():
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    return None


def _store(timeout: float):
    """A client of this process group's rendezvous store (torch's public TCPStore), or None."""
    import torch.distributed as dist

    if _rendezvous is None:
        return None
    host, port = _rendezvous
    try:  # a host that is gone refuses at once; torch's client would retry and print its C++ traces
        socket.create_connection((host, port), timeout=min(timeout, 2.0)).close()
    except OSError:
        return None
    return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout), wait_for_workers=False)


def _failure_key(rank: int) -> str:
    return f"{FAILURE_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"


def post_failure(rank: int, message: str) -> bool:
    """Leave this process's own failure (`message`, its one-line error) in the run's rendezvous store, where rank 0
    finds it (`posted_failure`); False when the store cannot be reached (the message stays in this process's log)."""
    try:
        store = _store(timeout=2.0)
        if store is None:
            return False
        store.set(_failure_key(rank), message)
        return True
    except (RuntimeError, OSError, ValueError) as error:  # torch's DistStoreError, DistNetworkError
        logging.getLogger(__name__).warning("could not share this process's failure with the run: %s", one_line(error))
        return False


def posted_failure(world: int, wait: float = FAILURE_POST_WAIT_SECONDS) -> tuple[int, str] | None:
    """(global rank, error) of the first process of the run that left its own failure in the store within
    `wait` seconds (`post_failure`); None when none did or the store is gone."""
    keys = [_failure_key(rank) for rank in range(world)]
    deadline = time.monotonic() + wait
    try:
        store = _store(timeout=max(wait, 1.0))
        if store is None:
            return None
        while True:
            for rank, key in enumerate(keys):
                if store.check([key]):
                    return rank, store.get(key).decode("utf-8", errors="replace")
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
    except (RuntimeError, OSError, ValueError):  # the store's host is gone too: no cause to name
        return None


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _child(local_rank: int, main, args: tuple, plan: GroupPlan, messages) -> None:
    """One process of this machine: default signal handling, the join, `main(*args)`; every ending reported."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # never SIG_IGN inherited from whoever started the launcher
        signal.signal(sig, _raise_interrupted)
    global_rank = plan.machine_rank * plan.per_machine + local_rank
    joined = False
    try:
        join_group(global_rank, plan.world, local_rank, plan.per_machine, plan.dist_url, plan.timeout, plan.cuda)
        joined = True
        messages.put(("joined", local_rank))
        result = main(*args)
        messages.put(("ended", local_rank, result))
    except KeyboardInterrupt as interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the same signal forwarded again: it is ending already
            signal.signal(sig, signal.SIG_IGN)
        messages.put(("interrupted", local_rank, signal_name(interrupt)))
    except MaskinitError as error:
        messages.put(("error", local_rank, error.kind, str(error)))
    except Exception as error:  # a bug: one line here; the worker logged its traceback where it could
        message = (f"training stopped: {PEER_GONE} (its own log says why)" if peer_gone(error)
                   else f"training failed: {type(error).__name__}: {one_line(error)[:300]}")
        messages.put(("error", local_rank, "failed", message))
    finally:
        if joined:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        # a spawned process ends in os._exit, without atexit: flush the logs' buffered tails (the traceback)
        logging.shutdown()


def peer_gone(error: BaseException) -> bool:
    """Whether a process failed because another process of the run is gone (not on its own)."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1 and (
        isinstance(error, dist.DistBackendError) or bool(PEER_CLOSED.search(str(error))))


def launch(main, plan: GroupPlan, args: tuple = ()):
    """Run `main(*args)` in this machine's `plan.per_machine` processes of the run; returns what it
    returned in this machine's first process (the run's ending, the same on every machine).

    SIGINT and SIGTERM sent to this process are forwarded to its children, which stop with a checkpoint;
    a child that has not joined the group yet (waiting for a missing machine) has nothing to save and is
    killed. A child's failure is a `MaskinitError` of its kind; a signal before training, `Interrupted`.
    """
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    messages = context.Queue()
    children = [context.Process(target=_child, args=(rank, main, args, plan, messages), daemon=False)
                for rank in range(plan.per_machine)]
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    reports: dict[int, tuple] = {}
    joined: set[int] = set()
    try:
        for child in children:
            child.start()
        failed_at = None
        while any(child.exitcode is None for child in children):
            _drain(messages, reports, joined, wait=0.2)
            if received:
                for rank, child in enumerate(children):
                    if rank not in joined and child.exitcode is None:
                        child.kill()  # still waiting for the others: nothing to save
            ended_badly = any(child.exitcode not in (None, 0) for child in children) or any(
                report[0] == "error" for report in reports.values())
            if ended_badly and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_SECONDS:
                for child in children:
                    if child.exitcode is None:
                        child.kill()
        for child in children:
            child.join()
        _drain(messages, reports, joined, wait=0.5, until_empty=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return _result(reports, children, received)


def _with_cause(ending, reports: dict):
    """`ending` (the first process's), its error replaced by another process's own failure (and that
    process named, `failed_process`) when the first process stopped only because another had gone."""
    if not (isinstance(ending, dict) and ending.get("status") == "failed"
            and PEER_GONE in str(ending.get("error", ""))):
        return ending
    for rank, report in sorted(reports.items()):
        other = report[2] if report[0] == "ended" else None
        if isinstance(other, dict) and other.get("status") == "failed" and PEER_GONE not in str(other.get("error")):
            return {**ending, "error": other["error"], "failed_process": rank}
        if report[0] == "error" and PEER_GONE not in report[3]:
            return {**ending, "error": report[3], "failed_process": rank}
    return ending


def _drain(messages, reports: dict, joined: set, wait: float, until_empty: bool = False) -> None:
    while True:
        try:
            message = messages.get(timeout=wait)
        except queues.Empty:
            return
        if message[0] == "joined":
            joined.add(message[1])
        else:
            reports.setdefault(message[1], message)
        if not until_empty:
            wait = 0.0


def _result(reports: dict, children, received: list[int]):
    """The first process's ending (with the failure of the process that ended first when the first one
    only saw it go); else why the processes ended."""
    first = reports.get(0)
    if first is not None and first[0] == "ended":
        return _with_cause(first[2], reports)
    errors = [report for report in (first, *reports.values()) if report is not None and report[0] == "error"]
    errors.sort(key=lambda report: PEER_GONE in report[3])  # a process's own failure before the ones it caused
    if errors:
        _, _, kind, message = errors[0]
        error = MaskinitError(message) if kind == "bad_input" else RunFailed(message)
        error.kind = kind if kind in EXIT_CODES else "failed"
        raise error
    interrupted = [report for report in reports.values() if report[0] == "interrupted"]
    if interrupted or received:
        raise Interrupted(interrupted[0][2] if interrupted else signal.Signals(received[0]).name)
    codes = ", ".join(str(child.exitcode) for child in children)
    raise RunFailed(f"training failed: the run's processes on this machine ended without a word (exit codes {codes})")
