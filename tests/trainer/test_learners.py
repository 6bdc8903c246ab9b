"""DeepSpeed learner ranks on Ray (gloo) against a single-process plain-torch reference step."""

import numpy as np
import pytest
import torch

from trainer.group import LearnerGroup
from trainer.learner import LearnerOptions
from rollout.transfer.object_store import fetch_update
from trainer.logprobs import token_logprobs
from trainer.losses import AGGREGATIONS, LOSSES, LossInputs
from trainer.schedules import Schedule
from rollout.lora import LoraSpec
from trainer.types import LossSpec, TrainBatch

SPEC = LossSpec(clip_eps=0.2, temperature=1.0)
LR, CLIP = 3e-3, 0.2  # clip low enough that gradient clipping is exercised
STEPS = 2
# Warm-up over both steps: rates LR/2 then LR, applied by the learners' scheduler and by hand in the
# reference (a learner that ignored the schedule would take a different first step).
WARMUP = Schedule("cosine", total=4, warmup=STEPS)


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def make_batch(path, agg: str, rows=16, seed=0) -> TrainBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 13, size=rows)
    width = int(lengths.max())
    ids = np.zeros((rows, width), dtype=np.int64)
    attn = np.zeros_like(ids)
    mask = np.zeros((rows, width), dtype=np.float32)
    for i, n in enumerate(lengths):
        ids[i, 0] = 1
        ids[i, 1:n] = rng.integers(4, 20, size=n - 1)
        attn[i, :n] = 1
        mask[i, 4:n] = 1.0  # 4 prompt tokens, the rest is response
    adv = (rng.standard_normal((rows, 1)) * mask).astype(np.float32)
    with torch.no_grad():
        logp, _ = token_logprobs(load(path), torch.tensor(ids), torch.tensor(attn), 1.0)
    # Behaviour logprobs off the current policy, so ratios leave the clip range on some tokens.
    behaviour = ((logp.numpy() + rng.normal(0, 0.3, logp.shape)) * mask).astype(np.float32)
    weights = AGGREGATIONS.get(agg)(mask, 12)
    return TrainBatch(ids, attn, mask, weights, advantages=adv, behaviour_logprobs=behaviour)


def reference_step(path, batch: TrainBatch) -> tuple[dict[str, np.ndarray], float]:
    """Plain torch, one process: the weighted loss over the whole batch, clip, AdamW.
    Returns the weights after STEPS steps and the last step's gradient norm before clipping."""
    model = load(path)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    t = {k: torch.tensor(v) for k, v in vars(batch).items() if isinstance(v, np.ndarray)}
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LR * (step + 1) / STEPS
        logp, _ = token_logprobs(model, t["input_ids"], t["attention_mask"], 1.0)
        x = LossInputs(mask=t["loss_mask"], logprobs=logp, behaviour_logprobs=t["behaviour_logprobs"], advantages=t["advantages"])
        per_token, _ = LOSSES.get("ppo_clip")(x, SPEC)
        loss = (per_token * t["loss_weights"]).sum()
        opt.zero_grad()
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP))
        opt.step()
    return {n: p.detach().numpy() for n, p in model.named_parameters()}, norm


# The reference step computes logprobs over the whole vocabulary; `chunk` > 0 has the learners
# run their output head over that many positions at a time (under ZeRO-3: gathered per chunk,
# recomputed in backward), which must give the same update.
@pytest.mark.parametrize("stage, ranks, micro, agg, checkpointing, chunk", [
    (2, 2, 1, "seq-mean-token-mean", False, 3),  # ZeRO-2 over 2 ranks, 8 micro-batches of 1 row each per rank
    (3, 2, 8, "token-mean", True, 5),            # ZeRO-3 over 2 ranks, one micro-batch of 8 rows, activations recomputed
    (0, 1, 16, "seq-mean-token-sum", False, 0),  # plain data parallel, 1 rank, one micro-batch of the whole batch
], ids=["zero2-2ranks-8x1-chunked", "zero3-2ranks-1x8-checkpointing-chunked", "zero0-1rank-1x16"])
def test_learner_group_matches_single_process_step(ray_session, tiny_model, stage, ranks, micro, agg, checkpointing,
                                                    chunk):
    path, batch = tiny_model, make_batch(tiny_model, agg)
    expected, expected_norm = reference_step(path, batch)
    rows_per_rank = len(batch) // ranks
    opts = LearnerOptions(zero_stage=stage, lr=LR, schedule=WARMUP, max_grad_norm=CLIP, micro_batch_size=micro,
                          grad_accum_steps=rows_per_rank // micro, gradient_checkpointing=checkpointing,
                          logprob_chunk_tokens=chunk)
    group = LearnerGroup(path, ranks, opts)
    try:
        rates = []
        for _ in range(STEPS):
            stats = group.train_step(batch, SPEC)
            rates.append(stats["lr"])
        layout = group.transfer_layout(2**18)  # 256 KB buckets: ZeRO-3 gathers them one at a time
        got = {n: t.numpy() for n, t in fetch_update(layout, group.export_weights(1, layout)).items()}
    finally:
        group.shutdown()
    initial = {n: p.detach().numpy() for n, p in load(path).named_parameters()}
    assert set(got) == set(expected)
    step = np.concatenate([(expected[n] - initial[n]).ravel() for n in expected])
    diff = np.concatenate([(got[n] - expected[n]).ravel() for n in expected])
    assert np.abs(step).max() > 1e-3, "reference step did not move the weights"
    # Same update up to float summation order. Adam turns the rounding noise of a few
    # near-zero gradients into visible steps, so bound the whole update tightly and the
    # largest single element loosely.
    assert np.linalg.norm(diff) / np.linalg.norm(step) < 1e-4
    assert (np.abs(diff) > 1e-6).mean() < 1e-3 and np.abs(diff).max() < 5e-5
    # Adam is blind to the gradient's scale; the norm is not: it checks the loss normalisation
    # across ranks and micro-batches (and that clipping saw the right norm).
    assert stats["grad_norm"] == pytest.approx(expected_norm, rel=1e-5)
    assert expected_norm > CLIP and 0 < stats["clip_frac"] < 1
    assert rates == [LR / 2, LR]  # the logged rate is the one each step applied


