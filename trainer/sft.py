"""Supervised fine-tuning batches: padded rows, or packed rows (several examples per row).

The loss is the registered `sft` loss (NLL) on completion tokens only, weighted by the
`token-mean` aggregation over the whole optimizer step, so padding, packing, sharding and
micro-batching do not change what a step optimises.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rollout.preference_data import Example
from trainer.types import TrainBatch


def padded_batch(examples: Sequence[Example], pad_id: int) -> TrainBatch:
    """One right-padded row per example; loss_mask marks the completion tokens."""
    width = max(len(e.ids) for e in examples)
    ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    attn = np.zeros_like(ids)
    mask = np.zeros(ids.shape, dtype=np.float32)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n], attn[i, :n], mask[i, :n] = e.ids, 1, e.trains
    mask[:, 0] = 0.0  # position 0 is never a target (nothing precedes it)
    return TrainBatch(ids, attn, mask, np.zeros_like(mask))


def pack(examples: Sequence[Example], length: int) -> list[list[Example]]:
    """First-fit-decreasing bins of examples whose lengths sum to at most `length` each."""
    bins: list[list[Example]] = []
    room: list[int] = []
    for e in sorted(examples, key=lambda e: -len(e.ids)):
        if len(e.ids) > length:
            raise ValueError(f"an example of {len(e.ids)} tokens does not fit a packed row of {length}")
        for b, free in enumerate(room):
            if len(e.ids) <= free:
                bins[b].append(e)
                room[b] -= len(e.ids)
                break
        else:
            bins.append([e])
            room.append(length - len(e.ids))
    return bins


def packed_batch(rows: Sequence[Sequence[Example]], pad_id: int) -> TrainBatch:
    """Rows of several examples each. Position ids restart at every example (and in the padding
    tail, which becomes its own segment), which is how the learner's model keeps attention
    within an example; the first token of each example is never a target."""
    width = max(sum(len(e.ids) for e in row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    pos = np.zeros_like(ids)
    mask = np.zeros(ids.shape, dtype=np.float32)
    for i, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.ids)
            ids[i, at:at + n], pos[i, at:at + n], mask[i, at:at + n] = e.ids, np.arange(n), e.trains
            mask[i, at] = 0.0
            at += n
        pos[i, at:] = np.arange(width - at)
    return TrainBatch(ids, np.ones_like(ids), mask, np.zeros_like(mask), position_ids=pos)
