"""The cluster simulation (cluster/simulate.py): the real Scheduler under latency models.
Numbers are simulated seconds, computed by hand where the case allows; no wall-clock asserts."""

from dataclasses import replace

import pytest

from cluster.simulate import LatencyModel, SimSpec, simulate

# Constant 1,000-token responses, instant rewards, a controller that looks at every event.
CONSTANT = LatencyModel(lengths="uniform", uniform_low=1000, uniform_high=1000, reward_median_s=0.0,
                        controller_tick_s=0.0)


def spec(gpus, gen=None, k=0, steps=4, model=None, **kw) -> SimSpec:
    placement = "colocated" if gen is None else "disaggregated"
    return SimSpec(gpus, placement, gpus if gen is None else gen, k, steps, 4 * gpus, 8,
                   model=model or LatencyModel(), **kw)


def train_s(m: LatencyModel, samples: int, length: int, learners: int) -> float:
    return samples * (m.prompt_len + length) * m.train_s_per_token / learners + m.train_fixed_s


def test_one_step_matches_the_latency_model_by_hand():
    m = replace(CONSTANT, uniform_low=100, uniform_high=100)
    r = simulate(SimSpec(2, "colocated", 2, 0, 1, 1, 2, model=m))  # one group of 2 on 2 GPUs
    gen = 2 * m.prefill_s + 100 * (m.step_fixed_s + 2 * m.step_per_seq_s)  # one engine, two sequences
    train = train_s(m, 2, 100, 2)
    assert r.wall_s == pytest.approx(gen + train + m.sync_s, rel=1e-12)
    # engine 0 decodes for `gen`, engine 1 idles; both GPUs train
    assert r.utilisation == pytest.approx((gen + 2 * train) / (2 * r.wall_s), rel=1e-12)
    assert (r.samples, r.generated, r.mean_len_trained) == (2, 2, 100)


def test_synchronous_step_time_with_constant_lengths():
    m = CONSTANT
    r = simulate(spec(16, steps=3, model=m, drain=True))
    per_engine = 4 * 8  # 4 prompts x 8 samples on each GPU
    gen = per_engine * m.prefill_s + 1000 * (m.step_fixed_s + per_engine * m.step_per_seq_s)
    step = gen + train_s(m, 16 * per_engine, 1000, 16) + m.sync_s
    assert r.step_s == pytest.approx([step] * 3, rel=1e-9)


def test_k0_on_disaggregated_engines_is_the_synchronous_order():
    sync = simulate(spec(16, steps=3))
    k0 = simulate(spec(16, gen=8, steps=3))
    assert k0.step_groups == sync.step_groups  # the same groups train at the same steps
    assert k0.step_groups == [tuple(range(1 + 64 * s, 65 + 64 * s)) for s in range(3)]
    for r in (sync, k0):
        assert r.staleness["histogram"] == {"0": r.samples}
        assert r.stale_groups == 0 and r.partial_frac == 0.0


@pytest.mark.parametrize("k", [1, 2])
def test_staleness_never_exceeds_k(k):
    r = simulate(spec(16, gen=8, k=k, steps=6))
    seen = {int(s) for s in r.staleness["histogram"]}
    assert max(seen) <= k and r.staleness["max_seen"] <= k
    assert seen == set(range(k + 1))  # generation did run ahead of the learner
    assert r.stale_groups > 0  # long-tailed groups went stale and were replaced


def test_constant_lengths_same_samples_and_a_speedup_the_model_allows():
    m = CONSTANT
    sync = simulate(spec(16, steps=4, model=m, drain=True))
    for k in (1, 2):
        r = simulate(spec(16, gen=8, k=k, steps=4, model=m, drain=True))
        assert r.samples == sync.samples == 4 * 64 * 8
        assert r.generated == r.samples and r.stale_groups == 0  # nothing wasted without a tail
        # The learners bound async: every step trains on 8 GPUs and syncs, one after another.
        floor = 4 * (train_s(m, 64 * 8, 1000, 8) + m.sync_s)
        assert floor <= r.wall_s < sync.wall_s
        assert 1.0 < sync.wall_s / r.wall_s <= sync.wall_s / floor


def test_long_tail_async_uses_the_gpus_better_at_64():
    model = replace(LatencyModel(), controller_tick_s=1.0)
    sync = simulate(spec(64, steps=3, warmup_steps=2, drain=False, model=model))
    r = simulate(spec(64, gen=32, k=2, steps=3, warmup_steps=2, drain=False, model=model))
    assert r.utilisation > sync.utilisation
    assert r.weighted_utilisation > 2 * sync.weighted_utilisation
    assert r.wall_s < sync.wall_s and r.samples == sync.samples
    assert r.mean_len_trained < sync.mean_len_trained  # long groups go stale: the price of the speed


def test_serial_calls_wait_for_the_previous_call():
    m = replace(CONSTANT, uniform_low=100, uniform_high=100, train_s_per_token=0.0, train_fixed_s=0.001,
                sync_fixed_s=0.001, model_bytes=0.0)
    one = dict(gpus=2, placement="disaggregated", gen_gpus=1, max_staleness=1, steps=2, prompts_per_step=1,
               group_size=2)
    batched = simulate(SimSpec(**one, model=m))
    serial = simulate(SimSpec(**one, model=replace(m, engine_calls="serial")))
    # Both steps' groups are dispatched at once: batched, four sequences decode together.
    both = 4 * m.prefill_s + 100 * (m.step_fixed_s + 4 * m.step_per_seq_s)
    assert batched.wall_s == pytest.approx(both + 2 * 0.002, rel=1e-9)
    # Serial: the second call starts when the first has ended, so step 2 waits ~one more call.
    assert serial.wall_s > 1.9 * batched.wall_s


def test_spec_rejects_impossible_placements():
    with pytest.raises(ValueError, match="colocated"):
        SimSpec(8, "colocated", 8, 1, 2, 32, 8)
    with pytest.raises(ValueError, match="gen_gpus"):
        SimSpec(8, "disaggregated", 8, 1, 2, 32, 8)
