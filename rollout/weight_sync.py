"""Versioned, checksummed weight transfer (the receiver side defines the protocol).

The sender puts each tensor into the Ray object store once and ships a
`WeightUpdate` (metadata + object refs) to every rollout worker; each receiver
fetches the arrays, checks shape, dtype, per-tensor and whole-update checksums
and the version, and only then touches its model. Any mismatch raises.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np


from rollout.transfer.buckets import WeightSyncError  # noqa: F401 - one error class for every carrier


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"
    checksum: str  # blake2b-128 of the C-contiguous bytes


@dataclass(frozen=True)
class WeightUpdate:
    version: int  # policy version these weights are (learner optimizer steps taken)
    tensors: tuple[TensorMeta, ...]
    refs: tuple[Any, ...]  # ray.ObjectRef per tensor, same order as `tensors`
    checksum: str  # over (name, shape, dtype, checksum) of every tensor, in order


def tensor_checksum(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def update_checksum(version: int, tensors: tuple[TensorMeta, ...]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(version).encode())
    for t in tensors:
        h.update(f"{t.name}|{t.shape}|{t.dtype}|{t.checksum};".encode())
    return h.hexdigest()


def describe(version: int, arrays: dict[str, np.ndarray]) -> tuple[tuple[TensorMeta, ...], str]:
    metas = tuple(
        TensorMeta(name, tuple(int(d) for d in a.shape), a.dtype.name, tensor_checksum(a))
        for name, a in arrays.items()
    )
    return metas, update_checksum(version, metas)


def verify(update: WeightUpdate, arrays: list[np.ndarray], expected_version: int) -> dict[str, np.ndarray]:
    """Check a fetched update; returns name -> array or raises WeightSyncError."""
    if update.version != expected_version:
        raise WeightSyncError(
            f"weight update has version {update.version}, receiver expected {expected_version}"
        )
    if update_checksum(update.version, update.tensors) != update.checksum:
        raise WeightSyncError(f"weight update v{update.version}: manifest checksum mismatch")
    if len(arrays) != len(update.tensors):
        raise WeightSyncError(
            f"weight update v{update.version}: {len(arrays)} arrays for {len(update.tensors)} tensors"
        )
    out: dict[str, np.ndarray] = {}
    for meta, array in zip(update.tensors, arrays):
        if tuple(array.shape) != meta.shape or array.dtype.name != meta.dtype:
            raise WeightSyncError(
                f"weight update v{update.version}: '{meta.name}' is {array.dtype.name}{tuple(array.shape)}, "
                f"manifest says {meta.dtype}{meta.shape}"
            )
        if tensor_checksum(array) != meta.checksum:
            raise WeightSyncError(f"weight update v{update.version}: checksum mismatch for '{meta.name}'")
        out[meta.name] = array
    return out
