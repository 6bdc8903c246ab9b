"""How far ahead of the learner generation starts: the lookahead L, at most k = max_staleness.

Step j's generation may start once j - 1 - L steps are done (cluster/rl/scheduler.py), so a
sample trains at most L versions old. k is a bound, not a target: L = k (`eager`) pays off
only where generation started earlier makes the steps faster. Where it does not (generation
and learners share the same cores, or one step ahead already hides generation), every sample
still trains k versions old and learns less per step than fresher data would.

`adaptive` (controller.lookahead, the default) measures instead of assuming: it runs a chosen
depth and now and then one window (WINDOW steps, after k steps for the pipeline to reach
the new depth) at a neighbour depth, and compares the neighbour's mean step time with
the chosen depth's window just before: one step less is chosen when it is at most TOLERANCE
slower (fresher data at the same speed), one step more only when it is more than TOLERANCE
faster. It starts at k and steps down while that keeps up (down to 0, the synchronous order,
when overlap buys nothing); a neighbour's figure expires after EXPIRE steps and is then
measured again, so a run whose balance changes moves with it. The cost of looking: one
window at each neighbour depth every EXPIRE steps, cut to EARLY steps when the neighbour is
clearly slower. The run's first window is not measured (start-up steps are slower).

Step times come from the caller (the controller's wall clock, or the simulation's virtual
one): this object reads no clock, so the simulation runs the same rule.
"""

from __future__ import annotations

import statistics

MODES = ("adaptive", "eager")
WINDOW = 16  # steps per measurement
EARLY = 4  # a probe ends after this many steps once it is CLEARLY_SLOWER than the chosen depth
CLEARLY_SLOWER = 0.15  # (probing the synchronous order where stalls need hiding costs 2x per step)
TOLERANCE = 0.05  # a smaller depth is chosen while its mean step is at most 5% slower
EXPIRE = 200  # steps after which a depth's measurement is taken again


class Lookahead:
    def __init__(self, k: int, mode: str):
        if mode not in MODES:
            raise ValueError(f"controller.lookahead '{mode}' is not valid (valid: {', '.join(MODES)})")
        self.k, self.adaptive = k, mode == "adaptive"
        self.depth = k  # L, what steps_to_start uses
        self.chosen = k  # the depth the measurements favour (depth differs while a neighbour is measured)
        self.steps = 0  # step times observed
        self.means: dict[int, tuple[float, int]] = {}  # depth -> (mean step s, step it was measured at)
        self._window: list[float] = []
        # Steps not measured: after a change k (a step started under the old depth can train up to
        # k steps later); at the start one window more (warm-up, compilation are not typical).
        self._settle = k + WINDOW

    def observe(self, step_s: float) -> None:
        """One step's wall time (from the end of the previous step to the end of its weight sync)."""
        self.steps += 1
        if not self.adaptive or self.k == 0:
            return
        if self._settle:
            self._settle -= 1
            return
        self._window.append(step_s)
        if len(self._window) < WINDOW and not self._clearly_slower():
            return
        # The mean, not the median: throughput is steps over seconds, and the rare slow step (a
        # stalled reward, a long tail) is exactly what looking further ahead hides.
        self.means[self.depth] = (statistics.fmean(self._window), self.steps)
        self._window = []
        self._choose()

    def _clearly_slower(self) -> bool:
        """A probe already far slower than the chosen depth: no need to pay for a whole window."""
        if self.depth == self.chosen or len(self._window) < EARLY:
            return False
        return statistics.fmean(self._window) > self.means[self.chosen][0] * (1 + CLEARLY_SLOWER)

    def _choose(self) -> None:
        """After a window. A neighbour's window (a probe) is judged against the chosen depth's
        window just before it, so the two figures are minutes apart, not a drifting run apart:
        a smaller depth wins when it is at most TOLERANCE slower, a larger one when it is more
        than TOLERANCE faster. Then: a neighbour without a fresh figure is measured next,
        the smaller first; else the chosen depth runs on (each window refreshing its figure)."""
        probe, chosen = self.depth, self.chosen
        if probe != chosen:
            s_probe, s_chosen = self.means[probe][0], self.means[chosen][0]
            fresher_as_fast = probe < chosen and s_probe <= s_chosen * (1 + TOLERANCE)
            deeper_faster = probe > chosen and s_probe * (1 + TOLERANCE) < s_chosen
            if fresher_as_fast or deeper_faster:
                self.chosen = probe
        fresh = {d for d, (_, at) in self.means.items() if self.steps - at < EXPIRE}
        unknown = [d for d in (self.chosen - 1, self.chosen + 1) if 0 <= d <= self.k and d not in fresh]
        target = unknown[0] if unknown else self.chosen
        if target != self.depth:
            self.depth, self._settle = target, self.k

    def state(self) -> dict:
        return {"depth": self.depth, "chosen": self.chosen, "steps": self.steps,
                "means": {str(d): list(v) for d, v in self.means.items()}}

    def restore(self, state: dict) -> None:
        """A resumed run continues at the depth it had (its pipeline restarts: settle again)."""
        self.depth, self.chosen, self.steps = state["depth"], state["chosen"], state["steps"]
        self.means = {int(d): (s, at) for d, (s, at) in state["means"].items()}
        self._window, self._settle = [], self.k
