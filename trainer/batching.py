"""Turn rollouts into the learner's padded TrainBatch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rollout.types import Rollout
from trainer.types import TrainBatch


def build_batch(rollouts: Sequence[Rollout], pad_id: int, mask_truncated: bool = False) -> TrainBatch:
    """Right-padded [prompt | response] rows with behaviour logprobs. Advantages and loss
    weights are filled in by the caller; a truncated response trains only if not masked."""
    width = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    b = len(rollouts)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    attn = np.zeros((b, width), dtype=np.int64)
    mask = np.zeros((b, width), dtype=np.float32)
    behaviour = np.zeros((b, width), dtype=np.float32)
    for i, r in enumerate(rollouts):
        p, n = len(r.prompt_ids), len(r.response_ids)
        ids[i, : p + n] = r.prompt_ids + r.response_ids
        attn[i, : p + n] = 1
        if not (mask_truncated and r.finish_reason == "length"):
            mask[i, p : p + n] = 1.0
        behaviour[i, p : p + n] = r.logprobs
    return TrainBatch(ids, attn, mask, np.zeros_like(mask), behaviour_logprobs=behaviour)
