"""Engine vs learner on real actors: logprobs agree (fp32), weight sync is checked and takes effect."""

import os
import signal

import numpy as np
import pytest
import ray

from rollout.config import RolloutConfig
from rollout.pool import RolloutPool
from rollout.types import EngineError, SamplingParams
from rollout.transfer.buckets import HEADER_BYTES, WeightSyncError
from rollout.transfer.object_store import StoredUpdate
from trainer.batches import build_batch
from trainer.group import LearnerGroup
from trainer.learner import LearnerOptions
from trainer.types import LossSpec
from tests.rollout.requests import request

TEMP = 0.9


@pytest.fixture(scope="module")
def actors(ray_session, tiny_model):
    pool = RolloutPool(tiny_model, RolloutConfig(num_workers=2))
    learners = LearnerGroup(tiny_model, 1, LearnerOptions(zero_stage=0, lr=5e-3, micro_batch_size=32))
    pool.set_layout(learners.transfer_layout(2**16))  # 64 KB buckets: the tiny model takes several
    yield pool, learners
    learners.shutdown()
    pool.shutdown()


def sample(pool, seed):
    reqs = [request(g, f"{g}+{2 * g}=", str(3 * g), 4) for g in range(8)]
    return pool.generate(reqs, SamplingParams(temperature=TEMP, max_new_tokens=6, seed=seed))


def engine_vs_learner(pool, learners, seed):
    rollouts = sample(pool, seed)
    batch = build_batch(rollouts, pad_id=0)
    batch = batch.replace(advantages=batch.loss_mask.copy(), loss_weights=batch.loss_mask / batch.loss_mask.sum())
    learner = learners.logprobs(batch, TEMP)
    return rollouts, batch, np.abs((learner - batch.behaviour_logprobs) * batch.loss_mask).max()


