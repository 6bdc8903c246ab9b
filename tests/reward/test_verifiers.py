import time

import pytest

from reward.pool import RewardWorker
from reward.verifiers import VERIFIERS, normalize_number
from rollout.types import Rollout


@pytest.mark.parametrize("response, answer, score", [
    ("168", "168", 1.0), (" 0168 ", "168", 1.0), ("1,234", "1234", 1.0), ("work #### 57", "57", 1.0),
    ("167", "168", 0.0), ("16 8x", "168", 0.0), ("", "168", 0.0), ("-5", "-5", 1.0),
])
def test_arithmetic(response, answer, score):
    assert VERIFIERS.get("arithmetic")(response, answer) == score


def test_format():
    assert VERIFIERS.get("format")("42", "x") == 1.0
    assert VERIFIERS.get("format")("42+", "x") == 0.0
    assert normalize_number("+007") == "7"


def rollout(text, answer="12", finish="stop"):
    return Rollout(1, 0, 0, "5+7=", answer, (1,), (3,), text, (-0.1,), (0,), finish)


def test_worker_scores_and_format_needs_a_finished_response():
    w = RewardWorker("arithmetic", format_weight=0.1, timeout_s=1.0, fallback_score=-1.0)
    ok = w.score_one(rollout("12"))
    assert (ok.reward, ok.correct, ok.format_ok, ok.failure) == (pytest.approx(1.1), True, True, None)
    cut = w.score_one(rollout("12", finish="length"))
    assert (cut.reward, cut.format_ok) == (1.0, False)


def test_worker_records_verifier_errors_with_fallback():
    w = RewardWorker("arithmetic", format_weight=0.1, timeout_s=1.0, fallback_score=-1.0)
    bad = w.score_one(rollout("12", answer="twelve"))  # the reference is not an integer: the verifier raises
    assert bad.reward == -1.0 and not bad.correct
    assert bad.failure.startswith("error: ValueError") and "twelve" in bad.failure


def test_worker_times_out_slow_verifier_and_keeps_working():
    w = RewardWorker("arithmetic", format_weight=0.0, timeout_s=0.2, fallback_score=-1.0)
    real = w.correct_fn
    w.correct_fn = lambda response, answer: time.sleep(5) or 1.0  # a verifier that hangs
    t0 = time.perf_counter()
    slow = w.score_one(rollout("12"))
    assert time.perf_counter() - t0 < 2.0
    assert slow.failure.startswith("timeout") and slow.reward == -1.0
    w.correct_fn = real
    assert w.score_one(rollout("12")).correct  # a fresh thread serves the next sample
