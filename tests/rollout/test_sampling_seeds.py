"""One seed function for every sampling seed: a rollout depends on (run seed, step, group,
sample) only, not on the batch, the order or the worker that generated it."""

from rollout.hf_engine import HFEngine
from rollout.types import GenerationRequest, SamplingParams, sample_seed


def requests(groups) -> list[GenerationRequest]:
    return [GenerationRequest(group_id=g, prompt_id=g, prompt=f"{g}+{g + 3}=", answer=str(2 * g + 3), num_samples=4)
            for g in groups]


def by_key(rollouts) -> dict:
    return {(r.group_id, r.sample_index): (r.response_ids, r.logprobs) for r in rollouts}


def test_the_seed_function_separates_every_coordinate():
    seeds = {sample_seed(s, t, g, k) for s in range(3) for t in range(3) for g in range(3) for k in range(3)}
    assert len(seeds) == 81 and all(0 <= x < 2**63 for x in seeds)
    assert sample_seed(0, 1, 2, 3) == sample_seed(0, 1, 2, 3)


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
