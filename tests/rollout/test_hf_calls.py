"""Calls share the `hf` engine's decode batch: a call made while another runs joins the running
batch at the next decode step instead of waiting for the first call's long tail, whatever its
sampling settings, and every rollout is the one the call gives alone. A caller that stops
reading drops its rows without touching the other call's."""

import subprocess
import sys
import threading

import pytest

from rollout.hf_engine import HFEngine
from rollout.types import SamplingParams
from tests.rollout.requests import request

LONG = SamplingParams(temperature=1.0, max_new_tokens=40, seed=3, step=1)
SHORT = SamplingParams(temperature=0.0, max_new_tokens=3, seed=3, step=2)  # greedy: another temperature
JOIN_AT = 3  # the safe point (before decode step JOIN_AT) at which the second call is made


def long_requests():
    return [request(g, f"{g}+{g * 13}=", str(14 * g), 2) for g in range(4)]


def short_requests():
    return [request(g, f"{g}*2=", str(2 * g), 2) for g in range(10, 13)]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HFEngine(tiny_model)


def alone(engine, reqs, params):
    return {(r.group_id, r.sample_index): r for r in engine.generate(reqs, params, 0, 64)}


def read(parts, into: dict, done: list, steps: dict) -> None:
    for part in parts:
        into.update({(r.group_id, r.sample_index): r for r in part})
    done.append(steps["n"])  # the safe points passed when the call's stream ended


def together(engine, stop_long_after: int | None = None):
    """The long call, and the short one made at safe point JOIN_AT; each read on its own thread.
    Returns both calls' rollouts, the safe points each stream ended at, and the total."""
    steps, calls, got = {"n": 0}, {}, {"long": {}, "short": {}}
    ended = {"long": [], "short": []}

    def safe_point():
        steps["n"] += 1
        if steps["n"] == JOIN_AT:
            calls["short"] = engine.stream(short_requests(), SHORT, safe_point, 64)
            threading.Thread(target=read, args=(calls["short"], got["short"], ended["short"], steps)).start()
        elif steps["n"] > JOIN_AT and "short_done" not in steps and not any(  # seen by the engine, not a reader
                s.group_id >= 10 for s in engine._active) and not any(r.group_id >= 10 for r, _, _ in engine._queued):
            steps["short_done"] = steps["n"]
        return 0

    parts = engine.stream(long_requests(), LONG, safe_point, 64)
    if stop_long_after is not None:  # read one part, then stop reading
        got["long"].update({(r.group_id, r.sample_index): r for r in next(parts)})
        while "short" not in calls:
            threading.Event().wait(0.01)
        parts.close()
        ended["long"].append(steps["n"])
    else:
        read(parts, got["long"], ended["long"], steps)
    while not ended["short"]:
        threading.Event().wait(0.01)
    ended["short_done"] = steps.get("short_done")
    return got, ended


def same(a, b):
    assert a.response_ids == b.response_ids and a.versions == b.versions
    assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs)), default=0.0) < 1e-5


def test_a_call_joins_the_running_batch_and_each_rollout_is_its_own(engine):
    want_long, want_short = alone(engine, long_requests(), LONG), alone(engine, short_requests(), SHORT)
    long_lengths = [len(r.response_ids) for r in want_long.values()]
    short_lengths = [len(r.response_ids) for r in want_short.values()]
    assert max(long_lengths) > JOIN_AT + max(short_lengths) + 2  # a tail the short call could wait for
    got, ended = together(engine)
    assert got["long"].keys() == want_long.keys() and got["short"].keys() == want_short.keys()
    for key, r in got["long"].items():
        same(r, want_long[key])
    for key, r in got["short"].items():
        same(r, want_short[key])
    # The short call's rows joined after decode step JOIN_AT - 1 and ran alongside the long
    # call's: its stream ended while the long call's tail was still decoding, and the whole
    # took the long call's steps alone (one call after the other: the sum).
    assert ended["short"][0] < ended["long"][0]
    assert ended["short_done"] <= JOIN_AT + max(short_lengths) + 1  # the engine's step, not the reader's
    assert ended["long"][0] == max(long_lengths) + 1  # its safe points: one before the prefill, one a step


def test_a_call_no_longer_read_leaves_the_batch_and_the_other_call_is_unchanged(engine):
    want_short = alone(engine, short_requests(), SHORT)
    got, _ = together(engine, stop_long_after=1)
    assert got["short"].keys() == want_short.keys()
    for key, r in got["short"].items():
        same(r, want_short[key])
    for _ in range(500):  # the decode thread ends once nothing is queued or decoding
        if engine._loop is None:
            break
        threading.Event().wait(0.01)
    assert engine._loop is None and engine._active == () and engine._queued == ()


def test_a_process_exits_cleanly_right_after_a_call(engine, tiny_model):
    """The decode thread may still be winding down when the last rollout is read: the process
    must not be aborted at exit. A daemon thread would be killed at exit wherever it is, and
    the process then aborts (exit code 134, about one exit in three here): the thread is not one."""
    parts = engine.stream(long_requests(), LONG, lambda: 0, 64)
    next(parts)
    assert engine._loop is not None and not engine._loop.daemon
    parts.close()
    script = ("from rollout.hf_engine import HFEngine; from rollout.types import SamplingParams; "
              "from tests.rollout.requests import request; "
              f"e = HFEngine({tiny_model!r}); "
              "print(len(e.generate([request(1, '1+2=', '3', 4)], SamplingParams(max_new_tokens=8), 0)))")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout.strip()) == (0, "4"), done.stderr[-500:]


def test_the_growing_cache_writes_in_place_and_changes_no_rollout(engine, monkeypatch):
    """Each decode step writes its position into the layer's buffer (transformers' DynamicLayer
    concatenates, copying the whole cache every step): over a 40-token response the buffers are
    reallocated a handful of times (capacity doubles), and every rollout is bitwise the one the
    concatenating cache gives."""
    import rollout.hf_engine as hf

    made = []
    rebuffer = hf._GrowingLayer._rebuffer

    def counted(self, *args):
        made.append(self)
        return rebuffer(self, *args)

    monkeypatch.setattr(hf._GrowingLayer, "_rebuffer", counted)
    params = SamplingParams(temperature=1.0, max_new_tokens=40, min_new_tokens=40, seed=4)
    growing = engine.generate(long_requests(), params, 0, 64)
    layers = len(set(map(id, made)))
    assert layers == len(engine.model.model.layers)
    assert len(made) <= 3 * layers  # prefill, then capacity doubling: 40 steps, at most 3 buffers a layer
    monkeypatch.setattr(hf, "GROWING_CACHE", False)
    plain = engine.generate(long_requests(), params, 0, 64)
    assert [(r.response_ids, r.logprobs) for r in growing] == [(r.response_ids, r.logprobs) for r in plain]
