"""SFT batches: loss only on completion tokens; packed rows give every example exactly the
logprobs it gets alone (attention stays within an example)."""

import numpy as np
import pytest
import torch

from trainer.data import Example
from trainer.logprobs import token_logprobs
from trainer.losses import AGGREGATIONS, LOSSES, LossInputs
from trainer.batches import pack, packed_batch, padded_batch
from trainer.types import LossSpec


def examples():
    rng = np.random.default_rng(3)
    out = []
    for n_prompt, n_answer in [(4, 3), (6, 2), (3, 5), (5, 1), (7, 4)]:
        ids = [1] + list(rng.integers(4, 20, size=n_prompt + n_answer - 1))
        out.append(Example(tuple(int(i) for i in ids), (False,) * n_prompt + (True,) * n_answer))
    return out


def test_padded_rows_train_only_completion_tokens():
    batch = padded_batch(examples(), pad_id=0)
    assert batch.loss_mask.sum() == 3 + 2 + 5 + 1 + 4
    np.testing.assert_array_equal(batch.loss_mask[0], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.attention_mask[0], [1] * 7 + [0] * 4)


def test_pack_fits_rows_and_keeps_every_example():
    bins = pack(examples(), 14)
    assert all(sum(len(e.ids) for e in b) <= 14 for b in bins)
    assert sorted(e.ids for b in bins for e in b) == sorted(e.ids for e in examples())
    assert len(bins) == 4  # lengths 7 8 8 6 11, first-fit decreasing: [11] [8 6] [8] [7]
    with pytest.raises(ValueError, match="does not fit a packed row of 10"):
        pack(examples(), 10)


def test_packed_logprobs_equal_unpacked(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    exs = examples()
    padded = padded_batch(exs, pad_id=0)
    packed = packed_batch(pack(exs, 24), pad_id=0)
    assert len(packed) < len(padded) and packed.loss_mask.sum() == padded.loss_mask.sum()
    with torch.no_grad():
        alone = token_logprobs(model, torch.tensor(padded.input_ids), torch.tensor(padded.attention_mask), 1.0)[0]
        together = token_logprobs(model, torch.tensor(packed.input_ids), torch.tensor(packed.attention_mask), 1.0,
                                  torch.tensor(packed.position_ids))[0]
    want = sorted(np.round(alone.numpy()[padded.loss_mask == 1], 5))
    got = sorted(np.round(together.numpy()[packed.loss_mask == 1], 5))
    np.testing.assert_allclose(got, want, atol=2e-5)
    # The same step loss either way: the token-mean NLL over completion tokens.
    spec = LossSpec(name="sft")
    losses = []
    for batch, logp in ((padded, alone), (packed, together)):
        per_token, _ = LOSSES.get("sft")(LossInputs(mask=torch.tensor(batch.loss_mask), logprobs=logp), spec)
        losses.append(float((per_token * torch.tensor(AGGREGATIONS.get("token-mean")(batch.loss_mask, 0))).sum()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_packed_rows_restart_positions_per_example():
    batch = packed_batch([examples()[:2], examples()[2:3]], pad_id=0)
    lengths = [len(e.ids) for e in examples()[:3]]
    np.testing.assert_array_equal(batch.position_ids[0, : lengths[0] + 2], list(range(lengths[0])) + [0, 1])
    assert batch.loss_mask[0, lengths[0]] == 0  # an example's first token is never a target
    assert batch.loss_mask[1, lengths[2]:].sum() == 0 and batch.position_ids[1, lengths[2]] == 0
