"""rollout.min_new_tokens: no response ends before that many tokens (min = max: every response
the same length, as the benchmarks need), while each token's logprob stays the model's own,
the one the learner computes; and the settings it cannot honour are refused."""

import pytest
import torch

from rollout.config import RolloutConfig
from rollout.hf_engine import HFEngine
from rollout.types import SamplingParams
from trainer.logprobs import token_logprobs
from tests.rollout.requests import request

TEMP = 1.0


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HFEngine(tiny_model)


def rollouts(engine, min_new, max_new):
    reqs = [request(g, f"{g}+{g * 3}=", str(4 * g), 4) for g in range(6)]
    return engine.generate(reqs, SamplingParams(temperature=TEMP, max_new_tokens=max_new, min_new_tokens=min_new,
                                                seed=9), 0)


def test_no_response_ends_before_min_new_tokens(engine):
    free = [len(r.response_ids) for r in rollouts(engine, 0, 24)]
    assert min(free) < 10  # without the floor, responses end early
    fixed = rollouts(engine, 24, 24)
    assert {len(r.response_ids) for r in fixed} == {24}
    floor = rollouts(engine, 10, 24)
    assert min(len(r.response_ids) for r in floor) >= 10
    eos = engine.eos_id
    assert all(eos not in r.response_ids[:10] for r in floor)
    assert any(r.response_ids[-1] == eos for r in floor)  # after the floor, EOS ends responses as before


def test_logprobs_stay_the_models_own(engine):
    """The learner's teacher-forced logprobs of the sampled tokens, unmasked, equal the engine's."""
    out = rollouts(engine, 24, 24)
    for r in out[:8]:
        ids = torch.tensor([list(r.prompt_ids) + list(r.response_ids)])
        with torch.no_grad():
            logp = token_logprobs(engine.model, ids, torch.ones_like(ids), TEMP)[0][0, len(r.prompt_ids):]
        assert torch.allclose(logp.double(), torch.tensor(r.logprobs, dtype=torch.double), atol=1e-5)


def test_settings_it_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="min_new_tokens=9 is above rollout.max_new_tokens=8"):
        RolloutConfig(max_new_tokens=8, min_new_tokens=9)
    with pytest.raises(ValueError, match="min_new_tokens with rollout.engine 'vllm'"):
        RolloutConfig(engine="vllm", min_new_tokens=4)
