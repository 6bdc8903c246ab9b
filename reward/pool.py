"""RewardWorker actors scoring rollouts with registered verifiers, and the RewardPool."""

from __future__ import annotations

import concurrent.futures as cf
import time

import ray

from reward.types import RewardResult
from reward.verifiers import VERIFIERS
from rollout.types import Rollout


class RewardWorker:
    """Ray actor body. Each verifier call runs under a per-sample timeout; a call that
    raises or times out gets the fallback score and a recorded failure reason."""

    def __init__(self, verifier: str, format_weight: float, timeout_s: float, fallback_score: float):
        self.correct_fn = VERIFIERS.get(verifier)
        self.format_fn = VERIFIERS.get("format")
        self.format_weight = format_weight
        self.timeout_s = timeout_s
        self.fallback = fallback_score
        self._pool = cf.ThreadPoolExecutor(max_workers=1)

    def _call(self, fn, rollout: Rollout) -> float:
        future = self._pool.submit(fn, rollout.response_text, rollout.answer)
        try:
            return float(future.result(timeout=self.timeout_s))
        except cf.TimeoutError:
            # A thread cannot be killed: abandon it with its executor and start a fresh one.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = cf.ThreadPoolExecutor(max_workers=1)
            raise TimeoutError(f"verifier exceeded {self.timeout_s} s") from None

    def score_one(self, rollout: Rollout) -> RewardResult:
        t0 = time.perf_counter()
        try:
            correct = self._call(self.correct_fn, rollout)
            fmt = self._call(self.format_fn, rollout) if rollout.finish_reason == "stop" else 0.0
        except TimeoutError as exc:
            return self._failed(rollout, f"timeout: {exc}", t0)
        except Exception as exc:  # a broken verifier must not crash the run; it is recorded
            return self._failed(rollout, f"error: {type(exc).__name__}: {exc}", t0)
        return RewardResult(rollout.group_id, rollout.sample_index, correct + self.format_weight * fmt,
                            correct == 1.0, fmt == 1.0, None, time.perf_counter() - t0)

    def _failed(self, rollout: Rollout, reason: str, t0: float) -> RewardResult:
        return RewardResult(rollout.group_id, rollout.sample_index, self.fallback, False, False, reason,
                            time.perf_counter() - t0)

    def score(self, rollouts: list[Rollout]) -> list[RewardResult]:
        return [self.score_one(r) for r in rollouts]


class RewardPool:
    def __init__(self, num_workers: int, verifier: str, format_weight: float, timeout_s: float,
                 fallback_score: float):
        VERIFIERS.get(verifier)  # unknown names fail here, naming the valid ones
        actor = ray.remote(RewardWorker).options(num_cpus=0)
        self.workers = [actor.remote(verifier, format_weight, timeout_s, fallback_score)
                        for _ in range(num_workers)]

    def score(self, rollouts: list[Rollout]) -> list[RewardResult]:
        n = len(self.workers)
        parts = ray.get([w.score.remote(rollouts[i::n]) for i, w in enumerate(self.workers)])
        results = [None] * len(rollouts)
        for i, part in enumerate(parts):
            results[i::n] = part
        return results

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
