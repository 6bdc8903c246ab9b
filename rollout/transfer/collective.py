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
from typing import Iterable

import torch

from rollout.transfer.buckets import Layout, WeightSyncError, unpack


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
        self.landing: dict = {}  # (layout, version parity) -> receive buffers on the host

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

    def send(self, buckets: Iterable[tuple[int, torch.Tensor]], layout: Layout, version: int) -> None:
        """Rank 0: broadcast update `version`'s packed buckets in order, packing the next while
        one travels (at most two packed buckets exist)."""
        in_flight = []
        for index, buffer in buckets:
            in_flight.append(self.start(buffer, f"update v{version} bucket {index}/{len(layout.buckets)}"))
            if len(in_flight) > 1:
                self.wait(in_flight.pop(0))
        for handle in in_flight:
            self.wait(handle)

    def receive(self, layout: Layout, version: int, device) -> dict[str, torch.Tensor]:
        """An engine: every bucket of update `version`, checked (buckets.py: unpack), as views into
        its landing buffers. All receives are posted at once (they complete in order): bucket i is
        checked while i + 1 arrives."""
        n = len(layout.buckets)
        buffers = self._landing(layout, version, torch.device(device))
        handles = [self.start(buffers[i], f"update v{version} bucket {i}/{n}") for i in range(n)]
        tensors: dict[str, torch.Tensor] = {}
        for index, handle in enumerate(handles):
            self.wait(handle)
            tensors.update(unpack(layout, index, buffers[index], version))
        return tensors

    def _landing(self, layout: Layout, version: int, device: torch.device) -> list[torch.Tensor]:
        """Where update `version` lands. On a GPU, fresh buffers (the caching allocator reuses its
        blocks). On the host, torch hands large blocks back to the OS when freed, so fresh buffers
        cost a page fault per 4 KB on every update (the 100M-parameter bench: 1.0 -> 1.5 GB/s
        without them): two sets are kept and alternate, update v reusing update v - 2's. The
        caller must have loaded or dropped update v - 2 by then; rollout/pool.py does (an update
        replaces a waiting one at _stage, under the lock its loading holds)."""
        if device.type != "cpu":
            return [torch.empty(layout.buffer_bytes(i), dtype=torch.uint8, device=device)
                    for i in range(len(layout.buckets))]
        key = (layout, version % 2)
        if key not in self.landing:
            self.landing[key] = [torch.empty(layout.buffer_bytes(i), dtype=torch.uint8)
                                 for i in range(len(layout.buckets))]
        return self.landing[key]

    def _error(self, what: str, err: Exception) -> WeightSyncError:
        return WeightSyncError(f"{self.where}: broadcast of {what} failed or timed out after {self.timeout_s:g} s "
                               f"(a peer died or stalled): {err}")

    def close(self) -> None:
        self.pg = None
        self.store = None
        self.landing = {}