@pytest.mark.parametrize("lora", [None, LoraSpec(r=4, alpha=8.0)], ids=["full", "lora"])
def test_critic_learns_its_returns(ray_session, tiny_model, lora):
    """A value model initialised from the policy checkpoint fits constant returns (with LoRA: the
    adapter and the new value head train, and they are all an update would carry)."""
    batch = make_batch(tiny_model, "token-mean")
    opts = LearnerOptions(zero_stage=2, lr=1e-2, micro_batch_size=8, grad_accum_steps=1, model_kind="value",
                          lora=lora)
    critic = LearnerGroup(tiny_model, 2, opts)
    if lora is not None:
        names = [s.name for b in critic.transfer_layout(2**20).buckets for s in b]
        assert names and all("lora_" in n or "modules_to_save" in n for n in names), names
        assert any("modules_to_save" in n for n in names)  # the fresh value head trains whole
    try:
        returns = batch.loss_mask * 1.5
        errors = []
        for _ in range(15):
            values = critic.values(batch)
            assert values.shape == batch.input_ids.shape and np.all(values[:, 0] == 0)
            errors.append(np.abs((values - returns) * batch.loss_mask).sum() / batch.loss_mask.sum())
            step = batch.replace(returns=returns, old_values=values * batch.loss_mask)
            stats = critic.train_step(step, LossSpec(name="value_clip", value_clip=10.0))
        assert errors[-1] < 0.3 * errors[0], errors
    finally:
        critic.shutdown()


def test_attention_choice():
    from trainer.learner import resolve_attention

    assert resolve_attention("auto") == "sdpa"  # no CUDA / flash-attn on the CPU machines
    assert resolve_attention("eager") == "eager"
    with pytest.raises(ValueError, match="trainer.attn_implementation 'flash_attention_2' needs a CUDA GPU"):
        resolve_attention("flash_attention_2")


def test_off_policy_step_reports_maxima_and_uses_the_proximal_logprobs(ray_session, tiny_model):
    """decoupled_ppo over 2 ranks x 2 micro-batches: the step's is_weight max and mean come from the
    batch's proximal logprobs (not the current policy's), logprob_diff's max from the model."""
    batch = make_batch(tiny_model, "token-mean")
    rng = np.random.default_rng(1)
    mask = batch.loss_mask
    with torch.no_grad():
        logp = token_logprobs(load(tiny_model), torch.tensor(batch.input_ids), torch.tensor(batch.attention_mask),
                              1.0)[0].numpy()
    proximal = ((logp + rng.normal(0, 0.3, logp.shape)) * mask).astype(np.float32)
    weight = np.exp(proximal.astype(np.float64) - batch.behaviour_logprobs)[mask == 1]
    diff = np.abs(logp - batch.behaviour_logprobs)[mask == 1]
    opts = LearnerOptions(zero_stage=2, lr=LR, micro_batch_size=4, grad_accum_steps=2)
    group = LearnerGroup(tiny_model, 2, opts)
    try:
        stats = group.train_step(batch.replace(proximal_logprobs=proximal), LossSpec(name="decoupled_ppo", is_cap=1.5))
    finally:
        group.shutdown()
    assert stats["is_weight_max"] == pytest.approx(weight.max(), rel=1e-5)
    assert stats["is_weight"] == pytest.approx(weight.mean(), rel=1e-5)
    assert stats["is_truncated"] == pytest.approx((weight > 1.5).mean(), rel=1e-6)
    assert stats["is_weight_max"] > stats["is_weight"] and weight.max() > 1.5
    assert stats["logprob_diff_max"] == pytest.approx(diff.max(), rel=1e-4)
    assert stats["logprob_diff_max"] > stats["logprob_diff"] == pytest.approx(diff.mean(), rel=1e-4)
    assert "ratio_max" not in stats and "entropy_max" not in stats  # maxima only for MAX_METRICS


