"""Colocated placement: a rollout worker's engine sleeps while the learners train. Level 2 drops
the weights (the worker's resident memory falls by their size) and the next update refills
them; level 1 keeps them in host memory (on a CPU engine nothing is released). A sleeping or
unfilled engine refuses to generate, and a sleeping one refuses updates."""

import pytest
import torch

from rollout.config import EngineSetup, RolloutConfig
from rollout.pool import RolloutPool
from rollout.transfer.buckets import TensorSpec, WeightSyncError, plan_layout
from rollout.transfer.object_store import store_update
from rollout.types import EngineError, GenerationRequest, SamplingParams

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 10M-parameter random Llama (39 MB in fp32): large enough that its release shows in the
    process's resident memory above the allocator's noise."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trainer.bootstrap import save_random_model

    path = tmp_path_factory.mktemp("models") / "sleep-10m"
    config = LlamaConfig(vocab_size=16384, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    save_random_model(path, config, dtype=torch.float32)
    weights = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(path).named_parameters()}
    return str(path), weights


def requests():
    return [GenerationRequest(group_id=g, prompt_id=g, prompt="", answer="", num_samples=4,
                              prompt_ids=(1, 10 + g, 20 + g, 30 + g)) for g in range(4)]


def tokens(rollouts):
    return [(r.response_ids, r.logprobs) for r in rollouts]


def update(weights, version):
    layout = plan_layout([TensorSpec(n, tuple(t.shape), "float32") for n, t in weights.items()], 2**22)
    return layout, store_update(layout, weights, version)


def test_level_2_frees_the_weights_and_the_next_update_refills_them(ray_session, model):
    path, weights = model
    layout, refill = update(weights, 1)
    pool = RolloutPool(path, RolloutConfig(num_workers=1), setup=EngineSetup(sleep_mode=True))
    try:
        pool.set_layout(layout)
        before = tokens(pool.generate(requests(), PARAMS))
        [memory] = pool.sleep(2)
        weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
        assert weight_bytes > 35e6 and memory.released_bytes == weight_bytes
        assert memory.resident_before - memory.resident_after > 0.9 * weight_bytes, memory
        with pytest.raises(EngineError, match="while asleep"):
            pool.generate(requests(), PARAMS)
        with pytest.raises(WeightSyncError, match="weight update 1 reached a sleeping engine"):
            pool.update_weights(refill)
        pool.wake_up()
        with pytest.raises(EngineError, match="before a weight update filled its weights"):
            pool.generate(requests(), PARAMS)
        pool.update_weights(refill)
        after = pool.generate(requests(), PARAMS)
        assert tokens(after) == before  # the same weights back: the same samples, the same logprobs
        assert {v for r in after for v in r.versions} == {1}
    finally:
        pool.shutdown()


def test_level_1_keeps_the_weights_on_a_cpu_engine(ray_session, model):
    path, _ = model
    pool = RolloutPool(path, RolloutConfig(num_workers=1), setup=EngineSetup(sleep_mode=True))
    try:
        before = tokens(pool.generate(requests(), PARAMS))
        [memory] = pool.sleep(1)
        assert memory.released_bytes == 0  # host memory is where a CPU engine's weights already are
        with pytest.raises(EngineError, match="already asleep"):
            pool.sleep(1)
        pool.wake_up()
        assert tokens(pool.generate(requests(), PARAMS)) == before  # no update needed
        with pytest.raises(EngineError, match="not asleep"):
            pool.wake_up()
    finally:
        pool.shutdown()
