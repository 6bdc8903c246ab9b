"""RewardPool: Ray actors scoring rollouts concurrently, with timeouts, retries, a cache,
backpressure, autoscaling and metrics; then composition and shaping of the rewards.

Work flows through *lanes*, one per kind of actor: `verifier` (RewardWorker actors,
`num_workers` .. `max_workers` of them), `reward_model` and `judge` (one actor each, only
when a component names them). A sample is queued on every lane it needs; each lane sends
chunks of `batch_size` samples to its actors, at most two calls in flight per actor.

Failure handling, per sample and never silent: a verifier timeout (enforced inside the
worker, per sample) or a lost/wedged actor (enforced here, by a per-call deadline) is
retried up to `max_retries` times on a fresh actor; a verifier exception is recorded at
once (it is deterministic). A sample that still fails gets `fallback_score` and its
`failure` reason. Successful component scores are cached by (verifier setup, prompt,
response, answer, finish reason).

`score(rollouts)` is submit + collect; `submit` returns a ticket at once (blocking only
while more than `max_pending` samples are outstanding: backpressure), so callers can
stream batches in and `collect` each one when needed.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import numpy as np
import ray

from reward import shaping
from reward.config import MODEL_COMPONENTS, RewardConfig
from reward.types import RewardResult
from reward.types import WorkerReply
from reward.worker import RewardWorker
from rollout.types import Rollout

MAX_INFLIGHT_PER_ACTOR = 2
CALL_GRACE_S = 60.0  # actor start-up (imports) counts against a call's deadline
SCALE_DOWN_IDLE_S = 30.0


@dataclass
class _Sample:
    rollout: Rollout
    key: str
    lanes: set  # lanes still to answer
    t_submit: float
    scores: dict = field(default_factory=dict)  # component name -> ComponentScore
    failure: Optional[str] = None
    attempts: int = 1
    cached: bool = False
    isolate: bool = False  # retried alone on an otherwise idle actor (it was near a crash)


@dataclass
class _Actor:
    handle: object
    inflight: int = 0
    exclusive: bool = False  # serving an isolated sample: nothing else is sent to it
    idle_since: float = field(default_factory=time.monotonic)


class _Lane:
    def __init__(self, name: str, make, count: int, chunk: int, max_count: int, options: list[dict]):
        self.name, self.make, self.chunk, self.max_count, self.options = name, make, chunk, max_count, options
        self.min_count = count
        self.actors = [self._start(i) for i in range(count)]
        self.queue: collections.deque[int] = collections.deque()

    def _start(self, i: int) -> _Actor:
        # Placement options (a bundle per worker) exist for the configured workers only;
        # workers added under load run outside the placement group.
        return _Actor(self.make(self.options[i] if i < len(self.options) else {}))

    def replace(self, actor: _Actor) -> None:
        ray.kill(actor.handle)
        i = self.actors.index(actor)
        self.actors[i] = self._start(i)

    def free_actor(self) -> Optional[_Actor]:
        free = [a for a in self.actors if a.inflight < MAX_INFLIGHT_PER_ACTOR and not a.exclusive]
        return min(free, key=lambda a: a.inflight) if free else None


@dataclass
class PoolMetrics:
    samples: int = 0
    cache_hits: int = 0
    timeouts: int = 0  # sample timeouts, retried or not
    errors: int = 0  # samples that ended with a failure (fallback score)
    retries: int = 0
    worker_restarts: int = 0  # every replacement: faults and deliberate recycling (a tainted sandbox)
    fault_restarts: int = 0  # workers replaced because they died, failed or wedged (the budget counts these)
    reissued: int = 0  # samples sent again because their worker died, failed or wedged
    workers: int = 0
    workers_peak: int = 0
    latency_p50_s: float = 0.0  # submit -> result, per sample
    latency_p90_s: float = 0.0
    latency_p99_s: float = 0.0
    compute_p50_s: float = 0.0  # time spent in the sample's components
    compute_p99_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class RewardPoolError(RuntimeError):
    """The pool cannot go on: its workers keep failing past the restart budget."""


class RewardPool:
    def __init__(self, spec: RewardConfig | None = None, actor_options: list[dict] | None = None,
                 model_options: list[dict] | None = None, max_restarts: int | None = None, **settings):
        """`spec` is the config's `reward` section; keyword settings build one (unknown names are refused).
        actor_options / model_options: Ray options (placement bundles) of the verifier workers / of the
        reward-model actor (cluster/placement.py). max_restarts: workers replaced after a fault, at
        most, before the pool raises RewardPoolError (cluster.max_actor_restarts; None: no limit)."""
        self.max_restarts = max_restarts
        spec = spec if spec is not None else RewardConfig(**settings)
        self.spec = spec
        check_paths(spec)
        self.weights = spec.weights()
        self._fingerprint = hashlib.sha256(json.dumps(
            [sorted(self.weights), spec.verifier_options, spec.reward_model_path, spec.judge_url, spec.judge_model],
            sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.lanes = self._make_lanes(actor_options or [], model_options or [])
        self._samples: dict[int, _Sample] = {}
        self._tickets: dict[int, list[int]] = {}
        self._inflight: dict = {}  # ObjectRef -> (lane, actor, sample ids, deadline)
        self._next_id = 0
        self._cache: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._norm = shaping.RunningNorm()
        self._latency: collections.deque = collections.deque(maxlen=10_000)
        self._compute: collections.deque = collections.deque(maxlen=10_000)
        self.stats = PoolMetrics(workers=spec.num_workers, workers_peak=spec.num_workers)

    def _make_lanes(self, options: list[dict], model_options: list[dict]) -> dict[str, _Lane]:
        s = self.spec
        lanes = {}
        if any(n not in MODEL_COMPONENTS for n in self.weights):
            make = _actor_factory(RewardWorker, s)
            lanes["verifier"] = _Lane("verifier", make, s.num_workers, s.batch_size, s.max_workers or s.num_workers,
                                      options)
        if "reward_model" in self.weights:
            from reward.reward_model import RewardModelWorker
            gpus = 1 if s.reward_model_device == "cuda" else 0
            lanes["reward_model"] = _Lane("reward_model", _actor_factory(RewardModelWorker, s, num_gpus=gpus), 1,
                                          s.reward_model_batch_size, 1, model_options)
        if "judge" in self.weights:
            from reward.judge import JudgeWorker
            lanes["judge"] = _Lane("judge", _actor_factory(JudgeWorker, s), 1, s.judge_concurrency * 2, 1, [])
        return lanes

    @property
    def workers(self) -> list:
        """Handles of the verifier actors (cluster/roles.py reports where they run)."""
        return [a.handle for a in self.lanes["verifier"].actors] if "verifier" in self.lanes else []

    # --- the public interface -----------------------------------------------------------

    def score(self, rollouts: list[Rollout]) -> list[RewardResult]:
        """One result per rollout, in order; never raises for a verifier's failure."""
        return self.collect(self.submit(rollouts))

    def submit(self, rollouts: list[Rollout]) -> int:
        """Queue rollouts; returns a ticket for `collect`. Blocks (doing work) while more than
        `max_pending` samples are outstanding."""
        while self.outstanding() > self.spec.max_pending:
            self._pump(time.monotonic() + 0.5)
        ids = []
        for rollout in rollouts:
            ids.append(self._add(rollout))
        ticket = self._next_id
        self._next_id += 1
        self._tickets[ticket] = ids
        self._pump(time.monotonic())  # start the work without waiting for it
        return ticket

    def collect(self, ticket: int) -> list[RewardResult]:
        ids = self._tickets[ticket]
        while any(self._samples[i].lanes for i in ids):
            self._pump(time.monotonic() + 1.0)
            idle = not self._inflight and not any(lane.queue for lane in self.lanes.values())
            if idle and any(self._samples[i].lanes for i in ids):
                raise RuntimeError("reward pool stalled: samples pending with no work queued (a bug)")
        del self._tickets[ticket]
        return self._compose([self._samples.pop(i) for i in ids])

    def ready(self, ticket: int) -> bool:
        """Every sample of this ticket is scored (collect() returns at once)."""
        return not any(self._samples[i].lanes for i in self._tickets[ticket])

    def pump(self, timeout_s: float = 0.0) -> None:
        """Dispatch queued work and absorb replies, waiting at most `timeout_s` (for callers that
        stream samples in and wait on several sources at once)."""
        self._pump(time.monotonic() + timeout_s)

    def pending_refs(self) -> list:
        """The reward calls in flight (a caller may ray.wait on them with its own refs)."""
        return list(self._inflight)

    def outstanding(self) -> int:
        """Samples submitted and not yet scored (collected or not)."""
        return sum(1 for x in self._samples.values() if x.lanes)

    def state(self) -> dict:
        """What a resumed run must carry over (JSON): the running normalisation's statistics."""
        return {"norm": [self._norm.count, self._norm.mean, self._norm.m2]}

    def restore(self, state: dict) -> None:
        self._norm.count, self._norm.mean, self._norm.m2 = state["norm"]

    def metrics(self) -> PoolMetrics:
        m = self.stats
        if self._latency:
            m.latency_p50_s, m.latency_p90_s, m.latency_p99_s = np.percentile(self._latency, [50, 90, 99]).tolist()
            m.compute_p50_s, m.compute_p99_s = np.percentile(self._compute, [50, 99]).tolist()
        m.workers = len(self.lanes["verifier"].actors) if "verifier" in self.lanes else 0
        return replace(m)  # a snapshot, not the live counters

    def shutdown(self) -> None:
        for lane in self.lanes.values():
            for actor in lane.actors:
                ray.kill(actor.handle)
            lane.actors = []

    # --- scheduling -----------------------------------------------------------------------

    def _add(self, rollout: Rollout) -> int:
        sid = self._next_id
        self._next_id += 1
        key = self._key(rollout)
        sample = _Sample(rollout, key, set(), time.monotonic())
        self.stats.samples += 1
        if key in self._cache:
            self._cache.move_to_end(key)
            sample.scores = {c.name: c for c in self._cache[key]}
            sample.cached = True
            self.stats.cache_hits += 1
            self._latency.append(0.0)
            self._compute.append(0.0)
        else:
            sample.lanes = set(self.lanes)
            for lane in sample.lanes:
                self.lanes[lane].queue.append(sid)
        self._samples[sid] = sample
        return sid

    def _key(self, r: Rollout) -> str:
        return hashlib.sha256(json.dumps([self._fingerprint, r.prompt, r.response_text, r.answer, r.finish_reason])
                              .encode()).hexdigest()

    def _pump(self, until: float) -> None:
        """Dispatch queued work, then wait (at most until `until`) and absorb replies."""
        self._autoscale()
        for lane in self.lanes.values():
            self._dispatch(lane)
        if not self._inflight:
            return
        now = time.monotonic()
        wait_s = max(0.0, min(until, min(d for *_, d in self._inflight.values())) - now)
        ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=wait_s)
        rest = [r for r in self._inflight if r not in ready]
        if ready and rest:  # take everything else that is already done too
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            if ref in self._inflight:  # absorbing one reply may have requeued a replaced actor's calls
                self._absorb(ref)
        now = time.monotonic()
        for ref, (lane, actor, ids, deadline) in list(self._inflight.items()):
            if now > deadline:  # the actor is wedged or gone: replace it, retry its samples
                del self._inflight[ref]
                self._restart(lane, actor, "no answer by its deadline")
                self._retry(lane, ids, f"timeout: {lane.name} worker gave no answer by its deadline")

    def _dispatch(self, lane: _Lane) -> None:
        while lane.queue:
            if self._samples[lane.queue[0]].isolate:
                # A sample whose worker died goes alone to an idle actor, so a crash it causes
                # again is charged to it only, not to innocent samples sharing the actor.
                actor = next((a for a in lane.actors if a.inflight == 0), None)
                if actor is None:
                    return
                actor.exclusive = True
                ids = [lane.queue.popleft()]
            else:
                actor = lane.free_actor()
                if actor is None:
                    return
                ids = []
                while lane.queue and len(ids) < lane.chunk and not self._samples[lane.queue[0]].isolate:
                    ids.append(lane.queue.popleft())
            rollouts = [self._samples[i].rollout for i in ids]
            per_sample = self.spec.timeout_s * max(1, len(self.weights))
            deadline = time.monotonic() + CALL_GRACE_S + per_sample * len(ids)
            ref = actor.handle.score.remote(rollouts)
            actor.inflight += 1
            self._inflight[ref] = (lane, actor, ids, deadline)

    def _absorb(self, ref) -> None:
        lane, actor, ids, _ = self._inflight.pop(ref)
        actor.inflight -= 1
        actor.exclusive = False
        actor.idle_since = time.monotonic()
        try:
            reply: WorkerReply = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            self._restart(lane, actor, f"{type(exc).__name__}")
            self._retry(lane, ids, f"error: {lane.name} worker lost: {type(exc).__name__}")
            return
        timed_out = []
        for sid, scores in zip(ids, reply.scores):
            failures = [c.failure for c in scores if c.failure]
            if failures and failures[0].startswith("timeout"):
                self.stats.timeouts += 1
                timed_out.append(sid)
                continue
            self._finish_lane(sid, lane.name, scores, failures[0] if failures else None)
        if reply.tainted:
            self._restart(lane, actor)
        if timed_out:
            self._retry(lane, timed_out, f"timeout: a verifier exceeded {self.spec.timeout_s} s", count=False)

    def _retry(self, lane: _Lane, ids: list[int], reason: str, count: bool = True) -> None:
        for sid in ids:
            sample = self._samples[sid]
            if count and reason.startswith("timeout"):
                self.stats.timeouts += 1
            if sample.attempts <= self.spec.max_retries:
                sample.attempts += 1
                sample.isolate = sample.isolate or "worker" in reason
                self.stats.retries += 1
                self.stats.reissued += "worker" in reason
                lane.queue.appendleft(sid)
            else:
                self._finish_lane(sid, lane.name, (), reason)

    def _finish_lane(self, sid: int, lane: str, scores, failure: Optional[str]) -> None:
        sample = self._samples[sid]
        sample.lanes.discard(lane)
        sample.scores.update({c.name: c for c in scores})
        sample.failure = sample.failure or failure
        if sample.lanes:
            return
        if sample.failure:
            self.stats.errors += 1
        else:
            self._cache_put(sample.key, tuple(sample.scores.values()))
        self._latency.append(time.monotonic() - sample.t_submit)
        self._compute.append(sum(c.latency_s for c in sample.scores.values()))

    def _cache_put(self, key: str, scores: tuple) -> None:
        if self.spec.cache_size <= 0:
            return
        self._cache[key] = scores
        while len(self._cache) > self.spec.cache_size:
            self._cache.popitem(last=False)

    def _restart(self, lane: _Lane, actor: _Actor, fault: str | None = None) -> None:
        """Replace `actor` (`fault`: why it failed; None: a deliberate recycle) and requeue its calls."""
        if fault is not None and actor in lane.actors:
            if self.max_restarts is not None and self.stats.fault_restarts >= self.max_restarts:
                raise RewardPoolError(f"a {lane.name} worker failed ({fault}) and the restart budget is spent "
                                      f"({self.stats.fault_restarts} restarts, cluster.max_actor_restarts="
                                      f"{self.max_restarts}); the worker's log (Ray's logs directory) says why")
            self.stats.fault_restarts += 1
        if actor in lane.actors:
            lane.replace(actor)
            self.stats.worker_restarts += 1
        for ref, (l2, a2, ids, _) in list(self._inflight.items()):
            if a2 is actor:  # calls queued on the killed actor: requeue without counting a try
                del self._inflight[ref]
                lane.queue.extendleft(reversed(ids))
                self.stats.reissued += len(ids) if fault is not None else 0

    def _autoscale(self) -> None:
        lane = self.lanes.get("verifier")
        if lane is None:
            return
        n = len(lane.actors)
        if n < lane.max_count and len(lane.queue) > 2 * lane.chunk * n:
            lane.actors.append(lane._start(n))  # more than two rounds of work waiting: grow
            self.stats.workers_peak = max(self.stats.workers_peak, n + 1)
        elif n > lane.min_count and not lane.queue:
            last = lane.actors[-1]
            if last.inflight == 0 and time.monotonic() - last.idle_since > SCALE_DOWN_IDLE_S:
                ray.kill(lane.actors.pop().handle)

    # --- composition and shaping -----------------------------------------------------

    def _compose(self, samples: list[_Sample]) -> list[RewardResult]:
        s = self.spec
        raws = [None if x.failure else shaping.clip(shaping.weighted_sum(
            {n: c.value for n, c in x.scores.items()}, self.weights), s.clip_min, s.clip_max) for x in samples]
        good = [r for r in raws if r is not None]
        values = list(raws)
        if s.normalize == "running" and good:
            self._norm.update(good)
            values = [None if r is None else self._norm(r) for r in values]
        if s.shaping == "par":
            refs = self._par_references(samples, values)
            values = [None if v is None else shaping.par(v, ref) for v, ref in zip(values, refs)]
        return [self._result(x, raw, value) for x, raw, value in zip(samples, raws, values)]

    def _par_references(self, samples: list[_Sample], values: list) -> list[float]:
        if self.spec.par_reference == "fixed":
            return [self.spec.par_reference_value] * len(samples)
        ok = [(x.rollout.group_id, v) for x, v in zip(samples, values) if v is not None]
        means = dict(zip(range(len(ok)), shaping.group_means([k for k, _ in ok], [v for _, v in ok])))
        out, j = [], 0
        for v in values:
            out.append(means[j] if v is not None else 0.0)
            j += v is not None
        return out

    def _result(self, x: _Sample, raw: Optional[float], value: Optional[float]) -> RewardResult:
        r = x.rollout
        comps = tuple((n, c.value) for n, c in x.scores.items() if c.value is not None)
        latency = sum(c.latency_s for c in x.scores.values())
        fmt = x.scores.get("format")
        correct = x.scores.get(self.spec.verifier)
        return RewardResult(group_id=r.group_id, sample_index=r.sample_index,
                            reward=self.spec.fallback_score if value is None else value,
                            correct=bool(correct and correct.value == 1.0 and not x.failure),
                            format_ok=bool(fmt and fmt.value == 1.0 and not x.failure), failure=x.failure,
                            latency_s=latency, raw_reward=raw, components=comps, attempts=x.attempts,
                            cached=x.cached)


def _actor_factory(cls, spec: RewardConfig, num_gpus: int = 0):
    remote = ray.remote(cls)

    def make(options: dict):
        return remote.options(**{"num_cpus": 0, "num_gpus": num_gpus, "max_concurrency": 1, **options}).remote(spec)
    return make


def check_paths(spec: RewardConfig) -> None:
    """What the config cannot check when it is parsed (names, options and budgets are checked
    there, reward/config.py): the files it points at, on the machine that runs the pool."""
    if "reward_model" not in spec.weights():
        return
    fields = [("reward.reward_model_path", spec.reward_model_path)]
    fields += [(f"reward.reward_model_ensemble[{i}]", p) for i, p in enumerate(spec.reward_model_ensemble)]
    for field, path in fields:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{field} '{path}' is not a Hugging Face checkpoint (no config.json)")
