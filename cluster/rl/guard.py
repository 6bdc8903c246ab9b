"""Numerics guardrails: a run gone wrong stops with a diagnosis instead of training on garbage.

Every step's row is checked against `controller.guard`. A metric past its limit for `patience`
consecutive steps stops the run (GuardError) naming the metric, the steps, the values and the
likely cause. A step whose loss or gradient was not finite is skipped by the learners (no
update; trainer/learner.py) and counted here; `nonfinite_steps` of them in a row stop the run.
The streaks are part of the loop's state, so a resumed run judges as the interrupted one would.
"""

from __future__ import annotations

import math

# metric (as the step's row names it) -> what it means when it is past its limit
DIAGNOSES = {
    "logprob_diff_max": "the learner's logprob of a sampled token differs from the engine's by this much: an "
                        "engine/learner mismatch (model.dtype, the attention kernel, a tokenizer or chat template "
                        "that differs) or an update that did not reach the engine (weight_sync); the mismatch "
                        "losses (algorithm.loss icepop, seq_mis, cispo) bound its effect",
    "is_weight_max": "importance weights blow up: the data is far off-policy (controller.max_staleness) or the "
                     "engine and the learner disagree (see logprob_diff_max); lower max_staleness, or mask such "
                     "tokens (algorithm.loss icepop or seq_mis)",
    "kl": "the policy moved far from the reference: the learning rate is too high (trainer.lr) or the KL penalty "
          "too weak (algorithm.kl_coef)",
    "grad_norm": "gradients explode: the learning rate is too high (trainer.lr), or the rewards or advantages "
                 "grew out of scale (reward.normalize, algorithm.advantage)",
}
NONFINITE = ("the loss or the gradients were not finite (each such step was skipped): a learning rate far too "
             "high (trainer.lr), an overflow in a 16-bit dtype (model.dtype), or a reward that is NaN")


class GuardError(RuntimeError):
    """A guarded metric stayed past its limit; the message says which, where and why."""


class Guard:
    def __init__(self, limits: dict[str, float], patience: int, nonfinite_steps: int):
        unknown = sorted(set(limits) - set(DIAGNOSES))
        if unknown:
            raise ValueError(f"controller.guard limits {unknown} are not guarded metrics (valid: {sorted(DIAGNOSES)})")
        self.limits, self.patience, self.nonfinite_steps = limits, patience, nonfinite_steps
        self.streaks: dict[str, list[list]] = {}  # metric -> [[step, value], ...] past its limit, in a row
        self.skipped = 0  # steps skipped for non-finite values, all run

    def check(self, step: int, row: dict) -> None:
        """Judge one step's row; raises GuardError when a streak reaches its length."""
        if row.get("nonfinite"):
            self.skipped += 1
            self._extend("nonfinite", step, row.get("loss", math.nan), self.nonfinite_steps, NONFINITE,
                         "in a row had a non-finite loss or gradient")
            return
        self.streaks.pop("nonfinite", None)
        for metric, limit in self.limits.items():
            value = row.get(metric)
            if value is None:  # not measured by this algorithm (e.g. kl without a reference)
                continue
            if math.isfinite(value) and value <= limit:
                self.streaks.pop(metric, None)
                continue
            self._extend(metric, step, value, self.patience, DIAGNOSES[metric],
                         f"in a row past controller.guard.{metric}={limit:g}")

    def _extend(self, metric: str, step: int, value: float, length: int, why: str, what: str) -> None:
        streak = self.streaks.setdefault(metric, [])
        streak.append([step, float(value)])
        if len(streak) >= length:
            values = ", ".join(f"step {s}: {v:.4g}" for s, v in streak)
            n = len(streak)
            raise GuardError(f"{metric}: {n} step{'s' if n > 1 else ''} {what} ({values}). Likely cause: {why}.")

    def state(self) -> dict:
        return {"streaks": self.streaks, "skipped": self.skipped}

    def restore(self, state: dict) -> None:
        self.streaks, self.skipped = state["streaks"], state["skipped"]
