"""Partial rollouts: weights swapped in the middle of generation. Tokens keep the version that
produced them, their behaviour logprobs are those of that version's weights, and the
off-policy loss weighs each token against the right one. Then the two in-flight modes on a
real rollout worker."""

import numpy as np
import pytest
import ray
import torch

from rollout.hf_engine import HFEngine
from rollout.config import RolloutConfig
from rollout.pool import RolloutPool
from rollout.types import SamplingParams
from rollout.transfer.buckets import TensorSpec, plan_layout
from rollout.transfer.object_store import store_update
from trainer.batches import build_batch
from trainer.logprobs import token_logprobs
from trainer.losses import LOSSES, LossInputs
from trainer.types import LossSpec
from tests.rollout.requests import request

TEMP = 0.9
SWAP_AT = 3  # decode steps on the old weights before the swap


def requests(n, samples=4):
    return [request(g, f"{g}+{g + 7}=", str(2 * g + 7), samples) for g in range(n)]


def moved_weights(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {name: (p.detach() + 0.05 * torch.randn(p.shape, generator=gen)).numpy()
            for name, p in model.named_parameters()}


def logprobs_under(model, batch):
    with torch.no_grad():
        return token_logprobs(model, torch.tensor(batch.input_ids), torch.tensor(batch.attention_mask), TEMP)[0]


@pytest.fixture(scope="module")
def partial(tiny_model):
    """Rollouts whose generation swapped to new weights after SWAP_AT decode steps."""
    engine, old = HFEngine(tiny_model), HFEngine(tiny_model)  # `old` keeps version 0's weights
    new_weights = moved_weights(engine.model)
    calls = {"n": 0}

    def safe_point():
        calls["n"] += 1
        if calls["n"] == SWAP_AT + 2:  # one call before the prefill, then one before each decode step
            engine.load_weights(new_weights)
        return 0 if calls["n"] < SWAP_AT + 2 else 1

    rollouts = [r for part in engine.stream(requests(8), SamplingParams(temperature=TEMP, max_new_tokens=24, seed=5), safe_point)
                for r in part]
    return rollouts, old.model, engine.model


def test_tokens_carry_the_version_that_produced_them(partial):
    rollouts, _, _ = partial
    two = [r for r in rollouts if len(set(r.versions)) == 2]
    assert two, "no rollout was in flight at the swap; the test would prove nothing"
    for r in rollouts:
        n = len(r.response_ids)
        expect = [0] * min(n, SWAP_AT) + [1] * max(0, n - SWAP_AT)
        assert list(r.versions) == expect and r.min_version == 0


def test_behaviour_logprobs_come_from_each_tokens_own_weights(partial):
    rollouts, old, new = partial
    batch = build_batch(rollouts, pad_id=0)
    by_old, by_new = logprobs_under(old, batch).numpy(), logprobs_under(new, batch).numpy()
    moved = 0.0
    for i, r in enumerate(rollouts):
        start = len(r.prompt_ids)
        for t, v in enumerate(r.versions):
            want = (by_old if v == 0 else by_new)[i, start + t]
            assert abs(batch.behaviour_logprobs[i, start + t] - want) < 1e-5, (i, t, v)
            moved = max(moved, abs(by_old[i, start + t] - by_new[i, start + t]))
    assert moved > 1e-2, "old and new weights give the same logprobs; the test would prove nothing"


def test_the_off_policy_loss_weighs_each_token_against_its_own_behaviour(partial):
    rollouts, old, new = partial
    batch = build_batch(rollouts, pad_id=0)
    mask = torch.tensor(batch.loss_mask)
    x = LossInputs(mask=mask, logprobs=logprobs_under(new, batch),
                   behaviour_logprobs=torch.tensor(batch.behaviour_logprobs),
                   advantages=torch.ones_like(mask))
    _, metrics = LOSSES.get("decoupled_ppo")(x, LossSpec(name="decoupled_ppo", is_cap=1e9))
    weights = metrics["is_weight"].numpy()
    new_tokens = np.zeros_like(batch.loss_mask, dtype=bool)
    for i, r in enumerate(rollouts):
        new_tokens[i, len(r.prompt_ids) + SWAP_AT: len(r.prompt_ids) + len(r.response_ids)] = True
    on = batch.loss_mask.astype(bool)
    assert np.abs(weights[new_tokens & on] - 1).max() < 1e-4  # sampled by the policy being trained
    stale = weights[~new_tokens & on]
    assert np.abs(stale - 1).max() > 1e-2  # the swap's first tokens are weighed old -> new


@pytest.fixture
def worker_pool(ray_session, tiny_model, request):
    pool = RolloutPool(tiny_model, RolloutConfig(num_workers=1, batch_size=2, in_flight=request.param))
    yield pool
    pool.shutdown()


def update_from(pool, tiny_model, version, seed):
    """Moved weights as an object-store update in the pool's bucket layout (set here)."""
    engine = HFEngine(tiny_model)
    tensors = {name: torch.from_numpy(a) for name, a in moved_weights(engine.model, seed).items()}
    layout = plan_layout([TensorSpec(n, tuple(t.shape), "float32") for n, t in tensors.items()], 2**20)
    pool.set_layout(layout)
    return store_update(layout, tensors, version)


def stream_with_update(pool, update):
    """Start a long generation call, send the update once the first rollouts are back."""
    (shard,) = pool.stream(requests(24, samples=1), SamplingParams(temperature=TEMP, max_new_tokens=24, seed=3))
    first = ray.get(next(shard.stream))
    pool.update_weights(update)
    rest = [r for ref in shard.stream for r in ray.get(ref)]
    return first, rest


@pytest.mark.parametrize("worker_pool", ["interrupt"], indirect=True)
def test_interrupt_mode_swaps_in_flight_generation(worker_pool, tiny_model):
    first, rest = stream_with_update(worker_pool, update_from(worker_pool, tiny_model, 1, seed=1))
    assert {v for r in first for v in r.versions} == {0}
    assert worker_pool.versions() == [1] and worker_pool.stats()[0]["swaps_in_flight"] == 1
    assert rest[-1].versions[-1] == 1  # the call went on with the new weights
    assert all(list(r.versions) == sorted(r.versions) for r in rest)
    # The update landed between two decode steps of a running batch: its rollouts are partial,
    # their first tokens from version 0 and the rest from version 1.
    partial = [r for r in rest if set(r.versions) == {0, 1}]
    assert partial, [r.versions for r in rest]
    assert all(r.versions[0] == 0 and r.versions[-1] == 1 for r in partial)


@pytest.mark.parametrize("worker_pool", ["finish"], indirect=True)
def test_finish_mode_lets_in_flight_generation_finish_on_old_weights(worker_pool, tiny_model):
    first, rest = stream_with_update(worker_pool, update_from(worker_pool, tiny_model, 1, seed=1))
    assert {v for r in first + rest for v in r.versions} == {0}
    stats = worker_pool.stats()[0]
    assert stats["latest"] == 1 and stats["swaps_in_flight"] == 0
    after = worker_pool.generate(requests(2), SamplingParams(temperature=TEMP, max_new_tokens=8, seed=4))
    assert {v for r in after for v in r.versions} == {1} and worker_pool.versions() == [1]
