"""RewardPool on local Ray: order, cache, timeouts, retries, lost workers, backpressure,
autoscaling, composition and shaping."""

from __future__ import annotations

import json
import math

import pytest

from reward import shaping
from reward.pool import RewardPool, RewardPoolError
from rollout.types import Rollout

PLUGINS = ["tests.reward.plugin_verifiers"]


def rollouts(texts, answers=None, group=lambda i: i // 4):
    answers = answers or ["12"] * len(texts)
    return [Rollout(group_id=group(i), prompt_id=i, sample_index=i % 4, prompt=f"p{group(i)}", answer=a, prompt_ids=(1,), response_ids=(3,), response_text=t, logprobs=(-0.1,), versions=(0,), finish_reason="stop")
            for i, (t, a) in enumerate(zip(texts, answers))]


@pytest.fixture
def pools(ray_session):
    made = []

    def make(**kw):
        made.append(RewardPool(**kw))
        return made[-1]
    yield make
    for p in made:
        p.shutdown()


def test_scores_in_order_with_cache(pools):
    pool = pools(num_workers=2, batch_size=3)
    texts = ["12", "13", "x", "12", " 12", "1 2", "12", "99"] * 2
    first = pool.score(rollouts(texts))
    assert [(r.group_id, r.sample_index) for r in first] == [(i // 4, i % 4) for i in range(16)]
    assert [r.reward for r in first] == pytest.approx([1.1, 0.1, 0.0, 1.1, 1.1, 1.1, 1.1, 0.1] * 2)
    assert [r.correct for r in first[:8]] == [True, False, False, True, True, True, True, False]
    m = pool.metrics()
    # within the call, identical (prompt, response, answer) samples may be computed twice; all later hits are cached
    assert m.samples == 16 and m.errors == 0 and m.timeouts == 0
    again = pool.score(rollouts(texts))
    assert [r.reward for r in again] == [r.reward for r in first]
    assert all(r.cached for r in again) and pool.metrics().cache_hits == m.cache_hits + 16
    assert dict(again[0].components) == {"arithmetic": 1.0, "format": 1.0}


def test_cache_can_be_off(pools):
    pool = pools(cache_size=0)
    pool.score(rollouts(["12"]))
    assert not pool.score(rollouts(["12"]))[0].cached and pool.metrics().cache_hits == 0


def test_verifier_error_is_recorded_not_retried(pools):
    pool = pools(fallback_score=-1.0, max_retries=2)
    res = pool.score(rollouts(["12", "12"], answers=["12", "twelve"]))
    assert res[0].reward == pytest.approx(1.1) and res[0].failure is None
    assert res[1].reward == -1.0 and res[1].failure.startswith("error: arithmetic: ValueError")
    assert res[1].attempts == 1 and pool.metrics().errors == 1 and pool.metrics().retries == 0


def test_timeout_retries_then_falls_back_and_the_worker_is_replaced(pools):
    pool = pools(verifier="test_hang", format_weight=0.0, timeout_s=0.3, max_retries=1, fallback_score=-2.0,
                 plugins=PLUGINS)
    before = pool.workers[0]
    res = pool.score(rollouts(["ok", "hang", "ok"]))
    assert [r.reward for r in res] == [1.0, -2.0, 1.0]
    assert res[1].failure.startswith("timeout") and res[1].attempts == 2
    m = pool.metrics()
    assert (m.timeouts, m.retries, m.errors) == (2, 1, 1)
    assert m.worker_restarts >= 2 and pool.workers[0] != before  # tainted workers were replaced
    assert pool.score(rollouts(["fine"]))[0].reward == 1.0


def test_a_retry_can_succeed(pools, tmp_path):
    pool = pools(verifier="test_slow_first", format_weight=0.0, timeout_s=0.3, max_retries=1, plugins=PLUGINS,
                 verifier_options={"test_slow_first": {"marker": str(tmp_path / "seen")}})
    res = pool.score(rollouts(["a"]))[0]
    assert (res.reward, res.failure, res.attempts) == (1.0, None, 2)


def test_lost_worker_is_replaced_and_other_samples_survive(pools):
    pool = pools(verifier="test_crash", format_weight=0.0, max_retries=1, fallback_score=-3.0, batch_size=1,
                 plugins=PLUGINS)
    res = pool.score(rollouts(["a", "die", "b", "c"]))
    assert [r.reward for r in res] == [1.0, -3.0, 1.0, 1.0]
    assert "worker lost" in res[1].failure and res[1].attempts == 2
    m = pool.metrics()
    # The crash and the crash of its retry at least (how many calls were on the dead actor, and
    # so how many replacements they meet, depends on timing); every replacement here is a fault.
    assert m.worker_restarts >= 2 and m.fault_restarts == m.worker_restarts
    assert m.reissued >= 1  # "die" once (calls queued behind it on the dead actor count too)


def test_faults_past_the_restart_budget_stop_the_pool(pools):
    pool = pools(verifier="test_crash", format_weight=0.0, max_retries=1, batch_size=1, plugins=PLUGINS,
                 max_restarts=1)
    assert pool.score(rollouts(["a"]))[0].reward == 1.0
    with pytest.raises(RewardPoolError, match=r"verifier worker failed .* budget is spent \(1 restarts, "
                                              r"cluster.max_actor_restarts=1\)"):
        pool.score(rollouts(["die"]))  # crashes its worker, then the fresh one its retry went to
    assert pool.metrics().fault_restarts == 1


def test_autoscaling_and_backpressure(pools):
    pool = pools(verifier="test_sleep", format_weight=0.0, components={"test_pid": 0.0}, num_workers=1,
                 max_workers=3, batch_size=2, max_pending=8, cache_size=0, plugins=PLUGINS)
    first = pool.submit(rollouts([f"a{i}" for i in range(24)]))
    second = pool.submit(rollouts([f"b{i}" for i in range(8)]))  # blocks until <= 8 samples are outstanding
    assert pool.outstanding() <= 8 + 8
    results = pool.collect(first) + pool.collect(second)
    assert all(r.reward == 1.0 and r.failure is None for r in results)
    pids = {dict(r.components)["test_pid"] for r in results}
    m = pool.metrics()
    assert m.workers_peak == 3 and len(pids) > 1  # the load was spread over the added workers
    # Compute is the verifier's 50 ms sleep; a sample's latency holds its compute, so every percentile
    # of latency is at least compute's; and 24 samples of 50 ms on at most 3 workers take >= 0.4 s,
    # so the last two of the first ticket waited >= 0.35 s in the queue (p99 lies between the top two).
    assert 0.05 <= m.compute_p50_s < 0.1 and m.latency_p50_s >= m.compute_p50_s
    assert m.latency_p99_s >= 0.35


def test_composition_clipping_and_par(pools):
    pool = pools(components={"format_boxed": 0.5}, clip_max=1.2, shaping="par", par_reference="group_mean")
    texts = ["12", r"\boxed{12}", "13", "x"]  # raw: 1.1, 0.5 (format_boxed only), 0.1, 0.0
    res = pool.score(rollouts(texts))
    raws = [r.raw_reward for r in res]
    assert raws == pytest.approx([1.1, 0.5, 0.1, 0.0])
    refs = shaping.group_means([0] * 4, raws)
    assert [r.reward for r in res] == pytest.approx([1 / (1 + math.exp(-(x - ref))) for x, ref in zip(raws, refs)])
    fixed = pools(shaping="par", par_reference_value=1.0, clip_min=0.05, cache_size=0)
    assert [r.reward for r in fixed.score(rollouts(["12", "x"]))] == pytest.approx(
        [shaping.sigmoid(0.1), shaping.sigmoid(0.05 - 1.0)])


def test_running_normalisation(pools):
    pool = pools(normalize="running", cache_size=0)
    res = pool.score(rollouts(["12", "12", "x", "x"]))  # raw 1.1, 1.1, 0, 0: mean .55, std .55
    assert [r.reward for r in res] == pytest.approx([1, 1, -1, -1], abs=1e-6)
    # A resumed run's pool continues the same statistics (JSON round trip), not fresh ones.
    resumed, fresh = pools(normalize="running", cache_size=0), pools(normalize="running", cache_size=0)
    resumed.restore(json.loads(json.dumps(pool.state())))
    later = rollouts(["12", "x", "x", "x"])
    expected = [r.reward for r in pool.score(later)]
    assert [r.reward for r in resumed.score(later)] == expected != [r.reward for r in fresh.score(later)]


@pytest.mark.parametrize("kw, message", [
    ({"verifier": "nope"}, "valid names"),
    ({"max_workers": 1, "num_workers": 2}, "reward.max_workers"),
    ({"components": {"judge": 1.0}}, "reward.judge_url"),
    ({"components": {"reward_model": 1.0}}, "reward.reward_model_path"),
    ({"clip_min": 1.0, "clip_max": 0.0}, "reward.clip_min"),
    ({"verifier_options": {"code": {}}}, "reward.verifier_options"),
    ({"colour": 1}, r"colour\n  Extra inputs are not permitted"),
])
def test_bad_settings_name_the_field(ray_session, kw, message):
    with pytest.raises((ValueError, KeyError), match=message):
        RewardPool(**kw)


def test_shaping_by_hand():
    assert shaping.par(0.0, 0.0) == 0.5 and shaping.par(2.0, 0.0) == pytest.approx(0.8807970779778823)
    assert shaping.sigmoid(-800) == pytest.approx(0.0) and shaping.sigmoid(800) == 1.0  # no overflow
    assert shaping.clip(3.0, None, 2.0) == 2.0 and shaping.clip(-3.0, -1.0, None) == -1.0
    assert shaping.group_means(["a", "a", "b", "a"], [1.0, 2.0, 5.0, 3.0]) == [2.5, 2.0, 5.0, 1.5]
    norm = shaping.RunningNorm()
    norm.update([1.0, 3.0])
    assert (norm.mean, norm.std, norm(3.0)) == (2.0, 1.0, pytest.approx(1.0))
    assert shaping.weighted_sum({"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 2.0}) == 4.5
