"""maskinit.ranks: the launcher's variables before a process group is up, Detectron2's comm once it is."""

from __future__ import annotations

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from maskinit import ranks
from maskinit.errors import MaskinitError

VARIABLES = (*ranks.GLOBAL_RANK_VARIABLES, *ranks.LOCAL_RANK_VARIABLES, *ranks.WORLD_SIZE_VARIABLES)


@pytest.fixture
def environment(monkeypatch):
    """No launcher variable set; the test sets the ones it needs."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_a_launcher_this_is_rank_0_of_1(environment):
    assert (ranks.global_rank(), ranks.local_rank(), ranks.world_size()) == (0, 0, 1)
    assert ranks.is_main_process()


def test_torchrun_variables(environment):
    for name, value in (("RANK", "5"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "8")):
        environment.setenv(name, value)
    assert (ranks.global_rank(), ranks.local_rank(), ranks.world_size()) == (5, 1, 8)
    assert not ranks.is_main_process()


def test_slurm_variables_when_torchrun_set_none(environment):
    for name, value in (("SLURM_PROCID", "3"), ("SLURM_LOCALID", "3"), ("SLURM_NTASKS", "4")):
        environment.setenv(name, value)
    assert (ranks.global_rank(), ranks.local_rank(), ranks.world_size()) == (3, 3, 4)
    environment.setenv("RANK", "0")  # torchrun inside a SLURM job: torchrun's variables win
    environment.setenv("WORLD_SIZE", "2")
    assert (ranks.global_rank(), ranks.world_size()) == (0, 2)


def test_a_variable_that_is_not_a_number_is_named(environment):
    environment.setenv("RANK", "first")
    with pytest.raises(MaskinitError, match=r"environment variable RANK='first' is not an integer"):
        ranks.global_rank()
    environment.setenv("WORLD_SIZE", " ")  # blank: as if unset
    assert ranks.world_size() == 1


def _in_group(rank: int, init_file: str, results) -> None:
    import os

    os.environ.update(RANK="7", LOCAL_RANK="7", WORLD_SIZE="9")  # stale variables: the process group wins
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        before = ranks.local_rank()  # no per-machine group yet: the launcher's variable
        from detectron2.utils import comm

        comm.create_local_process_group(2)
        results[rank] = (ranks.global_rank(), ranks.world_size(), before, ranks.local_rank(), ranks.is_main_process())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_a_process_group_answers_once_it_is_up(tmp_path):
    """Two real processes in a gloo group: each its own rank, whatever the environment says."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_in_group, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        assert dict(results) == {0: (0, 2, 7, 0, True), 1: (1, 2, 7, 1, False)}
