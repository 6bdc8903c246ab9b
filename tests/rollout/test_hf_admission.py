"""Continuous admission in the `hf` engine: as rows finish, the call's next samples join the
running decode batch, so a long response never holds the rest back. The schedule is the slot
policy's to the step, and every rollout (tokens, logprobs, versions) is the one a batch large
enough for all gives."""

import pytest

from rollout.hf_engine import HFEngine
from rollout.types import SamplingParams
from tests.rollout.requests import request

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=20, seed=11, step=2)


def requests():
    # prompts of different lengths: joining rows are left-padded against the running batch
    return [request(g, f"{g}+{g * 37}=" + "1" * (g % 3), str(38 * g), 3) for g in range(6)]


def decode_steps(lengths: list[int], slots: int) -> int:
    """Decode steps of the slot policy: every active row gains a token a step; rows that finish
    leave and queued samples take their places for the next step."""
    queue, active, steps = list(lengths), [], 0
    while queue or active:
        while len(active) < slots and queue:
            active.append([queue.pop(0), 0])
        steps += 1
        for row in active:
            row[1] += 1
        active = [row for row in active if row[1] < row[0]]
    return steps


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HFEngine(tiny_model)


def run(engine, batch_size):
    calls = {"n": 0}

    def safe_point():
        calls["n"] += 1
        return 0

    out = {(r.group_id, r.sample_index): r for part in engine.stream(requests(), PARAMS, safe_point, batch_size)
           for r in part}
    return out, calls["n"] - 1  # one safe point before the first prefill, then one per step


def test_finished_rows_are_refilled_at_once_and_change_no_rollout(engine):
    whole, _ = run(engine, batch_size=18)
    slots, steps = run(engine, batch_size=4)
    assert slots.keys() == whole.keys() and len(whole) == 18
    for key, r in slots.items():
        assert r.response_ids == whole[key].response_ids and r.versions == whole[key].versions
        assert max(abs(a - b) for a, b in zip(r.logprobs, whole[key].logprobs)) < 1e-5
    lengths = [len(whole[(g, k)].response_ids) for g in range(6) for k in range(3)]
    assert len(set(lengths)) > 3  # the lengths differ: slots free up at different steps
    assert steps == decode_steps(lengths, 4)
    chunked = sum(max(lengths[i:i + 4]) for i in range(0, 18, 4))  # a batch of 4 at a time, each to its end
    assert steps < chunked