def test_rollouts_are_tagged_and_well_formed(actors):
    pool, _ = actors
    rollouts = sample(pool, 1)
    assert len(rollouts) == 32
    assert [(r.group_id, r.sample_index) for r in rollouts[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    for r in rollouts:
        assert len(r.response_ids) == len(r.logprobs) == len(r.versions)
        assert set(r.versions) == {0} and r.prompt_ids[0] == 1  # BOS first
        assert (r.finish_reason == "stop") == (r.response_ids[-1] == 2)
        assert r.finish_reason == "stop" or len(r.response_ids) == 6  # cut only at max_new_tokens


def test_sampling_is_reproducible_and_greedy_is_deterministic(actors):
    pool, _ = actors
    assert [r.response_ids for r in sample(pool, 7)] == [r.response_ids for r in sample(pool, 7)]
    reqs = [request(0, "12+34=", "46", 3)]
    greedy = pool.generate(reqs, SamplingParams(temperature=0.0, max_new_tokens=6, seed=0))
    assert len({r.response_ids for r in greedy}) == 1


def test_engine_logprobs_match_learner_and_sync_takes_effect(actors):
    pool, learners = actors
    rollouts, batch, diff = engine_vs_learner(pool, learners, seed=11)
    assert diff < 1e-5, f"engine vs learner logprob difference {diff}"

    learners.train_step(batch, LossSpec(temperature=TEMP))  # weights move
    moved = np.abs((learners.logprobs(batch, TEMP) - batch.behaviour_logprobs) * batch.loss_mask).max()
    assert moved > 1e-3, "the update did not change the policy; the test would prove nothing"

    version = pool.versions()[0] + 1
    pool.update_weights(learners.export_weights(version, pool.layout))
    assert pool.versions() == [version, version]
    rollouts, _, diff = engine_vs_learner(pool, learners, seed=12)
    assert diff < 1e-5, f"after sync, engine vs learner logprob difference {diff}"
    assert {v for r in rollouts for v in r.versions} == {version}


def test_corrupted_transfer_is_rejected_and_weights_kept(actors):
    pool, learners = actors
    before = pool.versions()[0]
    good = learners.export_weights(before + 1, pool.layout)
    n = len(good.refs)
    assert n >= 3
    last = ray.get(good.refs[-1]).copy()
    last[HEADER_BYTES + 5] ^= 1  # one bit of the last bucket: the first two would load fine alone
    bad = StoredUpdate(good.version, (*good.refs[:-1], ray.put(last)))
    _, _, diff_before = engine_vs_learner(pool, learners, seed=13)
    with pytest.raises(WeightSyncError, match=f"v{before + 1} bucket {n - 1}/{n}: fingerprint mismatch"):
        pool.update_weights(bad)
    assert pool.versions() == [before, before]  # rejected before anything was loaded
    _, _, diff_after = engine_vs_learner(pool, learners, seed=13)
    assert diff_after == pytest.approx(diff_before)

    with pytest.raises(WeightSyncError, match=f"version {before + 2}, receiver expected {before + 1}"):
        pool.update_weights(StoredUpdate(before + 2, good.refs))  # one skipped
    with pytest.raises(WeightSyncError, match=f"v{before + 1} bucket 1/{n}: "):  # bucket 0 where 1 belongs
        pool.update_weights(StoredUpdate(before + 1, (good.refs[0], *good.refs[:1], *good.refs[2:])))
    pool.update_weights(good)  # the intact update still applies afterwards
    assert pool.versions() == [before + 1, before + 1]


def _kill(pool, i):
    os.kill(ray.get(pool.workers[i].pid.remote()), signal.SIGKILL)


def test_work_goes_to_the_worker_with_the_least_outstanding(actors):
    """balance() by hand, then on the pool's two workers: a call splits evenly; once worker 0 has
    returned its share and worker 1 has not, the next call goes to worker 0 alone, so no worker
    idles while the other has a queue."""
    from rollout.pool import balance

    reqs = [request(g, f"{g}+1=", str(g + 1), 2) for g in range(4)]
    assert balance(reqs, [0, 0], 0) == [[reqs[0], reqs[2]], [reqs[1], reqs[3]]]  # even: the round robin
    assert balance(reqs, [0, 0], 1) == [[reqs[1], reqs[3]], [reqs[0], reqs[2]]]
    assert balance(reqs, [6, 0], 0) == [[reqs[3]], [reqs[0], reqs[1], reqs[2]]]  # fill the idle one first

    pool, _ = actors
    params = SamplingParams(temperature=TEMP, max_new_tokens=4, seed=0)
    # The other tests here stream without Streaming's bookkeeping: this one keeps it, from zero.
    before = [0, 0]
    pool.outstanding = list(before)
    first = pool.stream([request(g, f"{g}+2=", str(g + 2), 1) for g in range(8)], params)
    assert sorted((s.worker, len(s.requests)) for s in first) == [(0, 4), (1, 4)]
    assert [o - b for o, b in zip(pool.outstanding, before)] == [4, 4]
    drained = next(s for s in first if s.worker == 0)
    for part in drained.stream:  # worker 0's share comes back; worker 1's is not read yet
        pool.arrived(0, len(ray.get(part)))
    second = pool.stream([request(g, f"{g}+3=", str(g + 3), 1) for g in range(20, 24)], params)
    assert [(s.worker, len(s.requests)) for s in second] == [(0, 4)]
    for shard in [s for s in first if s.worker == 1] + second:
        pool.arrived(shard.worker, sum(len(ray.get(part)) for part in shard.stream))
    assert pool.outstanding == before


def test_a_dead_worker_is_replaced_with_the_current_weights_and_its_samples_generated_again(actors):
    """Runs last in this module (it spends the pool's restart budget). The learners train past
    the weights on disk first, so a replacement that served before loading the current weights
    would show it in its logprobs."""
    pool, learners = actors
    pool.refill, pool.max_restarts = (lambda v: learners.export_weights(v, pool.layout)), 3
    rollouts, batch, _ = engine_vs_learner(pool, learners, seed=20)
    learners.train_step(batch, LossSpec(temperature=TEMP))
    version = pool.versions()[0] + 1
    pool.update_weights(learners.export_weights(version, pool.layout))
    before = sample(pool, 21)

    _kill(pool, 0)  # a generation call: worker 0's shard (4 groups of 4) again, on its replacement
    assert sample(pool, 21) == before  # same seeds, same (current) weights: same rollouts, logprobs included
    assert (pool.restarts, pool.reissued) == (1, 16) and pool.versions() == [version, version]
    _, _, diff = engine_vs_learner(pool, learners, seed=22)
    assert diff < 1e-5, f"a replaced worker's logprobs differ from the learner's by {diff}"

    _kill(pool, 1)  # a weight update: the replacement is started holding it
    learners.train_step(batch, LossSpec(temperature=TEMP))
    pool.update_weights(learners.export_weights(version + 1, pool.layout))
    assert pool.restarts == 2 and pool.versions() == [version + 1, version + 1]
    _, _, diff = engine_vs_learner(pool, learners, seed=22)
    assert diff < 1e-5, f"a worker replaced during an update differs from the learner by {diff}"

    # A stream: its worker died after two samples of group 0 had arrived; only the rest is redone.
    reqs = [request(g, f"{g}+{2 * g}=", str(3 * g), 4) for g in range(4)]
    params = SamplingParams(temperature=TEMP, max_new_tokens=6, seed=24)
    want = {(r.group_id, r.sample_index): r for r in pool.generate(reqs, params)}
    _kill(pool, 0)
    (shard,) = [s for s in pool.stream(reqs, params) if s.worker == 0]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(next(shard.stream))
    redo = pool.recover(shard, lambda gid: {0, 1} if gid == shard.requests[0].group_id else set(), "test")
    got = [r for s in redo for part in s.stream for r in ray.get(part)]
    assert pool.restarts == 3 and pool.reissued == 16 + 8 - 2
    assert sorted((r.group_id, r.sample_index) for r in got) == sorted(
        (req.group_id, k) for req in shard.requests for k in range(4) if (req is not shard.requests[0] or k >= 2))
    # The same tokens (per-sample seeds); a batch of 14 rows instead of 16 rounds a logprob
    # differently now and then (2.4e-7 seen), so those agree to fp32 rounding, not bitwise.
    for r in got:
        w = want[(r.group_id, r.sample_index)]
        assert (r.response_ids, r.versions, r.seed) == (w.response_ids, w.versions, w.seed)
        assert np.allclose(r.logprobs, w.logprobs, rtol=0, atol=1e-6)

    _kill(pool, 1)
    with pytest.raises(EngineError, match="restart budget is spent .*cluster.max_actor_restarts=3"):
        sample(pool, 23)

