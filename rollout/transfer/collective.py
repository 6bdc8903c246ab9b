"""The `collective` carrier: learner rank 0 broadcasts each bucket to every engine through a
torch.distributed group of its own (gloo on CPU, NCCL on GPUs).

The group is built from a TCPStore hosted by learner rank 0, apart from the learners' default
(DeepSpeed) group, so engines in other processes and on other hosts can join it: rank 0 is the
sender, ranks 1..N the engines. Every rendezvous and broadcast is bounded by `timeout_s`; a peer
that dies or stalls surfaces as a WeightSyncError naming the backend, the ranks and the update,
never as a hang.
"""

from __future__ import annotations

import datetime

import torch

from rollout.transfer.buckets import WeightSyncError


class TransferGroup:
    """One member of the sender-to-engines group. rank 0: the sender (hosts the store)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                 bind_host: str):
        """host:port: rank 0's store; bind_host: this member's own address for gloo's traffic."""
        self.rank, self.world_size, self.backend, self.timeout_s = rank, world_size, backend, timeout_s
        self.where = f"rollout.weight_transfer 'collective' ({backend}, rank {rank} of {world_size}, store {host}:{port})"
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            store = torch.distributed.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                                               wait_for_workers=True)
            store = torch.distributed.PrefixStore("tandem-weights", store)
            if backend == "gloo":
                options = torch.distributed.ProcessGroupGloo._Options()
                options._timeout = timeout
                options._devices = [torch.distributed.ProcessGroupGloo.create_device(hostname=bind_host)]
                self.pg = torch.distributed.ProcessGroupGloo(store, rank, world_size, options)
            elif backend == "nccl":
                options = torch.distributed.ProcessGroupNCCL.Options()
                options._timeout = timeout
                self.pg = torch.distributed.ProcessGroupNCCL(store, rank, world_size, options)
            else:
                raise ValueError(f"collective weight transfer backend must be gloo or nccl, got {backend!r}")
        except (RuntimeError, torch.distributed.DistStoreError) as err:
            raise WeightSyncError(f"{self.where}: the group did not form within {timeout_s:g} s "
                                  f"(a peer missing or unreachable): {err}") from err
        self.store = store  # keeps the master's store alive as long as the group

    def start(self, buffer: torch.Tensor, what: str):
        """Begin broadcasting rank 0's `buffer` into every member's (same size and dtype
        everywhere); broadcasts run in the order they were started. Returns a handle for wait()."""
        try:
            return self.pg.broadcast(buffer, 0, datetime.timedelta(seconds=self.timeout_s)), what
        except RuntimeError as err:
            raise self._error(what, err) from err

    def wait(self, handle) -> None:
        work, what = handle
        try:
            work.wait()
        except RuntimeError as err:
            raise self._error(what, err) from err

    def broadcast(self, buffer: torch.Tensor, what: str) -> None:
        self.wait(self.start(buffer, what))

    def _error(self, what: str, err: Exception) -> WeightSyncError:
        return WeightSyncError(f"{self.where}: broadcast of {what} failed or timed out after {self.timeout_s:g} s "
                               f"(a peer died or stalled): {err}")

    def close(self) -> None:
        self.pg = None
        self.store = None
