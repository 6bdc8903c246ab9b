"""The bookkeeping of the controller loop, with no Ray and no clock.

Which steps' generation may start (the staleness budget), groups assembled as their members
are scored (streaming), dynamic sampling, and which groups train next. The controller
(cluster/rl/controller.py) drives it with real actors; cluster/rl/simulate.py drives the same
object with latency models, so the simulation schedules exactly as a real run does.

Step j's generation may start once j - 1 - L steps are done, L (the lookahead) at most k =
max_staleness; with k = 0 that is the synchronous order. A step moves the policy version by at
most one (a critic warm-up step or an online-DPO step without pairs moves it by none), so data
started then is at most L <= k versions old when step j trains. The gate still checks every
sample at admission (a group can wait long enough to go stale; it is then dropped, counted,
and replaced).

How far ahead generation starts, L, is the lookahead (cluster/rl/lookahead.py): `eager` keeps
L = k; `adaptive` measures step times (the caller passes each to `lookahead.observe`) and keeps
the smallest L that is as fast as deeper ones, so samples are no older than speed requires.

The ledger: every group id is issued once (`expect`) and ends once, with the outcome decided
where the scheduler decides it: trained (`take`), filtered:tied (dynamic sampling, `scored`),
filtered:rescued (every member failed and the rescue hook takes it: its prompt is generated
again with a hint, `scored`),
dropped:stale (judged against the version of the last `take`), dropped:aborted (stopped while
generating because it could no longer meet the bound: `abort`), or, when the run is over
(`close`), dropped:incomplete (some member never scored) / dropped:unused (complete and fresh,
never needed). Issuing a group twice, ending it twice, or scoring a sample of a group that is
not assembling is a LedgerError: a controller bug, never tolerated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Callable, Optional

from cluster.rl.gate import StalenessGate, Group
from cluster.rl.lookahead import Lookahead
from reward.types import RewardResult
from rollout.types import Rollout

if TYPE_CHECKING:
    from cluster.rl.budget import Downsampler


DOWNSAMPLED = "dropped:downsampled"  # tokens of samples generated and left out by down-sampling (not a group outcome)


class DynamicSamplingError(RuntimeError):
    """Every group tied for too long: dynamic sampling cannot fill a batch."""


class LedgerError(RuntimeError):
    """A group issued twice, ended twice, or scored when it is not assembling: a bug."""


class Outcome(str, Enum):
    """How a group ended (the ledger's value; its string is what summaries and logs show)."""

    TRAINED = "trained"
    TIED = "filtered:tied"  # dynamic sampling: every member's reward equal, zero advantage
    RESCUED = "filtered:rescued"  # every member failed: generated again after a hint (cluster/rl/rescue.py)
    STALE = "dropped:stale"  # complete, but more than k versions old when judged (replaced)
    ABORTED = "dropped:aborted"  # stopped while generating: it could never meet the bound (replaced)
    INCOMPLETE = "dropped:incomplete"  # the run ended before every member was scored
    UNUSED = "dropped:unused"  # complete and fresh; the run ended before a step needed it
    INTERRUPTED = "dropped:interrupted"  # open at the checkpoint a run resumed from (replaced)


@dataclass
class _Assembly:
    size: int
    rollouts: dict[int, Rollout] = field(default_factory=dict)
    rewards: dict[int, RewardResult] = field(default_factory=dict)

    def group(self, gid: int) -> Optional[Group]:
        if len(self.rewards) < self.size:
            return None
        order = sorted(self.rewards)
        return Group(gid, tuple(self.rollouts[i] for i in order), tuple(self.rewards[i] for i in order))


class Scheduler:
    def __init__(self, steps: int, prompts_per_step: int, group_size: int, max_staleness: int,
                 gate: StalenessGate, dynamic_sampling: bool = False, resample_limit: int = 8,
                 lookahead: str = "adaptive", downsample: Optional["Downsampler"] = None,
                 rescue: Optional[Callable[[Group], bool]] = None):
        if (gate.max_staleness, gate.group_size) != (max_staleness, group_size):
            raise ValueError(f"the gate checks max_staleness {gate.max_staleness} and group size {gate.group_size}; "
                             f"the scheduler was given {max_staleness} and {group_size}")
        self.steps, self.per_step, self.group_size = steps, prompts_per_step, group_size
        self.k = max_staleness
        self.gate = gate
        self.dynamic_sampling = dynamic_sampling
        self.resample_limit = resample_limit  # filtered groups allowed per step, in batches
        self.downsample = downsample  # a complete group -> the samples of it that train (cluster/rl/budget.py)
        self.rescue = rescue  # a complete group -> True when it is generated again with a hint instead
        self.started_steps = 0  # steps whose P groups were dispatched
        self.lookahead = Lookahead(max_staleness, lookahead)  # L: how many steps ahead generation starts
        self.ledger: dict[int, Outcome] = {}  # group id -> how it ended
        self._counts: Counter[Outcome] = Counter()
        self._open: set[int] = set()  # issued, not ended: assembling or ready
        self._trains: dict[int, int] = {}  # open group id -> the samples it trains on (the gate checks it)
        self._closed = False
        self._filtered_this_step = 0
        self._rescued_this_step = 0
        self._version = 0  # the policy version of the last take(): what "stale" is judged against
        self._assembling: dict[int, _Assembly] = {}
        self.ready: list[Group] = []
        # Response tokens of the complete groups, by outcome (goodput: trained vs thrown away), and
        # of the groups dropped since the last take() ([tokens, samples]: the length bias per step).
        self.tokens: Counter[str] = Counter()
        # + tokens of aborted groups (partial responses) and of samples left out by down-sampling
        self._dropped_since_take = [0, 0, 0]
        self._completed: list[Group] = []  # complete groups (kept or not) since take_completed()
        # groups that ended untrained while the last take() filled: filtered for tied rewards, or
        # rescued (every sample failed): rollouts spent without signal (cluster/rl/prompt_stats.py)
        self.filtered_for_last_take = 0

    @property
    def filtered(self) -> int:
        """Groups dropped by dynamic sampling (rewards tied)."""
        return self._counts[Outcome.TIED]

    @property
    def rescued(self) -> int:
        """Groups whose every sample failed, generated again after a hint."""
        return self._counts[Outcome.RESCUED]

    @property
    def stale_groups(self) -> int:
        """Complete groups dropped at admission (too stale) and replaced."""
        return self._counts[Outcome.STALE]

    @property
    def aborted_groups(self) -> int:
        """Groups stopped while generating (doomed to staleness) and replaced."""
        return self._counts[Outcome.ABORTED]

    # ---- what to generate ----

    def steps_to_start(self, steps_done: int) -> list[int]:
        """Steps whose generation may start now (each: P new groups)."""
        last = min(self.steps, steps_done + 1 + self.lookahead.depth)
        start = list(range(self.started_steps + 1, last + 1))
        self.started_steps = max(self.started_steps, last)
        return start

    def take_owed(self) -> int:
        """Replacement groups to dispatch now: what the steps started still need (P each, less
        those trained) beyond every group still open, generating or waiting. A group that ends
        without training (tied, stale, aborted) is replaced only when the open ones no longer
        cover the started steps: replacing a drop out of a surplus would keep the surplus, and
        its oldest groups would go stale and be replaced again, step after step."""
        needed = (self.started_steps - self._counts[Outcome.TRAINED] // self.per_step) * self.per_step
        return max(0, needed - len(self._open))

    def expect(self, group_id: int, size: Optional[int] = None) -> None:
        """Issue a group of `size` samples (default: the group size; a rollout budget deals others,
        cluster/rl/budget.py): its members will be scored, then it ends once (the ledger)."""
        if self._closed:
            raise LedgerError(f"group {group_id} issued after the scheduler was closed")
        if group_id in self._open or group_id in self.ledger:
            state = self.ledger.get(group_id, "open")
            raise LedgerError(f"group {group_id} issued twice (it is {state})")
        size = size or self.group_size
        self._open.add(group_id)
        self._assembling[group_id] = _Assembly(size)
        self._trains[group_id] = self.downsample.kept(size) if self.downsample else size

    # ---- what came back ----

    def scored(self, rollout: Rollout, reward: RewardResult) -> Optional[Group]:
        """A scored sample; returns its group once the group is complete (and kept)."""
        gid, index = rollout.group_id, rollout.sample_index
        if (reward.group_id, reward.sample_index) != (gid, index):
            raise ValueError(f"reward for {reward.group_id}/{reward.sample_index} paired with rollout {gid}/{index}")
        a = self._assembling.get(gid)
        if a is None:
            state = self.ledger.get(gid, "complete" if gid in self._open else "never issued")
            raise LedgerError(f"sample {gid}/{index} scored, but its group is not assembling ({state})")
        if not 0 <= index < a.size or index in a.rewards:
            raise LedgerError(f"sample {gid}/{index} scored twice or out of range (group size {a.size})")
        a.rollouts[index], a.rewards[index] = rollout, reward
        group = a.group(gid)
        if group is None:
            return None
        del self._assembling[gid]
        self._completed.append(group)
        if self.rescue is not None and self.rescue(group):
            self._end(gid, Outcome.RESCUED, group)  # its replacement (take_owed) is the hinted retry
            self._rescued_this_step += 1
            return None
        if self.dynamic_sampling and len({r.reward for r in group.rewards}) == 1:
            self._end(gid, Outcome.TIED, group)  # zero advantage for every member: it would teach nothing
            self._filtered_this_step += 1
            if self._filtered_this_step > self.resample_limit * self.per_step:
                raise DynamicSamplingError(
                    f"dynamic sampling dropped {self._filtered_this_step} groups whose rewards all tied without "
                    f"filling one step of {self.per_step}; the task is too easy or too hard for the policy "
                    "(set algorithm.dynamic_sampling: false, or raise algorithm.dynamic_sampling_limit)")
            return None
        if self.downsample is not None:
            group = self._downsampled(group)
        if self._drop_if_stale(group):
            return None
        self.ready.append(group)
        return group

    def abort(self, group_id: int, tokens: int) -> None:
        """A group stopped while its members were generating, because one of them started at a
        version that can no longer train (cluster/rl/streaming.py): it ends dropped:aborted (its
        replacement comes through take_owed), and the `tokens` its members had generated are wasted."""
        if group_id not in self._assembling:
            state = self.ledger.get(group_id, "complete" if group_id in self._open else "never issued")
            raise LedgerError(f"group {group_id} aborted, but it is not generating ({state})")
        del self._assembling[group_id]
        self._end(group_id, Outcome.ABORTED)
        self.wasted(tokens)

    def _downsampled(self, group: Group) -> Group:
        """The group's samples that train; the tokens of the rest are generated and not trained."""
        kept = self.downsample(group)
        tokens = sum(len(r.response_ids) for r in group.rollouts) - sum(len(r.response_ids) for r in kept.rollouts)
        self.tokens[DOWNSAMPLED] += tokens
        self._dropped_since_take[2] += tokens
        return kept

    def wasted(self, tokens: int) -> None:
        """Response tokens of aborted groups (also those that arrived after the abort)."""
        self.tokens[Outcome.ABORTED.value] += tokens
        self._dropped_since_take[2] += tokens

    # ---- what trains next ----

    def take(self, version: int) -> Optional[list[Group]]:
        """P groups for the step that trains `version`, oldest data first; None until there are
        enough. Cheap when there is nothing to do (the loop asks after every arrival): waiting
        groups are re-judged only when the version moves, arrivals are judged as they come."""
        if version != self._version:
            self._version = version
            self.ready = [g for g in self.ready if not self._drop_if_stale(g)]
        if len(self.ready) < self.per_step:
            return None
        self.ready.sort(key=lambda g: (self._judged(g), g.group_id))
        picked, self.ready = self.ready[: self.per_step], self.ready[self.per_step :]
        groups = self.gate.admit([r for g in picked for r in g.rollouts], [r for g in picked for r in g.rewards],
                                 version, {g.group_id: self._trains[g.group_id] for g in picked})
        if len(groups) != len(picked):
            raise AssertionError("the gate refused a group the scheduler found fresh (a bug)")
        for g in groups:
            self._end(g.group_id, Outcome.TRAINED, g)
        self.filtered_for_last_take = self._filtered_this_step + self._rescued_this_step
        self._filtered_this_step = self._rescued_this_step = 0
        return sorted(groups, key=lambda g: g.group_id)

    def take_completed(self) -> list[Group]:
        """Every group completed (all members scored) since the last call, whatever became of
        it: trained, filtered, dropped stale (cluster/rl/prompt_stats.py counts them all)."""
        done, self._completed = self._completed, []
        return done

    def take_dropped(self) -> tuple[int, int, int]:
        """Since the last call: (response tokens, samples) of the complete groups dropped (stale
        or tied), and the response tokens of the groups aborted while generating and of the
        samples down-sampling left out."""
        dropped, self._dropped_since_take = tuple(self._dropped_since_take), [0, 0, 0]
        return dropped

    def _drop_if_stale(self, group: Group) -> bool:
        """A group older than k versions goes through the gate (which drops and counts
        it) and is replaced by a new prompt."""
        if self._version - self._judged(group) <= self.k:
            return False
        self.gate.admit(list(group.rollouts), list(group.rewards), self._version,
                        {group.group_id: self._trains[group.group_id]})
        self._end(group.group_id, Outcome.STALE, group)
        return True

    # ---- the ledger ----

    def _end(self, group_id: int, outcome: Outcome, group: Optional[Group] = None) -> None:
        if group_id in self.ledger:
            raise LedgerError(f"group {group_id} ended twice: {self.ledger[group_id].value}, then {outcome.value}")
        if group_id not in self._open:
            raise LedgerError(f"group {group_id} ended ({outcome.value}) but was never issued")
        self._open.remove(group_id)
        del self._trains[group_id]
        self.ledger[group_id] = outcome
        self._counts[outcome] += 1
        if group is not None:  # a complete group: its tokens count towards its outcome
            tokens = sum(len(r.response_ids) for r in group.rollouts)
            self.tokens[outcome.value] += tokens
            if outcome in (Outcome.STALE, Outcome.TIED, Outcome.RESCUED):
                self._dropped_since_take[0] += tokens
                self._dropped_since_take[1] += len(group.rollouts)

    def close(self) -> dict[str, int]:
        """The run is over: every open group ends (dropped:incomplete while some member is
        unscored, dropped:unused when complete) and nothing more may be issued. The summary."""
        for gid in list(self._assembling):
            self._end(gid, Outcome.INCOMPLETE)
        for g in self.ready:
            self._end(g.group_id, Outcome.UNUSED, g)
        self._assembling, self.ready, self._closed = {}, [], True
        return self.summary()

    def summary(self) -> dict[str, int]:
        """Groups issued, still open, and ended by outcome (every outcome listed, zeros too)."""
        return {"issued": len(self.ledger) + len(self._open), "open": len(self._open),
                **{o.value: self._counts[o] for o in Outcome}}

    # ---- checkpoints ----

    def state(self) -> dict:
        """The bookkeeping at a step boundary (JSON-able). Open groups are listed by id only:
        their samples are not kept, so a restored scheduler ends them as dropped:interrupted and
        owes their replacements (new group ids: no sample is trained twice)."""
        return {"started_steps": self.started_steps, "version": self._version, "lookahead": self.lookahead.state(),
                "filtered_this_step": self._filtered_this_step, "open": sorted(self._open),
                "ledger": {str(gid): outcome.value for gid, outcome in self.ledger.items()},
                "tokens": dict(self.tokens)}

    def restore(self, state: dict) -> None:
        if self.ledger or self._open:
            raise LedgerError("restore() on a scheduler that has issued groups already")
        self.started_steps = state["started_steps"]
        if "lookahead" in state:  # checkpoints written before the lookahead existed start it afresh
            self.lookahead.restore(state["lookahead"])
        self._version, self._filtered_this_step = state["version"], state["filtered_this_step"]
        self.ledger = {int(gid): Outcome(value) for gid, value in state["ledger"].items()}
        for gid in state["open"]:
            self.ledger[gid] = Outcome.INTERRUPTED  # no longer open: take_owed replaces it
        self._counts = Counter(self.ledger.values())
        self.tokens = Counter(state.get("tokens", {}))

    def in_flight(self) -> int:
        """Groups dispatched and not yet complete."""
        return len(self._assembling)

    def _judged(self, group: Group) -> int:
        """The group's version under the staleness rule (cluster/rl/gate.py: its oldest or its
        newest token): what it is judged and ordered by."""
        return self.gate.version(group.rollouts)
