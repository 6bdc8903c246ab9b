"""Every TrainBatch builder: rollouts (RL), supervised examples (padded or packed) and
preference pairs, all through one padding helper.

A row is a token sequence with per-token arrays aligned to it (the train mask, behaviour
logprobs); entry [b, t] belongs to token input_ids[b, t], and position 0 is never a target
(nothing precedes it). Loss weights are set by the caller (the aggregation mode over the
whole optimizer step), so padding, packing, sharding and micro-batching cannot change what a
step optimises.

Preference pairs are adjacent rows: 2i = prompt + chosen, 2i + 1 = prompt + rejected.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rollout.types import Rollout
from trainer.data import Example, PreferencePair
from trainer.types import TrainBatch


def pad_rows(seqs: Sequence[Sequence[int]], pad_id: int, *per_token: Sequence[Sequence[float]]):
    """Right-pad `seqs` to the longest: (input_ids [B, W] int64, attention_mask [B, W] int64,
    one float32 [B, W] array per `per_token` list, zero past each row's end)."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    attn = np.zeros((len(seqs), width), dtype=np.int64)
    arrays = [np.zeros((len(seqs), width), dtype=np.float32) for _ in per_token]
    for i, s in enumerate(seqs):
        ids[i, : len(s)], attn[i, : len(s)] = s, 1
        for out, values in zip(arrays, per_token):
            out[i, : len(values[i])] = values[i]
    return ids, attn, arrays


def build_batch(rollouts: Sequence[Rollout], pad_id: int, mask_truncated: bool = False) -> TrainBatch:
    """[prompt | response] rows with behaviour logprobs; a truncated response trains only if not
    masked. In a multi-turn trajectory only the model's tokens train (Rollout.trains), never an
    observation's."""
    seqs = [r.prompt_ids + r.response_ids for r in rollouts]
    masks = []
    for r in rollouts:
        on = float(not (mask_truncated and r.finish_reason == "length"))
        masks.append([0.0] * len(r.prompt_ids) + [on * t for t in (r.trains or [1] * len(r.response_ids))])
    behaviour = [[0.0] * len(r.prompt_ids) + list(r.logprobs) for r in rollouts]
    ids, attn, (mask, logprobs) = pad_rows(seqs, pad_id, masks, behaviour)
    return TrainBatch(ids, attn, mask, np.zeros_like(mask), behaviour_logprobs=logprobs)


def turn_rewards(rollouts: Sequence[Rollout], width: int) -> np.ndarray | None:
    """[B, width] the environment's per-turn rewards of multi-turn rollouts, each on its turn's
    last token (build_batch's alignment), 0 elsewhere; None when no rollout has any."""
    if not any(r.episode is not None and r.episode.turn_rewards for r in rollouts):
        return None
    out = np.zeros((len(rollouts), width), dtype=np.float32)
    for i, r in enumerate(rollouts):
        for index, reward in (r.episode.turn_rewards if r.episode is not None else ()):
            out[i, len(r.prompt_ids) + index] += reward
    return out


def padded_batch(examples: Sequence[Example], pad_id: int) -> TrainBatch:
    """SFT: one row per example; loss_mask marks the completion tokens."""
    ids, attn, (mask,) = pad_rows([e.ids for e in examples], pad_id, [e.trains for e in examples])
    mask[:, 0] = 0.0
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
    """SFT, several examples per row. Position ids restart at every example (and in the padding
    tail, which becomes its own segment), which is how the learner's model keeps attention
    within an example; the first token of each example is never a target."""
    seqs = [[t for e in row for t in e.ids] for row in rows]
    masks = [[m for e in row for m in [0.0, *e.trains[1:]]] for row in rows]
    positions = [[p for e in row for p in range(len(e.ids))] for row in rows]
    ids, _, (mask, pos) = pad_rows(seqs, pad_id, masks, positions)
    pos = pos.astype(np.int64)
    for i, s in enumerate(seqs):
        pos[i, len(s):] = np.arange(ids.shape[1] - len(s))
    return TrainBatch(ids, np.ones_like(ids), mask, np.zeros_like(mask), position_ids=pos)


def pair_batch(pairs: Sequence[PreferencePair], pad_id: int) -> TrainBatch:
    """Rows [chosen_0, rejected_0, chosen_1, ...]; `margins` [B] repeat per pair."""
    seqs, masks = [], []
    for p in pairs:
        for answer in (p.chosen_ids, p.rejected_ids):
            seqs.append(p.prompt_ids + answer)
            start = max(len(p.prompt_ids), 1)  # position 0 is never a target
            masks.append([0.0] * start + [1.0] * (len(p.prompt_ids) + len(answer) - start))
    ids, attn, (mask,) = pad_rows(seqs, pad_id, masks)
    margins = np.repeat([p.margin for p in pairs], 2).astype(np.float32)
    return TrainBatch(ids, attn, mask, np.zeros_like(mask), margins=margins)


def pad_pairs(batch: TrainBatch, rows: int) -> TrainBatch:
    """Fill up to `rows` rows with copies of the first pair that have no loss_mask (weight 0),
    so every optimizer step has the shape the learners were configured for."""
    missing = rows - len(batch)
    if missing < 0 or missing % 2:
        raise ValueError(f"cannot pad a batch of {len(batch)} rows to {rows}")
    if missing == 0:
        return batch
    filler = batch.rows(np.tile([0, 1], missing // 2))
    filler = filler.replace(loss_mask=np.zeros_like(filler.loss_mask))
    return TrainBatch(**{k: np.concatenate([v, getattr(filler, k)]) for k, v in batch.arrays().items()})
