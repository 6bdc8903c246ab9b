"""How far ahead of the learner generation starts: the lookahead L, at most k = max_staleness.

Step j's generation may start once j - 1 - L steps are done (cluster/rl/scheduler.py), so a
sample trains at most L versions old. k is a bound, not a target: L = k (`eager`) pays off
only where generation started earlier makes the steps faster. Where it does not (generation
and learners share the same cores, or generation is far faster than training), every sample
still trains k versions old and learns less per step than fresh data would.

`adaptive` (controller.lookahead, the default) measures instead of assuming: it keeps the
median step time of each depth it has run (a window of WINDOW steps, after SETTLE_STEPS steps
for the pipeline to reach the new depth) and runs the smallest depth whose median is within
TOLERANCE of the fastest measured. It starts at k and tries one step less after each window
while that keeps up (down to 0: the synchronous order, when overlap buys nothing); each
measurement expires after EXPIRE steps, and then the neighbour depths of the chosen one are
measured again (one window each), so a run whose balance changes moves with it. The cost of
looking: one window at a neighbour depth every EXPIRE steps.

Step times come from the caller (the controller's wall clock, or the simulation's virtual
one): this object reads no clock, so the simulation runs the same rule.
"""

from __future__ import annotations

import statistics

MODES = ("adaptive", "eager")
WINDOW = 16  # steps per measurement (a median: one slow step, say a checkpoint, does not move it)
TOLERANCE = 0.05  # a smaller depth is chosen while its median step is at most 5% slower
EXPIRE = 200  # steps after which a depth's measurement is taken again


class Lookahead:
    def __init__(self, k: int, mode: str):
        if mode not in MODES:
            raise ValueError(f"controller.lookahead '{mode}' is not valid (valid: {', '.join(MODES)})")
        self.k, self.adaptive = k, mode == "adaptive"
        self.depth = k  # L, what steps_to_start uses
        self.chosen = k  # the depth the measurements favour (depth differs while a neighbour is measured)
        self.steps = 0  # step times observed
        self.medians: dict[int, tuple[float, int]] = {}  # depth -> (median step s, step it was measured at)
        self._window: list[float] = []
        self._settle = self.settle_steps

    @property
    def settle_steps(self) -> int:
        """Steps after a change before its step times count: a step started under the old depth
        can train up to k steps later."""
        return self.k

    def observe(self, step_s: float) -> None:
        """One step's wall time (from the end of the previous step to the end of its weight sync)."""
        self.steps += 1
        if not self.adaptive or self.k == 0:
            return
        if self._settle:
            self._settle -= 1
            return
        self._window.append(step_s)
        if len(self._window) < WINDOW:
            return
        self.medians[self.depth] = (statistics.median(self._window), self.steps)
        self._window = []
        self._choose()

    def _choose(self) -> None:
        fresh = {d: s for d, (s, at) in self.medians.items() if self.steps - at < EXPIRE}
        fastest = min(fresh.values())
        self.chosen = min(d for d, s in fresh.items() if s <= fastest * (1 + TOLERANCE))
        # Measure a neighbour of the chosen depth that has no fresh figure, smaller first.
        unknown = [d for d in (self.chosen - 1, self.chosen + 1) if 0 <= d <= self.k and d not in fresh]
        target = unknown[0] if unknown else self.chosen
        if target != self.depth:
            self.depth, self._settle = target, self.settle_steps

    def state(self) -> dict:
        return {"depth": self.depth, "chosen": self.chosen, "steps": self.steps,
                "medians": {str(d): list(v) for d, v in self.medians.items()}}

    def restore(self, state: dict) -> None:
        """A resumed run continues at the depth it had (its pipeline restarts: settle again)."""
        self.depth, self.chosen, self.steps = state["depth"], state["chosen"], state["steps"]
        self.medians = {int(d): (s, at) for d, (s, at) in state["medians"].items()}
        self._window, self._settle = [], self.settle_steps
