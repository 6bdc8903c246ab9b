"""The bucket format every weight-transfer carrier moves (see rollout/transfer/__init__.py).

  plan_layout(specs, bucket_bytes) -> Layout       once per run, from names, shapes, dtypes
  pack(layout, i, tensors, version) -> uint8 [N]    sender, on the tensors' device
  unpack(layout, i, buffer, version) -> {name: t}   receiver: checks, then views into buffer

The fingerprint is built from position-weighted sums of the payload's 64-bit words modulo
2**64: exact integer arithmetic, so it is the same on any device and in any summation order,
and a changed, swapped or shifted word changes it. It guards against corruption and mix-ups,
not an attacker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

MAGIC = 0x54414E44454D5753  # "TANDEMWS"
HEADER_BYTES = 32  # int64 x 4: magic, version, bucket index, fingerprint
# Odd multipliers (invertible modulo 2**64), as signed int64.
_MULT_ROWS, _MULT_COLS, _MULT_TAIL = 0x9E3779B97F4A7C15 - 2**64, 0x2545F4914F6CDD1D, 0x5851F42D4C957F2D
_COLUMNS = 512


class WeightSyncError(RuntimeError):
    """A weight update that must not be applied (corrupt, out of order, wrong shape)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"
    offset: int = 0  # byte offset in its bucket's payload

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * getattr(torch, self.dtype).itemsize


@dataclass(frozen=True)
class Layout:
    buckets: tuple[tuple[TensorSpec, ...], ...]
    payload_bytes: tuple[int, ...]  # per bucket, a multiple of 8

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for b in self.buckets for t in b)

    def buffer_bytes(self, index: int) -> int:
        return HEADER_BYTES + self.payload_bytes[index]

    def to_rows(self) -> list:
        """Plain lists (for a channel that carries no Python objects, e.g. vLLM's engine RPC)."""
        return [[[t.name, list(t.shape), t.dtype, t.offset] for t in b] for b in self.buckets], list(self.payload_bytes)

    @classmethod
    def from_rows(cls, rows) -> "Layout":
        buckets, payload = rows
        return cls(tuple(tuple(TensorSpec(n, tuple(s), d, o) for n, s, d, o in b) for b in buckets), tuple(payload))


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


def plan_layout(specs: Sequence[TensorSpec], bucket_bytes: int) -> Layout:
    """Consecutive tensors, in the given order, into buckets of at most `bucket_bytes` of payload
    (a larger tensor alone in its bucket). Offsets are 8-byte aligned."""
    buckets: list[list[TensorSpec]] = []
    sizes: list[int] = []
    for spec in specs:
        size = _align8(spec.nbytes)
        if not buckets or (sizes[-1] + size > bucket_bytes and sizes[-1] > 0):
            buckets.append([])
            sizes.append(0)
        buckets[-1].append(TensorSpec(spec.name, tuple(spec.shape), spec.dtype, sizes[-1]))
        sizes[-1] += size
    return Layout(tuple(tuple(b) for b in buckets), tuple(sizes))


def _weighted_sum(x: torch.Tensor, mult: int, step: int, first: int) -> torch.Tensor:
    """sum_j x_j * (first + step * j) * mult, modulo 2**64 (a 0-dim int64 tensor)."""
    weights = torch.arange(x.numel(), device=x.device, dtype=torch.int64).mul_(step).add_(first).mul_(mult)
    return (x * weights).sum()


def fingerprint(payload: torch.Tensor) -> int:
    """uint8 [8k] -> int. The 64-bit words, as a [rows, 512] block: each row's sum weighted by an
    odd factor (a changed word changes it), each column's sum weighted by an even factor that
    differs per column (a word moved within its row changes it), plus the tail words that fill
    no row. Two plain reductions over the data: about 10x faster than weighting every word."""
    words = payload.view(torch.int64)
    rows = words.numel() // _COLUMNS
    block, tail = words[:rows * _COLUMNS].view(rows, _COLUMNS), words[rows * _COLUMNS:]
    total = _weighted_sum(block.sum(dim=1), _MULT_ROWS, 2, 1) + _weighted_sum(tail, _MULT_TAIL, 2, 1)
    if rows:
        total = total + _weighted_sum(block.sum(dim=0), _MULT_COLS, 2, 2)
    return int(total)


def pack(layout: Layout, index: int, tensors: dict[str, torch.Tensor], version: int,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """Bucket `index` of `tensors` (by name, in their training dtype) as one uint8 buffer on their
    device: header, then each tensor's bytes at its offset. `out`: a uint8 buffer of at least
    that size to pack into (its first buffer_bytes(index) are the bucket; alignment gaps keep
    what was there, which the fingerprint covers like any other byte)."""
    specs = layout.buckets[index]
    device = tensors[specs[0].name].device
    size = layout.buffer_bytes(index)
    buf = torch.zeros(size, dtype=torch.uint8, device=device) if out is None else out[:size]
    payload = buf[HEADER_BYTES:]
    for spec in specs:
        t = tensors[spec.name]
        if tuple(t.shape) != spec.shape or str(t.dtype) != f"torch.{spec.dtype}":
            raise WeightSyncError(f"sender: '{spec.name}' is {t.dtype}{tuple(t.shape)}, the layout says "
                                  f"{spec.dtype}{spec.shape}")
        payload[spec.offset:spec.offset + spec.nbytes].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
    header = torch.tensor([MAGIC, version, index, fingerprint(payload)], dtype=torch.int64)
    buf[:HEADER_BYTES].copy_(header.view(torch.uint8))
    return buf


class PackRing:
    """Two pack buffers reused across buckets and updates, for senders that hold at most two
    packed buckets at a time (the object store copies each at once; collective.send keeps one
    travelling while the next is packed). On the host, fresh buffers would cost a page fault
    per 4 KB of every bucket."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []

    def out(self, layout: Layout, index: int, device) -> torch.Tensor:
        largest = max(layout.buffer_bytes(i) for i in range(len(layout.buckets)))
        if not self.buffers or self.buffers[0].numel() < largest or self.buffers[0].device != torch.device(device):
            self.buffers = [torch.zeros(largest, dtype=torch.uint8, device=device) for _ in range(2)]
        return self.buffers[index % 2]


def unpack(layout: Layout, index: int, buffer: torch.Tensor, version: int) -> dict[str, torch.Tensor]:
    """Check bucket `index` of update `version` (size, magic, version, index, fingerprint) and
    return its tensors, views into `buffer`; raises WeightSyncError naming what is wrong."""
    where = f"weight update v{version} bucket {index}/{len(layout.buckets)}"
    if buffer.dtype != torch.uint8 or buffer.numel() != layout.buffer_bytes(index):
        raise WeightSyncError(f"{where}: {buffer.numel()} bytes of {buffer.dtype}, expected "
                              f"{layout.buffer_bytes(index)} uint8")
    magic, got_version, got_index, expected = buffer[:HEADER_BYTES].cpu().view(torch.int64).tolist()
    if magic != MAGIC:
        raise WeightSyncError(f"{where}: not a Tandem weight bucket (bad header)")
    if got_version != version or got_index != index:
        raise WeightSyncError(f"{where}: the buffer is v{got_version} bucket {got_index} (out of order)")
    payload = buffer[HEADER_BYTES:]
    if fingerprint(payload) != expected:
        raise WeightSyncError(f"{where}: fingerprint mismatch (corrupted in transit)")
    return {s.name: payload[s.offset:s.offset + s.nbytes].view(getattr(torch, s.dtype)).view(s.shape)
            for s in layout.buckets[index]}
