"""Turn scored rollouts into the learner's padded TrainBatch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rollout.types import Rollout
from trainer.types import TrainBatch


def build_batch(rollouts: Sequence[Rollout], advantages: Sequence[float], pad_id: int) -> TrainBatch:
    """Right-padded [prompt | response] rows; each response token gets its sample's advantage."""
    if len(rollouts) != len(advantages):
        raise ValueError(f"{len(rollouts)} rollouts but {len(advantages)} advantages")
    width = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    b = len(rollouts)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    attn = np.zeros((b, width), dtype=np.int64)
    mask = np.zeros((b, width), dtype=np.float32)
    adv = np.zeros((b, width), dtype=np.float32)
    behaviour = np.zeros((b, width), dtype=np.float32)
    for i, (r, a) in enumerate(zip(rollouts, advantages)):
        p, n = len(r.prompt_ids), len(r.response_ids)
        ids[i, : p + n] = r.prompt_ids + r.response_ids
        attn[i, : p + n] = 1
        mask[i, p : p + n] = 1.0
        adv[i, p : p + n] = a
        behaviour[i, p : p + n] = r.logprobs
    return TrainBatch(ids, attn, mask, adv, behaviour, global_tokens=int(mask.sum()))
