"""The cluster simulation (cluster/rl/simulate.py): the real Scheduler under latency models.
Numbers are simulated seconds, computed by hand where the case allows; no wall-clock asserts."""

from dataclasses import replace

import pytest

from cluster.rl.simulate import LatencyModel, SimSpec, WeightSyncModel, _Draws, simulate

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
    assert r.wall_s == pytest.approx(gen + train + m.sync.total_s, rel=1e-12)
    # engine 0 decodes for `gen`, engine 1 idles; both GPUs train
    assert r.utilisation == pytest.approx((gen + 2 * train) / (2 * r.wall_s), rel=1e-12)
    assert (r.samples, r.generated, r.mean_len_trained) == (2, 2, 100)


def test_synchronous_step_time_with_constant_lengths():
    m = CONSTANT
    r = simulate(spec(16, steps=3, model=m, drain=True))
    per_engine = 4 * 8  # 4 prompts x 8 samples on each GPU
    gen = per_engine * m.prefill_s + 1000 * (m.step_fixed_s + per_engine * m.step_per_seq_s)
    step = gen + train_s(m, 16 * per_engine, 1000, 16) + m.sync.total_s
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
        floor = 4 * (train_s(m, 64 * 8, 1000, 8) + m.sync.total_s)
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


def test_whole_call_engines_wait_for_the_previous_call():
    m = replace(CONSTANT, uniform_low=100, uniform_high=100, train_s_per_token=0.0, train_fixed_s=0.001,
                sync=WeightSyncModel(params=0, fixed_s=0.001))
    one = dict(gpus=2, placement="disaggregated", gen_gpus=1, max_staleness=1, steps=2, prompts_per_step=1,
               group_size=2)
    streaming = simulate(SimSpec(**one, model=m))
    whole_call = simulate(SimSpec(**one, model=replace(m, engine_calls="whole_call")))
    # Both steps' groups are dispatched at once: streaming, four sequences decode together.
    both = 4 * m.prefill_s + 100 * (m.step_fixed_s + 4 * m.step_per_seq_s)
    assert streaming.wall_s == pytest.approx(both + 2 * 0.002, rel=1e-9)
    # Whole call: step 2's call starts when step 1's has ended (at `call`). The first sync's
    # swap (1 ms) lands after that call's prefill and delays it by 1 ms; then train + sync.
    call = 2 * m.prefill_s + 100 * (m.step_fixed_s + 2 * m.step_per_seq_s)
    assert whole_call.wall_s == pytest.approx(2 * call + 0.001 + 0.002, rel=1e-9)

    # The `hf` engine's model streams each rollout back but also takes one call at a time:
    # with a call's samples all the same length that is the whole-call time.
    one_call = simulate(SimSpec(**one, model=replace(m, engine_calls="one_call")))
    assert one_call.wall_s == pytest.approx(whole_call.wall_s, rel=1e-12)


def test_doomed_groups_leave_their_engines_and_are_replaced():
    """`oldest` rule, k = 1, long tails: with aborts, groups that can no longer train stop at the
    sync and are replaced, so few complete groups are found stale later; their partial tokens
    count as generated. Without, they decode to the end and are dropped then."""
    base = spec(16, gen=8, k=1, steps=6, warmup_steps=2, drain=False)
    kept, aborted = simulate(replace(base, abort_doomed=False)), simulate(base)
    assert kept.aborted_groups == 0 and kept.stale_groups > 0
    assert aborted.aborted_groups > 0 and aborted.stale_groups < kept.stale_groups / 4
    assert aborted.staleness["max_seen"] <= 1 and aborted.samples == kept.samples
    finished = aborted.mean_len_generated * aborted.generated
    assert aborted.generated_tokens > finished  # the aborted samples' tokens so far


