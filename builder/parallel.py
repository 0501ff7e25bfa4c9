"""Ranks for `mpiexec -n N trtkit ...`: a tiny communicator interface, serial or MPI.

The CLI decides once, at the edge, from the launcher's environment; library code only sees a `Comm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

# Variables that MPICH (hydra), Open MPI, PMIx and Slurm's srun (per job step) set for every rank.
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                      "SLURM_STEP_NUM_TASKS")


class Comm(Protocol):
    rank: int
    size: int

    def barrier(self) -> None: ...
    def bcast(self, obj: Any) -> Any: ...
    def allgather(self, obj: Any) -> list[Any]: ...


class SerialComm:
    rank = 0
    size = 1

    def barrier(self) -> None:
        return None

    def bcast(self, obj: Any) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]


class MpiComm:
    """COMM_WORLD through mpi4py (imported only when a launcher started us)."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()

    def barrier(self) -> None:
        self._comm.Barrier()

    def bcast(self, obj: Any) -> Any:
        return self._comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self._comm.allgather(obj)


def comm_from_env(env: Mapping[str, str]) -> Comm:
    """MPI when an MPI launcher started more than one rank, else serial (no MPI import at all)."""
    for var in LAUNCHER_SIZE_VARS:
        if env.get(var, "1").strip() not in ("", "0", "1"):
            return MpiComm()
    return SerialComm()
