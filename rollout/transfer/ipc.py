"""The `ipc` carrier (GPUs only): a learner rank and the engine that share its GPU (colocated
placement) hand over the packed buckets through CUDA IPC memory handles, with no copy through
the host and no torch.distributed group.

Learner rank k packs every bucket of the update on its GPU (rollout/transfer/buckets.py: one
extra copy of the model in the training dtype, made after the optimizer states left the GPU)
and exports a handle per bucket; the engine on the same GPU opens each, checks it (version,
index, fingerprint, on the GPU) and copies the tensors straight into its weights; then the
learner drops its packed copy. The handles name the physical GPU by UUID, so an engine on
another GPU is refused instead of reading another device's memory.

Written against torch.multiprocessing's CUDA reductions (`reduce_tensor` /
`rebuild_cuda_tensor`); GPU-only and untested on the CPU machines: tests/gpu/test_gpu.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.transfer.buckets import WeightSyncError

_DEVICE_ARG = 6  # rebuild_cuda_tensor(..., storage_device, ...): the sender's device index


@dataclass(frozen=True)
class SharedBucket:
    """One packed bucket in the sender's GPU memory, openable by another process on that GPU."""

    device_uuid: str
    rebuild: object  # torch.multiprocessing.reductions.rebuild_cuda_tensor
    args: tuple


def device_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def share(buffer: torch.Tensor) -> SharedBucket:
    """A handle on `buffer` (a CUDA tensor the caller keeps alive until the receiver is done)."""
    from torch.multiprocessing.reductions import reduce_tensor

    if buffer.device.type != "cuda":
        raise WeightSyncError(f"rollout.weight_transfer 'ipc' shares CUDA memory; the bucket is on {buffer.device}")
    rebuild, args = reduce_tensor(buffer)
    return SharedBucket(device_uuid(buffer.device), rebuild, tuple(args))


def open_shared(bucket: SharedBucket) -> torch.Tensor:
    """The sender's buffer, mapped into this process: on the local device with the same UUID
    (each process may number the GPUs it sees differently)."""
    local = [i for i in range(torch.cuda.device_count()) if device_uuid(torch.device("cuda", i)) == bucket.device_uuid]
    if not local:
        raise WeightSyncError(f"rollout.weight_transfer 'ipc': the learner's GPU {bucket.device_uuid} is not visible "
                              f"to this engine (it sees {torch.cuda.device_count()} other GPU(s)); 'ipc' needs the "
                              f"two on one GPU (cluster.placement 'colocated'); use 'collective'")
    args = list(bucket.args)
    args[_DEVICE_ARG] = local[0]
    return bucket.rebuild(*args)
