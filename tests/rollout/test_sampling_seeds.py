"""One seed function for every sampling seed: a rollout depends on (run seed, step, group,
sample) only, not on the batch, the order or the worker that generated it."""

from dataclasses import replace

import torch

from rollout.hf_engine import HFEngine
from rollout.types import SamplingParams, sample_seed
from tests.rollout.requests import request


def requests(groups):
    return [request(g, f"{g}+{g + 3}=", str(2 * g + 3), 4)
            for g in groups]


def by_key(rollouts) -> dict:
    return {(r.group_id, r.sample_index): (r.response_ids, r.logprobs) for r in rollouts}


def test_the_seed_function_separates_every_coordinate():
    # 4 run seeds x 5 steps (eval's -1 included) x 9 groups (eval's negative ids included) x 8 samples
    grid = [(s, t, g, k) for s in range(4) for t in range(-1, 4) for g in range(-4, 5) for k in range(8)]
    seeds = [sample_seed(*key) for key in grid]
    assert len(set(seeds)) == len(grid) == 1440  # no two coordinates share a seed
    # Swapping coordinates does not collide either: (step 1, group 2) is not (step 2, group 1).
    assert sample_seed(0, 1, 2, 3) != sample_seed(0, 2, 1, 3) != sample_seed(0, 3, 2, 1)
    assert sample_seed(0, 12, 3, 0) != sample_seed(0, 1, 23, 0)  # no ambiguous concatenation


def replay(engine, rollout, temperature: float) -> list[int]:
    """The hf engine's sample rebuilt from the rollout's seed alone: one float64 uniform per token
    from a generator seeded with it, inverse CDF of softmax(logits / T)."""
    gen = torch.Generator().manual_seed(rollout.seed)
    ids = list(rollout.prompt_ids)
    with torch.no_grad():
        for _ in rollout.response_ids:
            logp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0, -1].float() / temperature, -1)
            cdf = logp.double().exp().cumsum(-1)
            u = torch.rand(1, generator=gen, dtype=torch.float64)
            ids.append(min(int(torch.searchsorted(cdf, u * cdf[-1])), len(cdf) - 1))
    return ids[len(rollout.prompt_ids):]


def test_hf_engine_samples_from_the_seed_function(tiny_model):
    engine = HFEngine(tiny_model)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=5, step=3)
    rollouts = engine.generate(requests(range(3)), params, version=0)
    assert [r.seed for r in rollouts] == [sample_seed(5, 3, r.group_id, r.sample_index) for r in rollouts]
    for r in rollouts:
        assert replay(engine, r, 1.0) == list(r.response_ids)
    # The check has teeth: another sample's seed replays a different response for most rows.
    shifted = [replay(engine, replace(r, seed=rollouts[(i + 1) % 12].seed), 1.0) for i, r in enumerate(rollouts)]
    assert sum(ids != list(r.response_ids) for ids, r in zip(shifted, rollouts)) >= 8


def test_hf_rollouts_do_not_depend_on_batching_or_order(tiny_model):
    engine = HFEngine(tiny_model)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=5, step=3)
    together = by_key(engine.generate(requests(range(6)), params, version=0, batch_size=24))
    alone = by_key(engine.generate(requests(reversed(range(6))), params, version=0, batch_size=1))
    assert together.keys() == alone.keys() and len(together) == 24
    for key, (ids, logprobs) in together.items():
        assert alone[key][0] == ids
        assert max(abs(a - b) for a, b in zip(alone[key][1], logprobs)) < 1e-5
    # Samples of one group differ from each other, and another step samples differently.
    assert len({ids for (g, _), (ids, _) in together.items() if g == 0}) > 1
    other = by_key(engine.generate(requests(range(6)), SamplingParams(temperature=1.0, max_new_tokens=12, seed=5,
                                                                      step=4), version=0))
    assert sum(other[k][0] != together[k][0] for k in together) >= 12
