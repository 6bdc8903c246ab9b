"""Doomed work aborted in the `hf` engine: rows of an aborted group leave the decode batch, its
queued samples never start, nothing of it is yielded, and every other rollout is the one the
same call gives without the abort. The floor rule (rollout/types.py: doomed) picks the groups
whose oldest token is below it, never a held-out prompt's."""

import numpy as np
import pytest

from rollout.hf_engine import HFEngine
from rollout.types import AbortResult, SamplingParams, doomed
from tests.rollout.requests import request

PARAMS = SamplingParams(temperature=0.9, max_new_tokens=24, seed=7)


def requests(group_ids, samples=2):
    return [request(g, f"{abs(g)}+{abs(g) + 5}=", str(2 * abs(g) + 5), samples) for g in group_ids]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HFEngine(tiny_model)


def run(engine, reqs, batch_size, at_call=None, action=None, version_at=None):
    """All rollouts of one streamed call; `action(engine)` runs inside safe point number `at_call`
    (1: before the prefill, then one before each decode step); from call `version_at` on the
    engine reports version 1 (a label: the weights stay)."""
    calls, out = {"n": 0}, {}

    def safe_point():
        calls["n"] += 1
        if calls["n"] == at_call:
            out["result"] = action(engine)
        return 1 if version_at is not None and calls["n"] >= version_at else 0

    rollouts = {(r.group_id, r.sample_index): r for part in engine.stream(reqs, PARAMS, safe_point, batch_size)
                for r in part}
    return rollouts, out.get("result")


def test_the_floor_rule_is_exact_and_spares_held_out_prompts():
    assert doomed({1: 0, 2: 1, 3: 2, -1: 0}, floor=1) == {1}
    assert doomed({1: 0}, floor=None) == set() and doomed({1: 1}, floor=1) == set()


def test_an_aborted_group_leaves_the_batch_and_the_queue_the_rest_unchanged(engine):
    reqs = requests([0, 1, 2, 3, 4])  # batch of 4 samples: groups 0-1 decode, 2-3 then 4 queue
    full, _ = run(engine, reqs, batch_size=4)
    at_call = 4  # before the third decode step: every row still decoding has 2 tokens
    got, result = run(engine, reqs, batch_size=4, at_call=at_call, action=lambda e: e.abort(None, (1, 4)))
    live = [k for k in range(2) if len(full[(1, k)].response_ids) > 2]  # group 1's rows still decoding
    assert live  # the abort reaches rows mid-decode
    assert result == AbortResult((1, 4), 2 * len(live))
    assert sorted(got) == sorted(key for key in full if key[0] not in (1, 4))
    for key, r in got.items():  # the batch lost rows, the survivors' samples did not change
        assert r.response_ids == full[key].response_ids
        np.testing.assert_allclose(r.logprobs, full[key].logprobs, atol=1e-5)


def test_the_floor_aborts_groups_started_below_it_not_those_queued_or_held_out(engine):
    reqs = requests([-1, 5, 6, 7])  # groups -1 and 5 decode first, 6 and 7 wait for a slot
    full, _ = run(engine, reqs, batch_size=4)
    # Tokens of version 0 until safe point 4, then version 1; at safe point 6 the floor moves to 1.
    got, result = run(engine, reqs, batch_size=4, at_call=6, action=lambda e: e.abort(1), version_at=4)
    assert result.groups == (5,) and 5 not in {g for g, _ in got}
    assert {key for key in got if key[0] in (-1, 6, 7)} == {key for key in full if key[0] in (-1, 6, 7)}
    assert all(min(got[(g, k)].versions) == 1 for g in (6, 7) for k in range(2))  # started after the floor
    assert min(got[(-1, 0)].versions) == 0  # a held-out prompt is never doomed


def test_a_group_named_before_its_call_starts_never_starts(engine):
    """The controller may abort a group whose call still waits in the worker's queue: nothing of
    it is here yet (so nothing is reported), and when the call comes, its samples are skipped."""
    assert engine.abort(5, (3,)) == AbortResult((), 0)
    got, _ = run(engine, requests([3, 8]), batch_size=4)
    assert sorted(got) == [(8, 0), (8, 1)]
