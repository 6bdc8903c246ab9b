"""The `object_store` carrier: learner rank 0 puts each packed bucket (rollout/transfer/buckets.py)
in Ray's object store once; every engine fetches it (zero-copy on the same node), checks it on
its own device and stages the update. No torch.distributed group: engines may come and go."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import ray
import torch

from rollout.transfer.buckets import Layout, WeightSyncError, pack, unpack


@dataclass(frozen=True)
class StoredUpdate:
    version: int  # the policy version these weights are (learner optimizer steps taken)
    refs: tuple[Any, ...]  # ray.ObjectRef of each packed bucket, in layout order


def put_packed(buffer: torch.Tensor):
    """One packed bucket (rollout/transfer/buckets.py: pack) into the object store."""
    return ray.put(buffer.cpu().numpy())


def store_update(layout: Layout, tensors: dict[str, torch.Tensor], version: int) -> StoredUpdate:
    """A whole update from a full state dict (tests, benchmarks; the learners put bucket by bucket)."""
    return StoredUpdate(version, tuple(put_packed(pack(layout, i, tensors, version)) for i in range(len(layout.buckets))))


def fetch_update(layout: Layout, update: StoredUpdate, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every bucket of `update`, checked (rollout/transfer/buckets.py: unpack) on `device`."""
    if len(update.refs) != len(layout.buckets):
        raise WeightSyncError(f"weight update v{update.version}: {len(update.refs)} buckets, the layout has "
                              f"{len(layout.buckets)}")
    tensors: dict[str, torch.Tensor] = {}
    for index, ref in enumerate(update.refs):
        array = ray.get(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # object-store arrays are read-only; unpack only reads
            buffer = torch.from_numpy(array).to(device)
        tensors.update(unpack(layout, index, buffer, update.version))
    return tensors
