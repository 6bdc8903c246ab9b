"""Simulation mode of the controller: the real Scheduler and StalenessGate, driven by
latency models of the engines, reward workers and learners on a simulated clock.

A discrete-event simulation (a heap of timed events; no sleeping, no Ray, no weights). The
controller part mirrors cluster/rl/controller.py + cluster/rl/streaming.py call for call: each
step `steps_to_start` / `take_owed` decide what to dispatch (`expect` per group), finished
rollouts are assembled per group and sent to the reward model when the group is complete,
scored samples go through `scored`, and the step trains when `take(version)` returns a
batch; then the learners train, the weights sync and the version goes up. What is modelled
instead of run, and every assumption made (the defaults of `LatencyModel`):

* Response lengths: lognormal, median 1,000 tokens, sigma 1.0, capped at 16,384 (a capped
  sample finishes with "length"). Half the log-variance is shared within a group
  (`group_corr`: a hard prompt makes all its samples long). The "uniform" option draws
  lengths uniformly in [500, 1500] (the short, tail-free control). A group's lengths are a
  function of the seed and its group id only, so every mode sees the same prompts.
* Prompts: 256 tokens each; prefill is folded into 5 ms of engine time per sequence that
  joins a running batch.
* Generation engine (one GPU each, continuous batching up to `max_seqs` = 256 sequences): a
  decode step advances every active sequence by one token and takes a + b * active
  (a = 20 ms, b = 0.05 ms: about 7,800 tokens/s per GPU at a full batch, a ~7B model on a
  current GPU). The simulation jumps from event to event (a sequence finishing, requests
  arriving, a weight sync), never token by token; requests join at the next step boundary.
  Each group goes to the engine with the fewest unfinished samples (`dispatch`); "pool" is
  RolloutPool's split instead (request i of a dispatch to worker (start + i) mod n, the
  start rotating from call to call, so small replacement dispatches spread over workers).
  Engine models (`engine_calls`): "streaming" is the vLLM worker since 2026-12-07 (each
  rollout streamed back as it finishes, several calls in flight feeding one continuous
  batch: a new call's samples join the running batch at once), and the `hf` engine in
  asynchronous runs since the evening of 2026-12-07 (its calls share one decode thread);
  "one_call" is one call at a time per worker (rollouts streamed as they finish, but a new
  call joins when the previous one has ended: the `hf` engine before then, and in
  synchronous runs still); "whole_call" is the vLLM worker before
  2026-12-07 (one call at a time, and a call's rollouts come back together when its last
  sample ends).
* Doomed groups are aborted (`abort_doomed`, as Streaming.abort_doomed): after each weight
  sync, under the `oldest` staleness rule, every group with a sample started on a version
  below V - k (in flight or arrived) leaves its engine at once, its queued samples never
  start, and take_owed replaces it; its partial tokens count as generated, not trained.
  (Under `newest` no incomplete group is doomed.)
* Rewards: per-sample latency lognormal (median 30 ms, sigma 1, cap 10 s) on unlimited
  parallel CPU workers, so a group is scored at its slowest member; reward = Bernoulli(0.5).
* Learner: a step over the batch takes tokens * c / n_learners + 2 s, tokens = prompt +
  response, c = 1.25e-4 GPU-seconds per token (~8,000 tokens/s per GPU for forward,
  backward and the logprob pass of a ~7B model at ~40% MFU), chosen from that estimate, not
  fitted. At 64 GPUs it makes training the same order as generation when the two are
  split (bench: ~17 s of training on 24 GPUs in a ~29 s step); the sync mode's generation
  is far longer (~330 s against ~9 s of training) because it waits for the longest response.
* Weight sync (`WeightSyncModel`): seconds from the bytes each stage of the protocol copies,
  moves or hashes, for a 7B model. "object_store" is the protocol as it was until 2026-12-06
  (rollout/weight_sync.py, since replaced by rollout/transfer/; trainer/learner.py `export_weights`, rollout/pool.py, and for
  vLLM rollout/vllm_engine.py + vllm_worker.py): gathered whole, cast to fp32 on learner
  rank 0, hashed with blake2b, put in the object store, pulled by every engine host,
  verified, and for vLLM hashed three more times on the way into the engine (5 blake2b
  passes in all; 2 for the `hf` engine). "collective" is the design's target: the training
  dtype broadcast over the network, fingerprinted on the device. The controller blocks for
  the whole sync (export, receive, swap, as the real loop does); engines go on decoding
  through export and receive and pause for the swap only (they finish their current decode
  step first; in-flight sequences then continue under the new version: interrupt mode,
  partial rollouts). Colocated mode pays the whole sync with the engines idle, and its
  engines are paused while the learners (the same GPUs) train.
* Controller: it blocks while the learners train and the weights sync (as the real loop
  does: rollouts that finish meanwhile wait in their streams, rewards are submitted when it
  returns). When it waits it handles everything that has arrived, at most once per
  `controller_tick_s` = 1 s of simulated time; the real Streaming._wait wakes on every
  stream item. The tick delays each step by up to 1 s in every mode (a cost to async, whose
  steps are shorter). The controller's own cost is not charged to the simulated clock;
  it is measured (time.perf_counter around every Scheduler call, buffer admission included)
  and reported, with the cost of one take() call.
* Measured window: `warmup_steps` run first (the pipeline fills) and are not counted; with
  `drain=False` the scheduler is told the run goes on, so the window does not end with the
  final steps waiting for the slowest groups (a once-per-run cost a long run amortises).
* Length-matched baseline (`replay`): a synchronous run given the groups another run
  trained, step by step (their lengths, reward latencies and rewards), so both train the
  same samples and tokens; asynchronous training under a staleness bound drops the groups
  that take longest, so plain sync trains longer responses than async does.
* Rollouts are real `Rollout` records with a two-token stand-in response:
  `versions = (version at its first token, version at its last)`; versions only move up
  during a sample, so min(versions) is the true oldest version and the staleness gate sees
  exactly what it would see with one entry per token. Lengths live in the simulation.

Utilisation = busy GPU-seconds / (GPUs * wall): an engine is busy while it has a sequence
to decode (or prefills), a learner while it trains; weight syncs count as idle.
`weighted_utilisation` also counts an engine step at its throughput relative to a full
batch (decoding one sequence on a GPU is "busy" but uses under 1% of it).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from cluster.rl.gate import StalenessGate, Group
from cluster.rl.scheduler import Scheduler
from reward.types import RewardResult
from rollout.types import Rollout


GB = 1e9
PHASES = ("export", "receive", "swap")


@dataclass(frozen=True)
class WeightSyncModel:
    """Seconds per weight sync from the bytes each stage of the protocol moves, copies or
    hashes (`stages()`). Rates are per stream: one Python thread, one NIC, one PCIe link."""

    protocol: Literal["collective", "object_store"] = "collective"
    receiver: Literal["vllm", "hf"] = "vllm"  # object_store: the engine's load path
    params: float = 7e9  # model parameters
    train_bytes: int = 2  # bytes per parameter of the training dtype (bf16)
    zero3: bool = True  # object_store: GatheredParameters gathers the whole model on every learner first
    net_gbps: float = 20.0  # GB/s into each engine host (object store pull, NCCL broadcast) and between learners
    pcie_gbps: float = 20.0  # GB/s host <-> device
    copy_gbps: float = 2.0  # GB/s, one host copy into fresh memory in one thread
    hash_gbps: float = 0.84  # GB/s, hashlib.blake2b in one thread
    device_hash_gbps: float = 200.0  # GB/s, collective: the fingerprint computed on the GPU
    fixed_s: float = 0.5  # per sync: actor calls, barriers, launches

    def stages(self) -> tuple[tuple[str, str, float], ...]:
        """(phase, stage, seconds). Phases: "export" (learner rank 0), "receive" (every engine
        host at once; engines decode on), "swap" (engines paused)."""
        if self.protocol == "collective":
            wire = self.params * self.train_bytes / GB
            return (("export", "fingerprint on the learner's GPU", wire / self.device_hash_gbps),
                    ("swap", "NCCL broadcast of the training dtype", wire / self.net_gbps),
                    ("swap", "fingerprint on the engine's GPU", wire / self.device_hash_gbps),
                    ("swap", "fixed", self.fixed_s))
        fp32 = self.params * 4 / GB  # GB: the object store path moves fp32 whatever the training dtype
        copy, blake = fp32 / self.copy_gbps, fp32 / self.hash_gbps
        gather = self.params * self.train_bytes / GB / self.net_gbps
        out = [("export", "ZeRO-3 gather of the whole model", gather)] if self.zero3 else []
        out += [("export", "to CPU as fp32", fp32 / self.pcie_gbps),
                ("export", ".numpy().copy()", copy),
                ("export", "describe: tobytes + blake2b", copy + blake),
                ("export", "ray.put", copy),
                ("receive", "object store pull (fp32)", fp32 / self.net_gbps),
                ("receive", "verify: tobytes + blake2b", copy + blake)]
        if self.receiver == "vllm":
            out += [("receive", "vLLM engine describe: tobytes + blake2b", copy + blake),
                    ("receive", "save_file to /dev/shm", copy),
                    ("receive", "vLLM worker check: load_file + tobytes + blake2b", 2 * copy + blake),
                    ("swap", "receive_weights: load_file + tobytes + blake2b", 2 * copy + blake)]
        return tuple(out + [("swap", "load_weights: host to GPU (fp32)", fp32 / self.pcie_gbps),
                            ("swap", "fixed", self.fixed_s)])

    def phase_s(self, phase: str) -> float:
        return sum(s for p, _, s in self.stages() if p == phase)

    @property
    def total_s(self) -> float:
        return sum(s for _, _, s in self.stages())

    @property
    def hash_passes(self) -> int:
        """blake2b passes over the whole model per sync (0 for the on-device fingerprint)."""
        return sum("blake2b" in name for _, name, _ in self.stages())

    @property
    def wire_bytes(self) -> float:
        """Bytes into each engine host per sync."""
        return self.params * (self.train_bytes if self.protocol == "collective" else 4)


@dataclass(frozen=True)
class LatencyModel:
    lengths: Literal["lognormal", "uniform"] = "lognormal"
    median_len: float = 1000.0  # tokens (lognormal)
    sigma: float = 1.0  # lognormal shape: the long tail
    group_corr: float = 0.5  # share of the log-length variance common to a group's samples
    uniform_low: int = 500  # tokens ("uniform")
    uniform_high: int = 1500
    max_len: int = 16_384  # responses are capped here (finish_reason "length")
    prompt_len: int = 256  # tokens, for the learner's token count
    max_seqs: int = 256  # engine: sequences decoded together
    step_fixed_s: float = 0.020  # engine: decode step = a + b * active sequences
    step_per_seq_s: float = 0.000_05
    prefill_s: float = 0.005  # engine time per sequence joining the batch
    engine_calls: Literal["streaming", "one_call", "whole_call"] = "streaming"  # module doc
    reward_median_s: float = 0.030  # reward latency per sample (lognormal, capped)
    reward_sigma: float = 1.0
    reward_cap_s: float = 10.0
    p_correct: float = 0.5  # reward ~ Bernoulli(p_correct)
    train_s_per_token: float = 1.25e-4  # learner GPU-seconds per token (prompt + response)
    train_fixed_s: float = 2.0  # per step: optimizer step, gathers, launch
    sync: WeightSyncModel = WeightSyncModel()
    controller_tick_s: float = 1.0  # the simulated controller looks at most this often


@dataclass(frozen=True)
class SimSpec:
    gpus: int
    placement: Literal["colocated", "disaggregated"]
    gen_gpus: int  # engines (colocated: all gpus, shared with the learners)
    max_staleness: int
    steps: int
    prompts_per_step: int
    group_size: int
    dynamic_sampling: bool = False
    seed: int = 0
    model: LatencyModel = field(default_factory=LatencyModel)
    dispatch: Literal["least_loaded", "pool"] = "least_loaded"  # "pool": RolloutPool's split (module doc)
    staleness_rule: Literal["oldest", "newest"] = "oldest"  # cluster/rl/gate.py
    abort_doomed: bool = True  # controller.abort_doomed
    lookahead: Literal["adaptive", "eager"] = "adaptive"  # controller.lookahead
    warmup_steps: int = 0  # run before the measured window (the pipeline fills)
    drain: bool = True  # False: generation goes on past the window, as in the middle of a long run
    # Length-matched baseline: per step (warm-up first), the group draws another run trained
    # (SimResult.run_groups); the n-th group dispatched here gets the n-th draw.
    replay: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self):
        for name, value, valid in (("dispatch", self.dispatch, ("least_loaded", "pool")),
                                   ("engine_calls", self.model.engine_calls, ("streaming", "one_call", "whole_call")),
                                   ("lengths", self.model.lengths, ("lognormal", "uniform")),
                                   ("protocol", self.model.sync.protocol, ("collective", "object_store")),
                                   ("receiver", self.model.sync.receiver, ("vllm", "hf"))):
            if value not in valid:
                raise ValueError(f"{name} '{value}' is not valid (valid: {', '.join(valid)})")
        if self.replay:
            if self.max_staleness or self.dynamic_sampling:
                raise ValueError("replay needs max_staleness 0 and no dynamic sampling "
                                 "(so that groups train in the order they are dispatched)")
            if [len(g) for g in self.replay] != [self.prompts_per_step] * (self.warmup_steps + self.steps):
                raise ValueError(f"replay must give {self.prompts_per_step} groups for each of the "
                                 f"{self.warmup_steps + self.steps} steps")
        if self.placement == "colocated" and (self.gen_gpus != self.gpus or self.max_staleness):
            raise ValueError("colocated: every GPU generates then trains, and max_staleness must be 0")
        if self.placement == "disaggregated" and not 0 < self.gen_gpus < self.gpus:
            raise ValueError(f"disaggregated: gen_gpus must be in 1..{self.gpus - 1}, got {self.gen_gpus}")

    @property
    def learners(self) -> int:
        return self.gpus if self.placement == "colocated" else self.gpus - self.gen_gpus


@dataclass
class SimResult:
    spec: SimSpec
    wall_s: float  # simulated, over the measured window
    samples: int  # trained in the window
    samples_per_s: float
    tokens: int  # response tokens trained in the window
    tokens_per_s: float
    step_s: list[float]  # each measured step, from the previous step's end to its weight sync's end
    utilisation: float
    weighted_utilisation: float
    generated: int  # samples that finished generating (trained, dropped or left over)
    generated_tokens: int  # response tokens generated: finished samples' and aborted ones' so far
    useful_fraction: float  # response tokens trained / generated (goodput over raw throughput)
    aborted_groups: int  # groups aborted while generating (doomed), in the window
    mean_len_trained: float
    mean_len_generated: float
    partial_frac: float  # trained samples whose tokens span two or more versions
    stale_groups: int  # complete groups dropped at admission (and replaced), in the window
    dropped_frac: float  # stale_groups / (stale_groups + groups trained): of the complete groups judged
    staleness: dict  # the buffer's counts in the window: histogram, max seen, dropped samples
    controller_s: float  # real seconds inside Scheduler / buffer calls, whole run
    controller_ms_per_sample: float  # per sample scored, whole run
    take_calls: int  # take() calls the loop made (or, when sampled, would have made)
    take_ms_mean: float  # real cost of one take() call
    step_groups: list[tuple[int, ...]] = field(repr=False)  # group ids trained at each measured step
    run_groups: tuple[tuple[int, ...], ...] = field(repr=False)  # group draws trained at every step: a replay


def simulate(spec: SimSpec) -> SimResult:
    return Simulation(spec).run()


class _Draws:
    """Per group id: response lengths, reward latencies and rewards, drawn in blocks from one
    seeded stream (a group's draws depend on the seed and its id only)."""

    BLOCK = 1024

    def __init__(self, model: LatencyModel, group_size: int, seed: int):
        self.m, self.g = model, group_size
        self.rng = np.random.default_rng(seed)
        self.blocks: list[tuple[list, list, list]] = []

    def group(self, gid: int) -> tuple[list[int], list[float], list[float]]:
        b, i = divmod(gid - 1, self.BLOCK)
        while len(self.blocks) <= b:
            self.blocks.append(self._block())
        lengths, latencies, rewards = self.blocks[b]
        return lengths[i], latencies[i], rewards[i]

    def _block(self):
        m, shape = self.m, (self.BLOCK, self.g)
        if m.lengths == "lognormal":
            shared = self.rng.standard_normal((self.BLOCK, 1))
            z = math.sqrt(m.group_corr) * shared + math.sqrt(1 - m.group_corr) * self.rng.standard_normal(shape)
            lengths = np.rint(m.median_len * np.exp(m.sigma * z))
        else:  # "uniform"
            lengths = self.rng.integers(m.uniform_low, m.uniform_high + 1, shape)
        lengths = np.clip(lengths, 1, m.max_len).astype(int)
        latency = np.minimum(m.reward_median_s * np.exp(m.reward_sigma * self.rng.standard_normal(shape)),
                             m.reward_cap_s)
        rewards = (self.rng.random(shape) < m.p_correct).astype(float)
        return lengths.tolist(), latency.tolist(), rewards.tolist()


class _Seq:
    __slots__ = ("gid", "idx", "length", "v_start", "started", "call")

    def __init__(self, gid: int, idx: int, length: int, call: "_Call"):
        self.gid, self.idx, self.length, self.v_start, self.call = gid, idx, length, 0, call
        self.started = 0  # the engine's decode-step count when it joined the batch


class _Call:
    """One generation call on one engine: its waiting samples, and ("whole_call") the rollouts
    held back until the call ends."""

    __slots__ = ("waiting", "outstanding", "done")

    def __init__(self):
        self.waiting: deque[_Seq] = deque()
        self.outstanding = 0
        self.done: list[Rollout] = []


WAKE, ROLLOUTS, REWARD = 0, 1, 2  # event kinds
_PROMPT_IDS = (1,)  # stand-in prompt; the prompt length is LatencyModel.prompt_len


class _Engine:
    """One GPU of continuous batching. State at `t`, a decode-step boundary: `steps` decode
    steps done so far; each active sequence finishes at a known step count, so the engine is
    only touched when one finishes or something arrives."""

    def __init__(self, sim: "Simulation"):
        m = sim.model
        self.sim, self.a, self.b = sim, m.step_fixed_s, m.step_per_seq_s
        self.max_seqs, self.prefill = m.max_seqs, m.prefill_s
        self.one_at_a_time = m.engine_calls in ("one_call", "whole_call")  # a new call waits for the last
        self.whole_call = m.engine_calls == "whole_call"  # a call's rollouts come back when it ends
        self.calls: deque[_Call] = deque()
        self.active: list[tuple[int, int, _Seq]] = []  # heap of (finish step, unique id, sequence)
        self.steps, self.t, self.version, self.token = 0, 0.0, 0, 0
        self.busy_s = self.weighted_s = 0.0

    def submit(self, call: _Call, now: float) -> None:
        self.calls.append(call)
        if len(self.active) < self.max_seqs:
            self.advance(now)
            self.admit()
            self.schedule()

    def load(self) -> int:
        """Samples given to this engine and not finished yet."""
        return len(self.active) + sum(len(c.waiting) for c in self.calls)

    def on_wake(self, now: float, token: int) -> None:
        if token == self.token:  # else superseded by a later schedule()
            self.advance(now)
            self.admit()
            self.schedule()

    def pause(self, now: float, duration: float, version: int) -> float:
        """Finish the current decode step, stop for `duration`, resume at `version`."""
        self.advance(now)
        self.t = max(self.t, now) + duration
        resumed = self.t
        self.version = version
        self.admit()
        self.schedule()
        return resumed

    def advance(self, now: float) -> None:
        """Move to the first step boundary at or after `now`, finishing sequences on the way."""
        while self.active and self.t < now:
            n = len(self.active)
            dt = self.a + self.b * n
            # steps to reach `now`; the slack absorbs rounding when `now` is a wake time we computed
            need = math.ceil((now - self.t) / dt - 1e-9)
            if need <= 0:
                break
            k = min(need, self.active[0][0] - self.steps)
            span = k * dt
            self.t += span
            self.steps += k
            self.busy_s += span
            self.weighted_s += span * self.sim.efficiency[n]
            if self.active[0][0] == self.steps:
                self._finish()
        if not self.active and self.t < now:
            self.t = now  # idle until now

    def admit(self) -> None:
        joined = 0
        while len(self.active) < self.max_seqs:
            seq = self._next_waiting()
            if seq is None:
                break
            seq.v_start, seq.started = self.version, self.steps
            # ties at a finish step break on a unique id, never on the _Seq itself
            heapq.heappush(self.active, (self.steps + seq.length, seq.gid * 65_536 + seq.idx, seq))
            joined += 1
        if joined:
            cost = joined * self.prefill
            self.t += cost
            self.busy_s += cost
            self.weighted_s += cost

    def schedule(self) -> None:
        self.token += 1
        if self.active:
            dt = self.a + self.b * len(self.active)
            self.sim.push(self.t + (self.active[0][0] - self.steps) * dt, WAKE, (self, self.token))

    def _next_waiting(self) -> Optional[_Seq]:
        while self.calls:
            head = self.calls[0]
            if head.waiting:
                return head.waiting.popleft()
            if self.one_at_a_time and head.outstanding:
                return None  # one call at a time: the next starts when this one has ended
            self.calls.popleft()
        return None

    def abort(self, now: float, floor: Optional[int], gids: set[int]) -> tuple[set[int], int]:
        """Stop the groups named and those with a sequence started below `floor`; returns every
        group stopped here and the tokens its sequences had decoded."""
        self.advance(now)
        doomed = set(gids) | {seq.gid for _, _, seq in self.active if floor is not None and seq.v_start < floor}
        here = {seq.gid for _, _, seq in self.active} | {seq.gid for c in self.calls for seq in c.waiting}
        doomed &= here
        if not doomed:
            return set(), 0
        tokens = sum(self.steps - seq.started for _, _, seq in self.active if seq.gid in doomed)
        gone = [seq for _, _, seq in self.active if seq.gid in doomed]
        self.active = [entry for entry in self.active if entry[2].gid not in doomed]
        heapq.heapify(self.active)
        for call in self.calls:
            gone += [seq for seq in call.waiting if seq.gid in doomed]
            call.waiting = deque(seq for seq in call.waiting if seq.gid not in doomed)
        for seq in gone:
            seq.call.outstanding -= 1
            self._release(seq.call)
        self.admit()
        self.schedule()
        return doomed, tokens

    def _release(self, call: "_Call") -> None:
        """whole_call: a call whose last sample has ended (or was aborted) hands back its rollouts."""
        if self.whole_call and not call.outstanding and call.done:
            done, call.done = call.done, []
            self.sim.push(self.t, ROLLOUTS, done)

    def _finish(self) -> None:
        out = []
        while self.active and self.active[0][0] == self.steps:
            seq = heapq.heappop(self.active)[2]
            rollout = self.sim.rollout(seq, self.version)
            call = seq.call
            call.outstanding -= 1
            if not self.whole_call:
                out.append(rollout)
                continue
            call.done.append(rollout)
            self._release(call)
        if out:
            self.sim.push(self.t, ROLLOUTS, out)


class Simulation:
    def __init__(self, spec: SimSpec):
        self._pool_next = 0  # "pool" dispatch: the engine that gets the next call's first shard
        self.replay = tuple(gid for step in spec.replay for gid in step)
        self.spec, self.model = spec, spec.model
        self.gate = StalenessGate(spec.max_staleness, spec.group_size, spec.staleness_rule)
        total = spec.warmup_steps + spec.steps
        # Without drain the scheduler believes the run goes on, so the last measured steps can
        # draw on later steps' groups as they would in the middle of a long run.
        planned = total if spec.drain else total + spec.max_staleness + 1
        self.scheduler = Scheduler(planned, spec.prompts_per_step, spec.group_size, spec.max_staleness, self.gate,
                                   spec.dynamic_sampling, lookahead=spec.lookahead)
        self.draws = _Draws(spec.model, spec.group_size, spec.seed)
        m = spec.model
        full = m.max_seqs / (m.step_fixed_s + m.step_per_seq_s * m.max_seqs)
        self.efficiency = [n / (m.step_fixed_s + m.step_per_seq_s * n) / full for n in range(m.max_seqs + 1)]
        self.engines = [_Engine(self) for _ in range(spec.gen_gpus)]
        self.events: list = []  # heap of (time, order, kind, payload)
        self.order = 0
        self.now = self.last_look = 0.0
        self.version = 0
        self.next_group = 0
        self.arrived: list[Rollout] = []  # delivered by the engines, not yet seen by the controller
        self.scored_ready: list[list[Rollout]] = []  # reward tickets done, not yet collected
        self.generating: dict[int, list[Rollout]] = {}  # group id -> members generated so far
        self.aborted: set[int] = set()  # groups aborted while generating
        self.stats = _Stats()

    # ---- the controller loop (cluster/rl/controller.py + cluster/rl/streaming.py) ----

    def run(self) -> SimResult:
        spec = self.spec
        step_start = self.now
        for step in range(1, spec.warmup_steps + spec.steps + 1):
            if step == spec.warmup_steps + 1:
                self.stats.open_window(self)
            groups = self._next_batch()
            self.stats.run_groups.append(tuple(self.draw_id(g.group_id) for g in groups))
            if step > spec.warmup_steps:
                self.stats.step(self, groups)
            self._train(groups)
            self._sync()
            self._abort_doomed()
            self.scheduler.lookahead.observe(self.now - step_start)  # as the controller does, in simulated seconds
            step_start = self.now
            if step > spec.warmup_steps:
                self.stats.step_end.append(self.now)
        return self.stats.result(self)

    def _next_batch(self) -> list[Group]:
        while True:
            self._start()
            groups = self._take()
            if groups is not None:
                return groups
            self._start()  # replacements for groups the take judged stale (as the controller does)
            self._wait()

    def _take(self) -> Optional[list[Group]]:
        """scheduler.take(version), timed."""
        t0 = time.perf_counter()
        groups = self.scheduler.take(self.version)
        spent = time.perf_counter() - t0
        self.stats.take_calls += 1
        self.stats.ctl_s += spent
        self.stats.take_s += spent
        return groups

    def _start(self) -> None:
        t0 = time.perf_counter()
        steps = self.scheduler.steps_to_start(self.version)
        self.stats.ctl_s += time.perf_counter() - t0
        for _ in steps:
            self._dispatch(self.spec.prompts_per_step)
        t0 = time.perf_counter()
        owed = self.scheduler.take_owed()  # after the steps' groups are issued, as Streaming.start does
        self.stats.ctl_s += time.perf_counter() - t0
        if owed:
            self._dispatch(owed)

    def _dispatch(self, n: int) -> None:
        gids = range(self.next_group + 1, self.next_group + n + 1)
        self.next_group += n
        t0 = time.perf_counter()
        for gid in gids:
            self.scheduler.expect(gid)
        self.stats.ctl_s += time.perf_counter() - t0
        for engine, shard in self._split(gids):
            call = _Call()
            for gid in shard:
                lengths = self.group_draws(gid)[0]
                call.waiting.extend(_Seq(gid, k, length, call) for k, length in enumerate(lengths))
            call.outstanding = len(call.waiting)
            engine.submit(call, self.now)

    def _split(self, gids: range) -> list[tuple[_Engine, list[int]]]:
        """"pool": RolloutPool's split (shard i to worker (start + i) mod n, the start rotating
        over calls); "least_loaded": each group to the engine with the fewest samples not yet finished."""
        engines = self.engines
        if self.spec.dispatch == "pool":
            n = len(engines)
            shards = [list(gids[i::n]) for i in range(n) if gids[i::n]]
            first, self._pool_next = self._pool_next, (self._pool_next + len(shards)) % n
            return [(engines[(first + i) % n], shard) for i, shard in enumerate(shards)]
        load = [(e.load(), i) for i, e in enumerate(engines)]
        heapq.heapify(load)
        shards: dict[int, list[int]] = {}
        for gid in gids:
            n, i = heapq.heappop(load)
            shards.setdefault(i, []).append(gid)
            heapq.heappush(load, (n + self.spec.group_size, i))
        return [(engines[i], shard) for i, shard in shards.items()]

    def _wait(self) -> None:
        """Block until something arrives (not sooner than one tick after the last look), then
        assemble groups, submit complete ones for reward, and collect what was scored."""
        target = self.last_look + self.model.controller_tick_s
        while not (self.arrived or self.scored_ready):
            if not self.events:
                raise RuntimeError(f"simulated controller stalled: nothing in flight, {len(self.scheduler.ready)} "
                                   f"groups ready, {self.scheduler.in_flight()} expected")
            self._background(max(self.events[0][0], target))
        self.last_look = self.now
        arrived, self.arrived = self.arrived, []
        for r in arrived:
            if r.group_id in self.aborted:  # finished as the abort reached its engine: not used
                continue
            members = self.generating.setdefault(r.group_id, [])
            members.append(r)
            if len(members) == self.spec.group_size:
                del self.generating[r.group_id]
                members.sort(key=lambda m: m.sample_index)
                self.push(self.now + max(self.group_draws(r.group_id)[1]), REWARD, members)
        tickets, self.scored_ready = self.scored_ready, []
        pairs = [(r, self._reward(r)) for members in tickets for r in members]
        t0 = time.perf_counter()
        for rollout, reward in pairs:
            self.scheduler.scored(rollout, reward)
        self.stats.ctl_s += time.perf_counter() - t0
        self.stats.scored += len(pairs)

    def _train(self, groups: list[Group]) -> None:
        m, spec = self.model, self.spec
        tokens = sum(m.prompt_len + self.length(r) for g in groups for r in g.rollouts)
        duration = tokens * m.train_s_per_token / spec.learners + m.train_fixed_s
        self.stats.learner_busy_s += spec.learners * duration
        if spec.placement == "colocated":  # the engines' GPUs are the learners'
            for engine in self.engines:
                engine.pause(self.now, duration, engine.version)
        self._background(self.now + duration)

    def _sync(self) -> None:
        """Version + 1 leaves the learners and reaches every engine host while the engines
        decode on (export, receive); then each engine stops after its current decode step,
        swaps, and resumes its in-flight sequences under it. The controller returns when every
        engine has it. Colocated, the engines wait out the whole sync."""
        sync, version = self.model.sync, self.version + 1
        if self.spec.placement == "colocated":
            swap = sync.total_s
        else:
            swap = sync.phase_s("swap")
            self._background(self.now + sync.phase_s("export") + sync.phase_s("receive"))
        start = self.now
        self._background(max([start + swap] + [e.pause(start, swap, version) for e in self.engines]))
        self.version = version

    def _abort_doomed(self) -> None:
        """Streaming.abort_doomed: every group that can no longer meet the bound at the new
        version leaves its engine (module doc)."""
        if not self.spec.abort_doomed:
            return
        floor = self.version - self.spec.max_staleness
        if self.spec.staleness_rule != "oldest":
            return  # an incomplete group's newest token is yet to come: it is never doomed
        known = {gid for gid, members in self.generating.items() if min(r.min_version for r in members) < floor}
        doomed, tokens = set(known), 0
        for engine in self.engines:
            stopped, spent = engine.abort(self.now, floor, known)
            doomed |= stopped
            tokens += spent
        t0 = time.perf_counter()
        for gid in sorted(doomed):
            members = self.generating.pop(gid, [])
            self.aborted.add(gid)
            self.scheduler.abort(gid, sum(self.length(r) for r in members))
        self.scheduler.wasted(tokens)
        self.stats.ctl_s += time.perf_counter() - t0
        self.stats.aborted_tokens += tokens

    # ---- the simulated world ----

    def push(self, t: float, kind: int, payload) -> None:
        self.order += 1
        heapq.heappush(self.events, (t, self.order, kind, payload))

    def _background(self, until: float) -> None:
        """What happens while the controller is busy or waiting: engines decode, rollouts
        arrive in the streams, rewards finish."""
        events = self.events
        while events and events[0][0] <= until:
            t, _, kind, payload = heapq.heappop(events)
            if kind == WAKE:
                payload[0].on_wake(t, payload[1])
            elif kind == ROLLOUTS:
                self.arrived += payload
            else:
                self.scored_ready.append(payload)
        self.now = max(self.now, until)

    def draw_id(self, gid: int) -> int:
        """The draws a group gets: its own, or under `replay` the n-th replayed group's."""
        return self.replay[gid - 1] if self.replay else gid

    def group_draws(self, gid: int) -> tuple[list[int], list[float], list[float]]:
        return self.draws.group(self.draw_id(gid))

    def length(self, r: Rollout) -> int:
        return self.group_draws(r.group_id)[0][r.sample_index]

    def rollout(self, seq: _Seq, version: int) -> Rollout:
        self.stats.generated += 1
        self.stats.generated_len += seq.length
        reason = "length" if seq.length >= self.model.max_len else "stop"
        # Two stand-in tokens (first, last) carry the version spans; the length is seq.length.
        return Rollout(group_id=seq.gid, prompt_id=seq.gid, sample_index=seq.idx, prompt="", answer="",
                       prompt_ids=_PROMPT_IDS, response_ids=(0, 0), response_text="", logprobs=(0.0, 0.0),
                       versions=(seq.v_start, version), finish_reason=reason)

    def _reward(self, r: Rollout) -> RewardResult:
        _, latencies, rewards = self.group_draws(r.group_id)
        value, latency = rewards[r.sample_index], latencies[r.sample_index]
        return RewardResult(group_id=r.group_id, sample_index=r.sample_index, reward=value, correct=value > 0,
                            format_ok=True, latency_s=latency)


class _Stats:
    """Counters over the measured window (controller costs over the whole run)."""

    def __init__(self):
        self.learner_busy_s = self.ctl_s = self.take_s = 0.0
        self.take_calls = self.scored = self.generated = self.generated_len = self.aborted_tokens = 0
        self.start = 0.0
        self.engine_start: list[tuple[float, float]] = []
        self.learner_start = 0.0
        self.gen_start = (0, 0, 0, 0)
        self.gate_start: tuple[Counter, int, int] = (Counter(), 0, 0)
        self.trained: list[Rollout] = []
        self.step_groups: list[tuple[int, ...]] = []
        self.run_groups: list[tuple[int, ...]] = []
        self.step_end: list[float] = []

    def open_window(self, sim: Simulation) -> None:
        self.start = sim.now
        self.engine_start = [(e.busy_s, e.weighted_s) for e in sim.engines]
        self.learner_start = self.learner_busy_s
        self.gen_start = (self.generated, self.generated_len, self.aborted_tokens, sim.scheduler.aborted_groups)
        self.gate_start = (Counter(sim.gate.histogram), sim.gate.dropped, sim.scheduler.stale_groups)

    def step(self, sim: Simulation, groups: list[Group]) -> None:
        self.step_groups.append(tuple(g.group_id for g in groups))
        self.trained += [r for g in groups for r in g.rollouts]

    def result(self, sim: Simulation) -> SimResult:
        spec, wall = sim.spec, sim.now - self.start
        busy = weighted = 0.0
        for e, (b0, w0) in zip(sim.engines, self.engine_start):
            busy += min(e.busy_s - b0, wall)  # an engine may be booked up to one step past the end
            weighted += min(e.weighted_s - w0, wall)
        learners = self.learner_busy_s - self.learner_start
        capacity = spec.gpus * wall
        generated, generated_len = self.generated - self.gen_start[0], self.generated_len - self.gen_start[1]
        generated_tokens = generated_len + self.aborted_tokens - self.gen_start[2]
        ends = [self.start] + self.step_end
        hist0, dropped0, stale0 = self.gate_start
        histogram = sim.gate.histogram - hist0
        staleness = {"max_allowed": spec.max_staleness, "rule": spec.staleness_rule, "lookahead": spec.lookahead,
                     "max_seen": max(histogram, default=0), "oldest_seen": sim.gate.oldest_seen,
                     "dropped": sim.gate.dropped - dropped0,
                     "histogram": {str(k): v for k, v in sorted(histogram.items())}}
        tokens = sum(sim.length(r) for r in self.trained)
        stale = sim.scheduler.stale_groups - stale0
        return SimResult(
            spec=spec, wall_s=wall, samples=len(self.trained), samples_per_s=len(self.trained) / wall,
            tokens=tokens, tokens_per_s=tokens / wall,
            step_s=[b - a for a, b in zip(ends, ends[1:])],
            utilisation=(busy + learners) / capacity, weighted_utilisation=(weighted + learners) / capacity,
            generated=generated, generated_tokens=generated_tokens,
            useful_fraction=tokens / max(generated_tokens, 1),
            aborted_groups=sim.scheduler.aborted_groups - self.gen_start[3], mean_len_trained=tokens / len(self.trained),
            mean_len_generated=generated_len / max(generated, 1),
            partial_frac=float(np.mean([r.versions[0] != r.versions[-1] for r in self.trained])),
            stale_groups=stale, dropped_frac=stale / (stale + sum(map(len, self.step_groups))),
            staleness=staleness,
            controller_s=self.ctl_s, controller_ms_per_sample=1e3 * self.ctl_s / max(self.scored, 1),
            take_calls=self.take_calls, take_ms_mean=1e3 * self.take_s / max(self.take_calls, 1),
            step_groups=self.step_groups, run_groups=tuple(self.run_groups))
