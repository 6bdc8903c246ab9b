"""Randomized properties of the Scheduler and its StalenessGate (no Ray, no clock).

Each case drives the scheduler the way cluster/rl/streaming.py does (start what the budget
allows, try a take, else wait for one to three events) under random draws: the run's shape (steps,
prompts per step, group size, resample limit), the order in which samples finish
generating, the order in which their rewards come back (reward latencies), the versions
their tokens carry (partial rollouts span the versions live while they generated), which
groups tie, steps that do not move the policy (critic warm-up), k in 0..3 and dynamic
sampling on or off, and the staleness rule (the oldest or the newest token is bounded). Every
case checks, independently of the scheduler's own counters:

* the staleness bound: every trained sample is 0..k versions behind the version it trains
  (by the token its rule names),
  and a step's generation starts only within the budget (step j once j - 1 - k are done);
* the ledger: every issued group ends exactly once, and its outcome is the one its history
  calls for (trained; filtered:tied iff dynamic sampling saw it tie; dropped:stale only if it
  was more than k behind; dropped:incomplete / dropped:unused at the end of the run);
* the books balance: the gate's histogram is the trained samples', its drops are the stale
  groups' samples, a replacement is dispatched exactly when the open groups fall short of
  the steps started (never to build a surplus), the oldest data trains first, and the loop
  never stalls.

Plain `random` with fixed seeds: a failure names its case (k, dynamic sampling, seed), which
replays exactly.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cluster.rl.gate import StalenessGate
from cluster.rl.scheduler import DynamicSamplingError, Outcome, Scheduler
from reward.types import RewardResult
from rollout.types import Rollout

CASES_PER_PARAM = 200  # x 4 values of k x 2 (dynamic sampling off / on) = 1,600 cases, about a second


class Case:
    def __init__(self, k: int, dynamic: bool, seed: int, rule: str = "oldest"):
        self.rng = rng = random.Random(seed)
        self.k, self.dynamic, self.rule = k, dynamic, rule
        self.steps, self.per_step, self.size = rng.randint(1, 8), rng.randint(1, 4), rng.randint(1, 4)
        self.limit = rng.randint(1, 3)
        self.p_tie = rng.choice([0.0, 0.25, 0.6])
        self.p_move = rng.choice([1.0, 0.75])  # a step that does not move the policy: critic warm-up
        self.gate = StalenessGate(k, self.size, rule)
        self.s = Scheduler(self.steps, self.per_step, self.size, k, self.gate, dynamic, self.limit)
        self.version = self.steps_done = self.next_gid = 0
        self.judged_at = 0
        self.issued: dict[int, int] = {}  # group id -> policy version when dispatched
        self.tied: dict[int, bool] = {}
        self.to_generate: list[tuple[int, int]] = []  # (group, sample) not finished generating
        self.to_score: list[Rollout] = []  # generated, reward pending
        self.scored: Counter[int] = Counter()  # group id -> members scored
        self.oldest: dict[int, int] = {}  # group id -> its version under the rule (oldest / newest token)
        self.trained: list[int] = []
        self.histogram: Counter[int] = Counter()
        self.replacements = 0
        self.events = 0
        self.tied_since_take = 0
        self.gave_up = False

    # ---- the controller loop, as Streaming.next_batch runs it ----

    def run(self) -> None:
        try:
            while self.steps_done < self.steps:
                self.start()
                groups = self.s.take(self.version)
                self.judged_at = self.version  # what the scheduler judges staleness against from now on
                if groups is not None:
                    self.train(groups)
                    continue
                self.start()  # replacements for groups this take found stale, before waiting
                self.wait()
        except DynamicSamplingError:
            assert self.dynamic and self.tied_since_take > self.limit * self.per_step
            self.gave_up = True
        self.summary = self.s.close()

    def wait(self) -> None:
        """One or a few events (a wait can return several finished rollouts and reward tickets)."""
        for n in range(self.rng.randint(1, 3)):
            events = [e for e, todo in ((self.generate_one, self.to_generate), (self.score_one, self.to_score))
                      if todo]
            assert events or n, "stalled: nothing in flight and no batch ready"
            self.events += 1
            assert self.events < 20_000, "no progress: groups keep being replaced and never train"
            if events:
                self.rng.choice(events)()

    def start(self) -> None:
        for step in self.s.steps_to_start(self.steps_done):
            assert step - 1 - self.k <= self.steps_done and step <= self.steps  # within the budget
            self.dispatch(self.per_step)
        needed = (self.s.started_steps - self.steps_done) * self.per_step  # groups the started steps train
        owed = self.s.take_owed()
        assert owed == max(0, needed - self.s.summary()["open"]), "replacements must fill the shortfall, no more"
        self.replacements += owed
        self.dispatch(owed)

    def dispatch(self, n: int) -> None:
        for _ in range(n):
            self.next_gid += 1
            gid = self.next_gid
            self.s.expect(gid)
            self.issued[gid] = self.version
            self.tied[gid] = self.size == 1 or self.rng.random() < self.p_tie
            self.to_generate += [(gid, i) for i in range(self.size)]

    def generate_one(self) -> None:
        """A random sample finishes: its tokens span versions from when it started to now."""
        gid, i = self.to_generate.pop(self.rng.randrange(len(self.to_generate)))
        first = self.rng.randint(self.issued[gid], self.version)  # it may have waited in a queue
        tokens = self.rng.randint(1, 4)
        versions = (first,) + tuple(sorted(self.rng.randint(first, self.version) for _ in range(tokens - 1)))
        if self.rule == "oldest":  # a group's oldest token ...
            self.oldest[gid] = min(self.oldest.get(gid, first), first)
        else:  # ... or its newest
            self.oldest[gid] = max(self.oldest.get(gid, versions[-1]), versions[-1])
        self.to_score.append(Rollout(group_id=gid, prompt_id=gid, sample_index=i, prompt="1+1=", answer="2",
                                     prompt_ids=(1,), response_ids=(5,) * tokens, response_text="2",
                                     logprobs=(-0.1,) * tokens, versions=versions, finish_reason="stop"))

    def score_one(self) -> None:
        """A random reward comes back (latencies reorder them across and within groups)."""
        r = self.to_score.pop(self.rng.randrange(len(self.to_score)))
        value = 1.0 if self.tied[r.group_id] else float(r.sample_index % 2)  # untied: samples 0 and 1 differ
        self.scored[r.group_id] += 1
        if self.scored[r.group_id] == self.size and self.dynamic and self.tied[r.group_id]:
            self.tied_since_take += 1
        self.s.scored(r, RewardResult(group_id=r.group_id, sample_index=r.sample_index, reward=value,
                                      correct=value > 0, format_ok=True))

    def train(self, groups) -> None:
        ids = [g.group_id for g in groups]
        assert len(ids) == self.per_step and len(set(ids)) == len(ids) and not set(ids) & set(self.trained)
        for g in groups:
            assert len(g.rollouts) == self.size and [r.sample_index for r in g.rollouts] == list(range(self.size))
            assert not (self.dynamic and self.tied[g.group_id]), "a tied group trained under dynamic sampling"
            newest = max(r.versions[-1] for r in g.rollouts)
            for r in g.rollouts:
                staleness = self.version - (r.min_version if self.rule == "oldest" else newest)
                assert 0 <= staleness <= self.k, f"group {g.group_id}: staleness {staleness} at k = {self.k}"
                self.histogram[staleness] += 1
        picked = max((self.oldest[gid], gid) for gid in ids)
        assert all(picked < (self.oldest[g.group_id], g.group_id) for g in self.s.ready), "oldest data first"
        self.trained += ids
        self.tied_since_take = 0
        self.steps_done += 1
        self.version += self.rng.random() < self.p_move

    # ---- what must hold at the end ----

    def check(self) -> None:
        s, ledger, summary = self.s, self.s.ledger, self.summary
        assert set(ledger) == set(self.issued), "an issued group never ended (or one ended unissued)"
        assert summary["issued"] == len(self.issued) and summary["open"] == 0
        assert sum(summary[o.value] for o in Outcome) == len(self.issued)
        by = {o: {gid for gid, got in ledger.items() if got is o} for o in Outcome}
        assert by[Outcome.TRAINED] == set(self.trained) and len(self.trained) == self.steps_done * self.per_step
        assert self.gave_up or self.steps_done == self.steps
        complete = {gid for gid in self.issued if self.scored[gid] == self.size}
        assert by[Outcome.INCOMPLETE] == set(self.issued) - complete
        assert by[Outcome.TIED] == {gid for gid in complete if self.dynamic and self.tied[gid]}
        for gid in by[Outcome.STALE]:  # judged against the version of a take, which only moves up
            assert self.judged_at - self.oldest[gid] > self.k, f"fresh group {gid} dropped as stale"
        for gid in by[Outcome.UNUSED]:
            assert self.judged_at - self.oldest[gid] <= self.k, f"stale group {gid} left as unused"
        assert (s.filtered, s.stale_groups) == (len(by[Outcome.TIED]), len(by[Outcome.STALE]))
        # What was issued is P per started step plus the replacements, and each replacement
        # stood in for a tied or stale group.
        assert len(self.issued) == self.per_step * s.started_steps + self.replacements
        assert self.replacements <= len(by[Outcome.TIED]) + len(by[Outcome.STALE])
        assert self.gate.histogram == self.histogram and self.gate.max_seen == max(self.histogram, default=0)
        assert self.gate.dropped == self.size * len(by[Outcome.STALE])


@pytest.mark.parametrize("rule", ["oldest", "newest"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["plain", "dynamic_sampling"])
@pytest.mark.parametrize("k", range(4))
def test_bound_and_ledger_hold_under_random_orders(k, dynamic, rule):
    outcomes: Counter[str] = Counter()
    for seed in range(CASES_PER_PARAM):
        case = Case(k, dynamic, seed, rule)
        try:
            case.run()
            case.check()
        except AssertionError as e:
            raise AssertionError(f"Case(k={k}, dynamic={dynamic}, seed={seed}, rule={rule}): {e}") from e
        outcomes.update({o: n for o, n in case.summary.items() if ":" in o or o == "trained"})
        outcomes["gave_up"] += case.gave_up
        outcomes["max_staleness_seen"] = max(outcomes["max_staleness_seen"], case.gate.max_seen)
    # The draws reach every path this configuration has (else the cases would prove little), and
    # only those: k = 0 never lets a group go stale; without dynamic sampling nothing is left
    # over at the end (each dropped group was replaced, so exactly P per step remained).
    assert outcomes["max_staleness_seen"] == k and outcomes["trained"] > 0
    assert (outcomes["dropped:stale"] > 0) == (k > 0)
    assert (outcomes["filtered:tied"] > 0) == (outcomes["gave_up"] > 0) == dynamic
    assert (outcomes["dropped:incomplete"] > 0) == (outcomes["dropped:unused"] > 0) == dynamic
