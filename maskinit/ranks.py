"""Which process this is among the processes of a run: its global rank, its rank on its machine, how many.

Once a torch process group is up (Detectron2's `launch`, or torchrun after `init_process_group`), Detectron2's
`comm` answers. Before that (a launcher's environment, read while the run's output folder is prepared) the
launcher's variables do: torchrun's `RANK`, `LOCAL_RANK` and `WORLD_SIZE`, else SLURM's `SLURM_PROCID`,
`SLURM_LOCALID` and `SLURM_NTASKS` (`srun` starts one task per process). A process that no launcher started is
rank 0 of 1.

torch is not imported here: when nothing has imported `torch.distributed`, no process group can be up, and
the CLI's commands that never train stay free of torch.
"""

from __future__ import annotations

import os
import sys

from .errors import MaskinitError

GLOBAL_RANK_VARIABLES = ("RANK", "SLURM_PROCID")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID")
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS")


def _group_is_up() -> bool:
    distributed = sys.modules.get("torch.distributed")
    return distributed is not None and distributed.is_available() and distributed.is_initialized()


def _from_environment(names: tuple[str, ...], default: int) -> int:
    """The first of `names` set in the environment, as an integer; `default` when none is set."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError as error:
                raise MaskinitError(f"environment variable {name}={value!r} is not an integer") from error
    return default


def global_rank() -> int:
    """This process's rank among all processes of the run (0 on the main process)."""
    if _group_is_up():
        from detectron2.utils import comm

        return comm.get_rank()
    return _from_environment(GLOBAL_RANK_VARIABLES, 0)


def local_rank() -> int:
    """This process's rank among the run's processes on this machine (the GPU index it takes)."""
    if _group_is_up():
        from detectron2.utils import comm

        try:
            return comm.get_local_rank()
        except AssertionError:  # a group started without Detectron2's per-machine group: the launcher's variables
            pass
    return _from_environment(LOCAL_RANK_VARIABLES, 0)


def world_size() -> int:
    """How many processes the run has in all (1 without a launcher)."""
    if _group_is_up():
        from detectron2.utils import comm

        return comm.get_world_size()
    return _from_environment(WORLD_SIZE_VARIABLES, 1)


def under_torchrun() -> bool:
    """True in a process that torchrun (or srun with torchrun's variables) started, one of several."""
    return "LOCAL_RANK" in os.environ and _from_environment(("WORLD_SIZE",), 1) > 1


def is_main_process() -> bool:
    """True on the process that writes what a run writes once (rank 0)."""
    return global_rank() == 0