def test_the_newest_rule_trains_the_long_responses():
    """`newest`: nothing incomplete is doomed and a complete group trains within k of its last
    token, so the long responses train (older tokens with them) where `oldest` drops them."""
    base = spec(16, gen=8, k=1, steps=10, warmup_steps=4, drain=False)
    oldest, newest = simulate(base), simulate(replace(base, staleness_rule="newest"))
    assert newest.aborted_groups == newest.stale_groups == 0
    assert newest.mean_len_trained > 1.2 * oldest.mean_len_trained
    assert newest.staleness["max_seen"] <= 1 < newest.staleness["oldest_seen"]
    assert newest.useful_fraction > oldest.useful_fraction


# Round rates (GB/s) so that every stage is a small number of seconds: 1e9 parameters are
# 4 GB in fp32 and 2 GB in bf16.
ROUND = WeightSyncModel(params=1e9, train_bytes=2, net_gbps=4, pcie_gbps=8, copy_gbps=2, hash_gbps=1,
                        device_hash_gbps=4, fixed_s=0.5)


def test_object_store_sync_counts_every_pass_of_todays_protocol():
    m = replace(ROUND, protocol="object_store", receiver="vllm")
    # learner rank 0: gather 2 GB / 4 = 0.5; to CPU 4 / 8 = 0.5; .copy() 4 / 2 = 2;
    # describe (tobytes 2 + blake2b 4) = 6; ray.put 2
    assert m.phase_s("export") == pytest.approx(11.0)
    # engine host: pull 4 / 4 = 1; verify 6; vLLM describe 6; save_file 2; check (load 2 + 6) = 8
    assert m.phase_s("receive") == pytest.approx(23.0)
    # engine paused: receive_weights (load 2 + 6) = 8; host to GPU 0.5; fixed 0.5
    assert m.phase_s("swap") == pytest.approx(9.0)
    assert (m.total_s, m.hash_passes, m.wire_bytes) == (pytest.approx(43.0), 5, 4e9)
    hf = replace(m, receiver="hf")  # verify once, then copy to the engine's parameters
    assert (hf.phase_s("receive"), hf.phase_s("swap"), hf.total_s, hf.hash_passes) == (
        pytest.approx(7.0), pytest.approx(1.0), pytest.approx(19.0), 2)
    assert replace(hf, zero3=False).total_s == pytest.approx(18.5)  # no gather: ZeRO-2 holds whole params


def test_collective_sync_moves_the_training_dtype():
    m = replace(ROUND, protocol="collective")
    # export: fingerprint 2 GB / 4 = 0.5; swap: broadcast 2 / 4 = 0.5, fingerprint 0.5, fixed 0.5
    assert (m.phase_s("export"), m.phase_s("receive"), m.phase_s("swap")) == (
        pytest.approx(0.5), 0.0, pytest.approx(1.5))
    assert (m.hash_passes, m.wire_bytes) == (0, 2e9)
    assert replace(m, train_bytes=4).total_s == pytest.approx(3.5)  # fp32 training: 4 GB, 1 s per stage + 0.5


def test_colocated_step_pays_the_whole_sync():
    sync = replace(ROUND, protocol="object_store", receiver="hf")
    m = replace(CONSTANT, uniform_low=100, uniform_high=100, sync=sync)
    r = simulate(SimSpec(2, "colocated", 2, 0, 1, 1, 2, model=m))
    gen = 2 * m.prefill_s + 100 * (m.step_fixed_s + 2 * m.step_per_seq_s)
    assert r.wall_s == pytest.approx(gen + train_s(m, 2, 100, 2) + 19.0, rel=1e-12)


def test_engines_decode_through_export_and_receive_and_pause_for_the_swap():
    # One engine, decode steps of exactly 0.1 s, 100-token responses, 1 s of training;
    # sync: export 1 s (fingerprint), swap 2 s (broadcast 1 s + fingerprint 1 s).
    sync = WeightSyncModel(params=1e9, train_bytes=2, net_gbps=2, device_hash_gbps=2, fixed_s=0.0)
    m = replace(CONSTANT, uniform_low=100, uniform_high=100, step_fixed_s=0.1, step_per_seq_s=0.0, prefill_s=0.0,
                train_s_per_token=0.0, train_fixed_s=1.0, sync=sync)
    r = simulate(SimSpec(2, "disaggregated", 1, 1, 3, 1, 1, model=m))
    # t=0: steps 1 and 2 start (k=1) and end at 10 s; step 1 trains and syncs: 14 s. Step 3's
    # sample starts at 14 s, decodes 20 steps through step 2's training and export (14-16 s),
    # pauses for the swap (16-18 s), ends at 26 s under version 2; step 3 trains and syncs: 30 s.
    assert r.step_s == pytest.approx([14.0, 4.0, 12.0], rel=1e-9)
    assert r.partial_frac == pytest.approx(1 / 3)  # the sample that spans the swap