def test_offload_between_steps_leaves_the_update_unchanged(ray_session, tiny_model):
    """Colocated placement offloads the learners' states after each step and reloads them before
    the next: two steps with that in between end on the same weights, bitwise, as two without."""
    batch = make_batch(tiny_model, "token-mean")
    opts = LearnerOptions(zero_stage=2, lr=LR, max_grad_norm=CLIP, micro_batch_size=4, grad_accum_steps=2)
    weights = []
    for offload in (False, True):
        group = LearnerGroup(tiny_model, 2, opts)
        try:
            for _ in range(STEPS):
                group.train_step(batch, SPEC)
                if offload:
                    kept = group.offload(keep_params=True)  # before the weight sync: params stay
                    assert [s.offloaded for s in kept] == [("hp_params", "lp_grads", "optim_states")] * 2
                    assert [s.offloaded for s in group.offload()] == [("hp_params", "lp_grads", "lp_params", "optim_states")] * 2
                    assert [s.offloaded for s in group.reload()] == [()] * 2
            layout = group.transfer_layout(2**18)
            weights.append({n: t.numpy() for n, t in fetch_update(layout, group.export_weights(1, layout)).items()})
        finally:
            group.shutdown()
    moved = max(np.abs(weights[0][n] - p.detach().numpy()).max() for n, p in load(tiny_model).named_parameters())
    assert moved > 1e-3
    assert all(np.array_equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_saved_state_continues_bitwise(ray_session, tiny_model, tmp_path):
    """ZeRO-2 over 2 ranks: 2 steps, save, 2 more steps; a fresh group loaded from the save and
    given the same 2 steps ends on bitwise the same weights (optimizer moments, step count and the
    cosine schedule's position restored: Adam from a reset state, or the schedule from its start,
    would move differently)."""
    batch = make_batch(tiny_model, "token-mean")
    opts = LearnerOptions(zero_stage=2, lr=LR, schedule=Schedule("cosine", total=2 * STEPS), max_grad_norm=CLIP,
                          micro_batch_size=4, grad_accum_steps=2)

    def weights(group):
        layout = group.transfer_layout(2**18)
        return {n: t.numpy() for n, t in fetch_update(layout, group.export_weights(1, layout)).items()}

    group = LearnerGroup(tiny_model, 2, opts)
    try:
        for _ in range(STEPS):
            group.train_step(batch, SPEC)
        group.save_state(str(tmp_path / "ckpt"))
        saved = weights(group)
        for _ in range(STEPS):
            group.train_step(batch, SPEC)
        straight = weights(group)
    finally:
        group.shutdown()
    resumed_group = LearnerGroup(tiny_model, 2, opts)
    try:
        resumed_group.load_state(str(tmp_path / "ckpt"))
        assert all(np.array_equal(saved[n], v) for n, v in weights(resumed_group).items())
        rates = [resumed_group.train_step(batch, SPEC)["lr"] for _ in range(STEPS)]
        resumed = weights(resumed_group)
    finally:
        resumed_group.shutdown()
    assert max(np.abs(straight[n] - saved[n]).max() for n in saved) > 1e-3  # the last steps moved
    assert all(np.array_equal(straight[n], resumed[n]) for n in straight)
    assert rates == pytest.approx([LR * 0.5, LR * (1 + np.cos(0.75 * np.pi)) / 2])  # steps 3 and 4 of the cosine


@pytest.mark.parametrize("stage", [0, 2])
def test_a_non_finite_step_moves_nothing_and_the_next_step_lands_as_if_it_never_came(ray_session, tiny_model,
                                                                                     stage):
    """A NaN advantage on one rank makes the loss and the gradient NaN: the step is reported
    skipped on every rank and no parameter, moment or step count moves, so good, bad, good ends
    on bitwise the weights of good, good (ZeRO-0: our own check; ZeRO-2: DeepSpeed's). The skipped
    step does not advance the learning-rate schedule either: good, bad, good applies LR then 2/3 LR."""
    batch = make_batch(tiny_model, "token-mean")
    advantages = batch.advantages.copy()
    advantages[0, :] = np.nan
    bad = batch.replace(advantages=advantages)
    opts = LearnerOptions(zero_stage=stage, lr=LR, schedule=Schedule("linear", total=3), max_grad_norm=CLIP,
                          micro_batch_size=4, grad_accum_steps=2)
    weights, flags, rates = [], [], []
    for batches in ([batch, bad, batch], [batch, batch]):
        group = LearnerGroup(tiny_model, 2, opts)
        try:
            stats = [group.train_step(b, SPEC) for b in batches]
            flags.append([s["nonfinite"] for s in stats])
            rates.append([s["lr"] for s in stats])
            layout = group.transfer_layout(2**18)
            weights.append({n: t.numpy() for n, t in fetch_update(layout, group.export_weights(1, layout)).items()})
        finally:
            group.shutdown()
    assert flags == [[0.0, 1.0, 0.0], [0.0, 0.0]]
    assert rates[0] == pytest.approx([LR, LR * 2 / 3, LR * 2 / 3]) and rates[1] == pytest.approx([LR, LR * 2 / 3])
    assert all(np.isfinite(w).all() for w in weights[0].values())
    assert all(np.array_equal(weights[0][n], weights[1][n]) for n in weights[0])
