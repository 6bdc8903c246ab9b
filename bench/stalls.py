"""Reward-side stalls for the asynchronous benchmark and tests (a `reward.plugins` module).

`arithmetic_stalled` is the real arithmetic verifier plus a wall-clock wait per sample drawn
from a long-tailed lognormal (median `median_ms`, shape `sigma`, capped at `cap_ms`): the
latency profile of sandboxed code tests or a remote judge. It waits instead of burning CPU
on purpose: on a 2-core machine a CPU-heavy verifier would compete with generation and
training, and what this workload measures is whether the controller hides the latency.
The wait is a deterministic function of the sample, so runs are reproducible.
"""

from __future__ import annotations

import hashlib
import math
import time
from statistics import NormalDist

from reward.verifiers import VERIFIERS, arithmetic


def stall_seconds(response: str, answer: str, median_ms: float, sigma: float, cap_ms: float) -> float:
    digest = hashlib.blake2b(f"{response}\x00{answer}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64  # uniform in (0, 1)
    return min(median_ms * math.exp(sigma * NormalDist().inv_cdf(u)), cap_ms) / 1000.0


@VERIFIERS.register("arithmetic_stalled", "arithmetic, after a long-tailed wall-clock latency per sample "
                    "(benchmark workload: median_ms, sigma, cap_ms)")
def arithmetic_stalled(response: str, answer: str, median_ms: float = 20.0, sigma: float = 1.0,
                       cap_ms: float = 500.0) -> float:
    time.sleep(stall_seconds(response, answer, median_ms, sigma, cap_ms))
    return arithmetic(response, answer)
