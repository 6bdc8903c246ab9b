"""The controller's streaming stage on a real rollout pool and reward pool: a group that can no
longer meet the staleness bound is aborted on its engine, ends dropped:aborted in the ledger
and is owed a replacement; nothing of it is used, no sample is lost or counted twice, and the
pool's outstanding work drains to zero. tests/e2e/test_vllm_streaming.py runs the same on vLLM."""

import itertools
import threading
import time

import pytest
import ray

from cluster.rl.gate import StalenessGate
from cluster.rl.scheduler import Outcome, Scheduler
from cluster.rl.streaming import Streaming
from reward.pool import RewardPool
from rollout.config import EngineSetup, RolloutConfig
from rollout.pool import RolloutPool
from rollout.types import SamplingParams
from tests.rollout.requests import request

GROUPS, SIZE = 4, 2


def streaming_over(pool: RolloutPool, reward: RewardPool, rule: str = "oldest") -> Streaming:
    """One step of GROUPS groups, synchronous bound (k = 0): at version 1 every group started on
    version 0 is doomed (`oldest`), or every group with a member finished on it (`newest`)."""
    scheduler = Scheduler(1, GROUPS, SIZE, 0, StalenessGate(0, SIZE, rule))
    ids = itertools.count(1)

    def make_requests(n):
        return [request(g, f"{g}+{g + 3}=", str(2 * g + 3), SIZE) for g in itertools.islice(ids, n)]

    return Streaming(scheduler, pool, reward, make_requests,
                     lambda step: SamplingParams(temperature=0.9, max_new_tokens=24, seed=step))


def check_doomed_groups_are_aborted(s: Streaming) -> None:
    s.start(0)  # step 1: GROUPS groups, one sample at a time (batch_size 1)
    # Until an incomplete group has an arrived member (a slow reader may see whole groups first).
    while not s.generated and s.streams:
        s._wait()
    first = {g: sum(len(r.response_ids) for r in m.values()) for g, m in s.generated.items()}
    s.abort_doomed(1)  # what the controller does once the policy moves to version 1
    if s.scheduler.gate.rule == "newest":  # an incomplete group's newest token is yet to come
        assert not s.aborted
        return
    assert set(first) <= s.aborted  # doomed by what arrived, whatever its engine was doing then

    while s.streams or s.tickets:
        s._wait()
    sched = s.scheduler
    assert {g for g, o in sched.ledger.items() if o == Outcome.ABORTED} == s.aborted
    assert sched.aborted_groups == len(s.aborted) and sched.take_owed() == len(s.aborted)
    # Every other group came back whole and was scored; none of an aborted group's members is used.
    assert s.complete == set(range(1, GROUPS + 1)) - s.aborted and sched.in_flight() == 0
    assert not s.complete & s.aborted and not s.generated
    assert (s.lost, s.duplicated) == (0, 0) and s.rollout.outstanding == [0]
    # Every token generated either belongs to a group that trains or is counted wasted: exactly.
    kept = sum(len(r.response_ids) for g in sched.ready for r in g.rollouts)
    assert sched.tokens["dropped:aborted"] == s.generated_tokens - kept >= sum(first.values())
    # Each complete group is ready (it trains unless judged stale: the scheduler's version is 0 still).
    assert sorted(g.group_id for g in sched.ready) == sorted(s.complete)


@pytest.mark.parametrize("rule", ["oldest", "newest"])
def test_doomed_groups_are_aborted_and_nothing_of_them_is_used(ray_session, tiny_model, rule):
    pool = RolloutPool(tiny_model, RolloutConfig(num_workers=1, batch_size=1, max_new_tokens=24))
    reward = RewardPool(num_workers=1)
    try:
        check_doomed_groups_are_aborted(streaming_over(pool, reward, rule))
    finally:
        pool.shutdown()
        reward.shutdown()


@pytest.mark.parametrize("asynchronous", [True, False])
def test_hf_calls_run_side_by_side_only_in_asynchronous_runs(ray_session, tiny_model, asynchronous):
    """Call A: 6 samples of up to 56 tokens; call B, sent after it: one token. In an asynchronous
    run B joins A's decode batch and ends first; in a synchronous one the worker keeps its calls
    in order, one at a time (its batches never depend on the clock), so A ends first."""
    pool = RolloutPool(tiny_model, RolloutConfig(num_workers=1, batch_size=8, max_new_tokens=56),
                       setup=EngineSetup(asynchronous=asynchronous))
    try:
        (a,) = pool.stream([request(1, "1+2=", "3", 6)], SamplingParams(temperature=0.9, max_new_tokens=56, seed=1))
        (b,) = pool.stream([request(2, "2+2=", "4", 1)], SamplingParams(temperature=0.9, max_new_tokens=1, seed=1))
        ended = {}

        def consume(shard, name):
            parts = [ray.get(ref) for ref in shard.stream]
            ended[name] = (time.monotonic(), parts)

        threads = [threading.Thread(target=consume, args=(s, n)) for s, n in ((a, "A"), (b, "B"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        longest = max(len(r.response_ids) for p in ended["A"][1] for r in p)
        assert longest > 8  # a tail B could wait for
        assert (ended["B"][0] < ended["A"][0]) == asynchronous
    finally:
        pool.shutdown()