def test_length_matched_sync_replays_the_groups_async_trained():
    steps = dict(steps=3, warmup_steps=1, drain=False)
    a = simulate(spec(16, gen=8, k=2, **steps))
    plain = simulate(spec(16, **steps))
    matched = simulate(spec(16, replay=a.run_groups, **steps))
    assert matched.run_groups == a.run_groups and len(a.run_groups) == 4
    assert (matched.samples, matched.tokens) == (a.samples, a.tokens)
    assert a.stale_groups > 0 and a.mean_len_trained < plain.mean_len_trained  # async drops long groups
    assert matched.wall_s < plain.wall_s  # the same work without those long groups is quicker for sync too


def test_replayed_step_time_follows_the_replayed_lengths():
    m = replace(LatencyModel(), reward_median_s=0.0, controller_tick_s=0.0)
    r = simulate(SimSpec(1, "colocated", 1, 0, 2, 1, 2, model=m, replay=((5,), (2,))))
    draws = _Draws(m, 2, 0)
    expected = []
    for gid in (5, 2):
        short, long = sorted(draws.group(gid)[0])  # two sequences decode together, then one
        gen = 2 * m.prefill_s + short * (m.step_fixed_s + 2 * m.step_per_seq_s) + (long - short) * (
            m.step_fixed_s + m.step_per_seq_s)
        expected.append(gen + train_s(m, 1, short, 1) + train_s(m, 1, long, 1) - m.train_fixed_s + m.sync.total_s)
    assert r.step_s == pytest.approx(expected, rel=1e-9)
    assert r.tokens == sum(draws.group(5)[0]) + sum(draws.group(2)[0])


def test_replay_needs_the_synchronous_order():
    with pytest.raises(ValueError, match="max_staleness 0"):
        SimSpec(8, "disaggregated", 4, 1, 2, 32, 8, replay=((1,) * 32,) * 2)
    with pytest.raises(ValueError, match="32 groups for each of the 2 steps"):
        SimSpec(8, "colocated", 8, 0, 2, 32, 8, replay=((1,) * 32,))


def test_spec_rejects_impossible_placements():
    with pytest.raises(ValueError, match="colocated"):
        SimSpec(8, "colocated", 8, 1, 2, 32, 8)
    with pytest.raises(ValueError, match="gen_gpus"):
        SimSpec(8, "disaggregated", 8, 1, 2, 32, 8)


def test_the_adaptive_lookahead_trains_fresher_data_at_the_same_speed_where_the_learner_is_the_bottleneck():
    """14 engines, 2 learners, short responses: generation outruns training. Eager k = 2 trains
    every sample 2 versions old; adaptive measures depths 2, 1 and 0 (one window each: the
    synchronous order is 16% slower, generation no longer hides behind training) and settles at
    1: past its descent it trains every sample 1 version old at exactly eager's step time (the
    simulation feeds it simulated step times, as the controller feeds it real ones)."""
    m = replace(CONSTANT, uniform_low=100, uniform_high=100)
    eager, adaptive = (simulate(spec(16, gen=14, k=2, steps=60, model=m, lookahead=mode, warmup_steps=60))
                       for mode in ("eager", "adaptive"))
    assert eager.staleness["histogram"] == {"2": eager.samples}
    assert adaptive.staleness["histogram"] == {"1": adaptive.samples}  # steps 61-120, after the descent
    assert adaptive.step_s == pytest.approx(eager.step_s, rel=1e-9)
