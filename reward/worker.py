"""RewardWorker: the Ray actor body that runs registered verifiers on rollouts.

Every verifier call runs in a worker thread under the per-sample timeout. A thread that
overruns cannot be killed: it is abandoned, the sample gets a "timeout" failure, and the
reply says the worker is `tainted` so the pool replaces the actor (reclaiming the CPU the
runaway thread still burns) instead of letting stuck threads pile up.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import importlib
import os
import time

from reward.config import MODEL_COMPONENTS, RewardConfig
from reward.types import ComponentScore, WorkerReply
from reward.verifiers import VERIFIERS
from rollout.types import Rollout


def verifier_components(spec: RewardConfig) -> dict[str, callable]:
    """name -> verifier with its configured keyword options bound; unknown names raise,
    listing the valid ones."""
    for module in spec.plugins:  # user verifiers register themselves on import
        importlib.import_module(module)
    out = {}
    for name in spec.weights():
        if name in MODEL_COMPONENTS:
            continue
        fn = VERIFIERS.get(name)
        out[name] = functools.partial(fn, **spec.verifier_options.get(name, {}))
    return out


class RewardWorker:
    def __init__(self, spec: RewardConfig):
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # sympy/numpy must not spread over the cores
        self.spec = spec
        self.fns = verifier_components(spec)
        if spec.uses_sandbox:  # on every node: a worker where namespaces fail refuses to score code
            from reward.sandbox import require_isolation

            require_isolation(spec.allow_unisolated_sandbox)
        self._pool = cf.ThreadPoolExecutor(max_workers=1)
        self._tainted = False

    def _call(self, name: str, rollout: Rollout) -> ComponentScore:
        t0 = time.perf_counter()
        if name == "format" and rollout.finish_reason != "stop":
            return ComponentScore(name, 0.0)  # a cut-off response has no format to reward
        future = self._pool.submit(self.fns[name], rollout.response_text, rollout.answer)
        try:
            value = float(future.result(timeout=self.spec.timeout_s))
        except cf.TimeoutError:
            # Abandon the thread with its executor; the pool replaces this actor afterwards.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = cf.ThreadPoolExecutor(max_workers=1)
            self._tainted = True
            return ComponentScore(name, None, f"timeout: {name} exceeded {self.spec.timeout_s} s",
                                  time.perf_counter() - t0)
        except Exception as exc:  # a broken verifier must not crash the run; it is recorded
            return ComponentScore(name, None, f"error: {name}: {type(exc).__name__}: {exc}"[:500],
                                  time.perf_counter() - t0)
        return ComponentScore(name, value, None, time.perf_counter() - t0)

    def score_one(self, rollout: Rollout) -> tuple[ComponentScore, ...]:
        out = []
        for name in self.fns:
            out.append(self._call(name, rollout))
            if out[-1].failure:  # the sample falls back anyway; do not spend more time on it
                break
        return tuple(out)

    def score(self, rollouts: list[Rollout]) -> WorkerReply:
        return WorkerReply([self.score_one(r) for r in rollouts], self._tainted, os.getpid())
