"""RolloutWorker actors (one engine each) and the RolloutPool that fans requests out.

A worker runs generation in one concurrency group and weight updates in another, so an
update can arrive while a generation call is in flight. What happens then is the
`in_flight` mode: `interrupt` swaps the weights at the next decode step (the `hf` engine
re-encodes the in-flight sequences under the new weights; vLLM pauses them and resumes),
so a rollout's tokens can carry two versions; `finish` lets the in-flight call finish on
the weights it started with and applies the update before the next call.

Both engines stream: each rollout comes back as it finishes. A worker in `interrupt` mode
runs several calls at once (CALLS_IN_FLIGHT), all feeding its engine's one continuous batch
(vLLM's; the `hf` engine's decode thread), so a call's long tail never holds the next call
back. The `hf` engine does so only in asynchronous runs: a synchronous run's calls stay in
order, one at a time, so its batches, and so its rollouts, never depend on the clock.
`abort` (control) stops groups the controller found doomed (cluster/rl/streaming.py).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

import ray

from rollout.config import EngineSetup, RolloutConfig, vllm_options
from rollout.devices import freeze_setup_objects, release_memory, resident_bytes
from rollout.types import AbortResult, EngineError, EngineMemory, GenerationRequest, Rollout, SamplingParams
from rollout.transfer.buckets import Layout, WeightSyncError, unpack
from rollout.transfer.collective import TransferGroup
from rollout.transfer.object_store import StoredUpdate, fetch_update

# Generation calls a worker runs at once in `interrupt` mode (more wait in Ray's queue):
# enough for every step the staleness budget starts plus replacement calls. `finish` mode
# keeps one, since its promise is that a call ends on the weights it started with.
CALLS_IN_FLIGHT = 8


def calls_in_flight(cfg: RolloutConfig, setup: EngineSetup = EngineSetup()) -> int:
    if cfg.in_flight != "interrupt" or (cfg.engine == "hf" and not setup.asynchronous):
        return 1
    return CALLS_IN_FLIGHT


def make_engine(cfg: RolloutConfig, model_path: str, dtype: str, setup: EngineSetup = EngineSetup()):
    """The engine named by rollout.engine, imported only when selected (vLLM is an optional extra)."""
    if cfg.engine == "hf":
        from rollout.devices import actor_device
        from rollout.hf_engine import HFEngine

        return HFEngine(model_path, dtype, actor_device("rollout worker (hf engine)"), setup.lora, setup.adapter,
                        cfg.env_spec(), setup.cpu_linear)
    if cfg.engine == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype, cfg.threads_per_worker, vllm_options(cfg, setup), cfg.env_spec())
    raise ValueError(f"rollout.engine '{cfg.engine}' is not an engine (valid: hf, vllm)")


class RolloutWorker:
    """Ray actor body: owns one engine and the policy version of its weights."""

    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str, setup: EngineSetup = EngineSetup()):
        import torch

        torch.set_num_threads(cfg.threads_per_worker)
        self.engine = make_engine(cfg, model_path, dtype, setup)
        freeze_setup_objects()  # sleep() collects garbage: only what is newer than the engine
        # `hf` swaps weights at its own decode steps (safe points); vLLM pauses and resumes its
        # in-flight requests itself when weights are loaded.
        self.engine_pauses = getattr(self.engine, "pauses_itself", False)
        self.in_flight = cfg.in_flight
        self.version = setup.version  # the version of the weights in the engine
        self.latest = setup.version  # the newest verified update received (== version unless one waits)
        self._pending: Optional[tuple[int, dict]] = None  # verified, waiting for a safe point
        self._calls = 0  # generation calls running now
        self._cond = threading.Condition()
        self.swaps_in_flight = 0  # updates applied in the middle of a generation call
        self.transfer: Optional[TransferGroup] = None  # rollout.weight_transfer 'collective'
        self.layout: Optional[Layout] = None
        self.asleep = 0  # colocated placement: the sleep level while the learners train, else 0
        # No usable weights until an update loads: woke from a level-2 sleep, or restarted
        # (awaiting: the update it waits for is `version` itself, the run's current weights).
        self.needs_weights = self.awaiting = setup.awaiting

    # ---- generation (concurrency group "generate": calls_in_flight() calls at a time) ----

    @ray.method(concurrency_group="generate")
    def generate(self, requests: list[GenerationRequest], params: SamplingParams, batch_size: int) -> list[Rollout]:
        return [r for part in self.stream(requests, params, batch_size) for r in part]

    @ray.method(concurrency_group="generate")
    def stream(self, requests: list[GenerationRequest], params: SamplingParams,
               batch_size: int) -> Iterator[list[Rollout]]:
        """Finished rollouts as they finish (call with num_returns="streaming")."""
        with self._cond:
            self._apply_pending()  # `finish` mode: an update that waited for the last call lands now
            if self.asleep or self.needs_weights:
                raise EngineError("rollout worker asked to generate " + (
                    "while asleep (colocated placement): wake_up() first" if self.asleep else
                    "before a weight update filled its weights (after a level-2 sleep or a restart)"))
            self._calls += 1
        try:
            yield from self.engine.stream(requests, params, self._safe_point, batch_size)
        finally:
            with self._cond:
                self._calls -= 1
                self._cond.notify_all()

    def _safe_point(self) -> int:
        """Between two decode steps: in `interrupt` mode, a waiting update is applied here."""
        if self.in_flight == "interrupt" and self._pending is not None:
            with self._cond:
                if self._apply_pending():
                    self.swaps_in_flight += 1
                self._cond.notify_all()
        return self.version

    def _apply_pending(self) -> bool:
        if self._pending is None:
            return False
        version, arrays = self._pending
        self.engine.load_weights(arrays, version)
        self.version, self._pending, self.needs_weights, self.awaiting = version, None, False, False
        return True

    # ---- control (concurrency group "control": runs while a generation call is in flight) ----

    @ray.method(concurrency_group="control")
    def abort(self, floor: Optional[int], group_ids: tuple[int, ...] = ()) -> AbortResult:
        """Stop the groups named and those whose oldest token is below `floor` (rollout/types.py:
        doomed); their samples are left out of every stream."""
        return self.engine.abort(floor, tuple(group_ids))

    @ray.method(concurrency_group="control")
    def set_layout(self, layout: Layout) -> None:
        """The buckets every update travels in (rollout/transfer/buckets.py), once per run."""
        self.layout = layout

    @ray.method(concurrency_group="control")
    def update_weights(self, update: StoredUpdate) -> float:
        """Fetch and check one update from the object store (version == the last one + 1, every
        bucket's fingerprint), then load it as _stage says. A failed check raises and leaves
        the old weights in place."""
        t0 = time.perf_counter()
        self._check_next(update.version)
        self._stage(update.version, fetch_update(self.layout, update, getattr(self.engine, "device", "cpu")))
        return time.perf_counter() - t0

    def _check_next(self, version: int) -> None:
        if self.asleep:
            raise WeightSyncError(f"weight update {version} reached a sleeping engine (colocated placement "
                                  "wakes it before the sync)")
        want = self.latest if self.awaiting else self.latest + 1
        if version != want:
            raise WeightSyncError(f"weight update has version {version}, receiver expected {want}"
                                  + (" (a restarted worker takes the run's current weights)" if self.awaiting else ""))

    @ray.method(concurrency_group="control")
    def open_transfer(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                      layout: Layout) -> None:
        """Join learner rank 0's weight-transfer group as engine `rank` (rollout/transfer/); gloo's
        traffic stays on loopback when the store is there (the embedded cluster)."""
        bind_host = host if host == "127.0.0.1" else ray.util.get_node_ip_address()
        if hasattr(self.engine, "open_collective"):  # vLLM: its own worker process joins the group
            self.engine.open_collective(host, port, rank, world_size, backend, timeout_s, bind_host, layout)
        else:
            if self.transfer is not None:  # formed again (an engine was replaced)
                self.transfer.close()
            self.transfer = TransferGroup(host, port, rank, world_size, backend, timeout_s, bind_host)
        self.layout = layout

    @ray.method(concurrency_group="control")
    def receive_weights(self, version: int) -> float:
        """Receive update `version` bucket by bucket from the learners' broadcast, check each
        (version, order, fingerprint; rollout/transfer/buckets.py), then load the whole update
        as update_weights does. Any failed check raises and leaves the old weights in place."""
        t0 = time.perf_counter()
        self._check_next(version)
        if self.transfer is None:  # vLLM: received and checked inside its worker, loaded by _stage
            self._stage(version, self.engine.receive_collective(version))
        else:
            self._stage(version, self.transfer.receive(self.layout, version, getattr(self.engine, "device", "cpu")))
        return time.perf_counter() - t0

    @ray.method(concurrency_group="control")
    def receive_ipc(self, version: int, buckets: tuple) -> float:
        """`ipc`: open the learner's buckets on this GPU (rollout/transfer/ipc.py), check each,
        and copy the tensors into the engine at once: the learner frees them when this returns,
        so an update cannot wait for a safe point (colocated placement syncs with the engine idle)."""
        from rollout.transfer.ipc import open_shared

        t0 = time.perf_counter()
        self._check_next(version)
        if len(buckets) != len(self.layout.buckets):
            raise WeightSyncError(f"weight update v{version}: {len(buckets)} buckets, the layout has "
                                  f"{len(self.layout.buckets)}")
        tensors: dict = {}
        for index, bucket in enumerate(buckets):
            tensors.update(unpack(self.layout, index, open_shared(bucket), version))
        with self._cond:
            if self._calls:
                raise WeightSyncError(f"weight update v{version} over 'ipc' reached an engine that is generating")
            self.latest = version
            self._pending = (version, tensors)
            self._apply_pending()
        return time.perf_counter() - t0

    def _stage(self, version: int, weights: dict) -> None:
        """A verified update: load it now if idle; mid-call at the next decode step (`interrupt`;
        returns once swapped); or when the in-flight call ends (`finish`; returns at once)."""
        with self._cond:
            self.latest = version
            self._pending = (version, weights)  # a newer full update replaces an older waiting one
            if not self._calls:
                self._apply_pending()
            elif self.in_flight == "interrupt" and self.engine_pauses:
                self._apply_pending()  # vllm pauses its in-flight requests, loads, resumes
                self.swaps_in_flight += 1
            elif self.in_flight == "interrupt":
                self._cond.wait_for(lambda: self._pending is None or not self._calls)
                if self._pending is not None:  # the call ended before a decode step came
                    self._apply_pending()

    # ---- colocated placement: the engine sleeps while the learners train on its device ----

    @ray.method(concurrency_group="control")
    def sleep(self, level: int) -> EngineMemory:
        """Release the engine's device memory (level 1: weights to host memory; 2: dropped) and
        say how much went, in weight bytes and in this process's resident memory."""
        with self._cond:
            if self._calls or self.asleep:
                raise EngineError("sleep() while " + ("generating" if self._calls else "already asleep"))
            before = resident_bytes()
            released = self.engine.sleep(level)
            release_memory(getattr(self.engine, "device", "cpu"))
            self.asleep = level
            return EngineMemory(released, before, resident_bytes())

    @ray.method(concurrency_group="control")
    def wake_up(self) -> None:
        """Back on the device; after level 2 the engine waits for a weight update to generate."""
        with self._cond:
            if not self.asleep:
                raise EngineError("wake_up() on an engine that is not asleep")
            self.engine.wake_up()
            self.needs_weights, self.asleep = self.asleep == 2, 0

    @ray.method(concurrency_group="control")
    def get_version(self) -> int:
        return self.version

    @ray.method(concurrency_group="control")
    def stats(self) -> dict:
        return {"version": self.version, "latest": self.latest, "swaps_in_flight": self.swaps_in_flight}

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        return os.getpid()


@dataclass(frozen=True, eq=False)
class Shard:
    """One streaming generation call: which worker runs which requests (pool.stream)."""

    stream: object  # ray ObjectRefGenerator: lists of rollouts as they finish
    worker: int  # index into RolloutPool.workers
    handle: object  # the actor it went to (a replaced worker's other calls fail too: one restart for all)
    requests: tuple[GenerationRequest, ...]
    params: SamplingParams


def balance(requests: list[GenerationRequest], outstanding: list[int], first: int) -> list[list[GenerationRequest]]:
    """Each request (a group: its samples stay together on one worker) to the worker with the
    least outstanding work, counting what this call has given it so far; ties go to the workers
    in turn from `first`. With equal loads this is the round robin; a worker that has drained
    its queue gets the next work before one that still has a queue."""
    n = len(outstanding)
    load, turn = list(outstanding), [(first + i) % n for i in range(n)]
    out: list[list[GenerationRequest]] = [[] for _ in range(n)]
    for req in requests:
        w = min(turn, key=lambda i: load[i])  # the first in turn among the least loaded
        out[w].append(req)
        load[w] += len(req.indices())
        turn.remove(w)
        turn.append(w)
    return out


class RolloutPool:
    """Driver-side handle on N rollout workers; each call's requests go to the workers with the
    least outstanding work (balance), order kept.

    A worker that dies (killed, OOM, node lost) is replaced, at most `max_restarts` times in
    a run (cluster.max_actor_restarts): the new one starts from the model on disk, loads the
    run's current weights (`refill`, checked like any update) before it serves, and the dead
    one's unfinished samples are generated again, with the same seeds (`recover`)."""

    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str = "float32", setup: EngineSetup = EngineSetup(),
                 actor_options: list[dict] | None = None, max_restarts: int = 0, wait: bool = True):
        # actor_options: per-worker Ray options (placement group bundle, resources) from cluster/placement.py.
        # wait False: the workers load while the caller starts other roles; ready() waits for them.
        threads = cfg.threads_per_worker
        base = dict(num_cpus=threads, runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
        extra = actor_options or [{} for _ in range(cfg.num_workers)]
        self._actor = ray.remote(concurrency_groups={"generate": calls_in_flight(cfg, setup),
                                                      "control": 1})(RolloutWorker)
        self._options = [{**base, **extra[i]} for i in range(cfg.num_workers)]
        self._args = (model_path, cfg, dtype)
        self.setup = setup
        self.workers = [self._actor.options(**o).remote(*self._args, setup) for o in self._options]
        self.batch_size = cfg.batch_size
        self._next = 0  # the worker first in turn for the next call's ties
        # Samples dispatched to each worker and not back yet: where the next work goes (balance).
        self.outstanding = [0] * cfg.num_workers
        self.version = setup.version  # the newest update every worker has verified (cluster/weights.py)
        self.layout: Optional[Layout] = None
        # The run's current weights as an object-store update, for a restarted worker (set by
        # cluster/weights.py; None where the carrier cannot bring a new worker in).
        self.refill: Optional[Callable[[int], StoredUpdate]] = None
        self.refill_problem = "no weight source was given to the pool"
        self.rejoin: Optional[Callable[[], None]] = None  # `collective`: form the transfer group again
        self.max_restarts = max_restarts
        self.restarts = 0  # workers replaced after they died
        self.reissued = 0  # samples generated again because their worker died
        self._starting = [w.get_version.remote() for w in self.workers]
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait until every worker has loaded its engine; a start-up error surfaces here."""
        ray.get(self._starting)

    def _shards(self, requests: list[GenerationRequest]) -> list[tuple[int, tuple[GenerationRequest, ...]]]:
        """A call's requests split by outstanding work (balance), the ties starting one worker
        further each call, so small calls (replacement groups) do not all land on the first
        worker. Seeds are per sample (rollout/types.py: sample_seed), so the rollouts do not
        depend on which worker (all hold the same weights) runs them."""
        parts = balance(requests, self.outstanding, self._next)
        self._next = (self._next + 1) % len(self.workers)
        shards = [(w, tuple(part)) for w, part in enumerate(parts) if part]
        for w, shard in shards:
            self.outstanding[w] += sum(len(r.indices()) for r in shard)
        return shards

    def arrived(self, worker: int, samples: int) -> None:
        """`samples` of worker's outstanding work came back (or will not: a finished or dead call)."""
        self.outstanding[worker] = max(0, self.outstanding[worker] - samples)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[Rollout]:
        calls = {self.workers[w].generate.remote(list(shard), params, self.batch_size): (w, shard)
                 for w, shard in self._shards(requests)}
        rollouts = []
        while calls:
            (done,), _ = ray.wait(list(calls), num_returns=1)
            w, shard = calls.pop(done)
            try:
                rollouts += ray.get(done)
                self.arrived(w, sum(len(r.indices()) for r in shard))
            except ray.exceptions.RayActorError as err:  # the whole shard again, on its replacement
                self.restart(w, f"{type(err).__name__} during a generation call")
                self.reissued += sum(len(r.indices()) for r in shard)
                self.outstanding[w] += sum(len(r.indices()) for r in shard)
                calls[self.workers[w].generate.remote(list(shard), params, self.batch_size)] = (w, shard)
        order = {req.group_id: i for i, req in enumerate(requests)}
        return sorted(rollouts, key=lambda r: (order[r.group_id], r.sample_index))

    def stream(self, requests: list[GenerationRequest], params: SamplingParams) -> list[Shard]:
        """The same split and seeds as generate(), as one streaming call per worker shard: each
        yields lists of rollouts as they finish."""
        return [Shard(self.workers[w].stream.options(num_returns="streaming").remote(list(shard), params,
                                                                                   self.batch_size),
                      w, self.workers[w], shard, params) for w, shard in self._shards(requests)]

    def recover(self, shard: Shard, arrived: Callable[[int], set], cause: str) -> list[Shard]:
        """`shard`'s worker died: replace it, and stream again the samples that never arrived
        (`arrived(group_id)`: the sample indices of that group received so far)."""
        if self.workers[shard.worker] is shard.handle:  # else: replaced already, for another of its calls
            self.restart(shard.worker, cause)
        missing = []
        for req in shard.requests:
            todo = tuple(k for k in req.indices() if k not in arrived(req.group_id))
            if todo:
                missing.append(replace(req, sample_indices=todo))
        self.reissued += sum(len(r.sample_indices) for r in missing)
        return self.stream(missing, shard.params) if missing else []

    def restart(self, i: int, cause: str, update: Optional[StoredUpdate] = None) -> None:
        """Replace dead worker i by a fresh one holding the run's weights: `update` if given (a
        sync in progress), else the current version from `refill`. Raises EngineError once the
        restart budget is spent or when no weights can reach a new worker."""
        if self.restarts >= self.max_restarts:
            raise EngineError(f"rollout worker {i} died ({cause}) and the restart budget is spent "
                              f"({self.restarts} restarts, cluster.max_actor_restarts={self.max_restarts}); "
                              "the worker's log (Ray's logs directory) says why it died")
        if update is None and self.refill is None:
            raise EngineError(f"rollout worker {i} died ({cause}) and cannot be restarted: {self.refill_problem}")
        self.restarts += 1
        self.outstanding[i] = 0  # its calls died with it; what is re-issued is counted again
        ray.kill(self.workers[i], no_restart=True)
        version = self.version if update is None else update.version
        new = self._actor.options(**self._options[i]).remote(*self._args, replace(self.setup, version=version,
                                                                                  awaiting=True))
        if self.layout is not None:
            ray.get(new.set_layout.remote(self.layout))
        ray.get(new.update_weights.remote(update or self.refill(version)))  # verified before it serves
        self.workers[i] = new
        if self.rejoin is not None:
            self.rejoin()

    def abort(self, floor: Optional[int], group_ids: tuple[int, ...] = ()) -> AbortResult:
        """Every worker stops the groups named and those whose oldest token is below `floor`;
        what they stopped, together (their samples stay outstanding until their streams end). A
        worker that died is skipped: its streams fail and are recovered without the aborted groups."""
        results = []
        for future in [w.abort.remote(floor, tuple(group_ids)) for w in self.workers]:
            try:
                results.append(ray.get(future))
            except ray.exceptions.RayActorError:
                continue
        return AbortResult(tuple(sorted({g for r in results for g in r.groups})), sum(r.tokens for r in results))

    def set_layout(self, layout: Layout) -> None:
        self.layout = layout  # the buckets updates travel in, for the sender's side too
        ray.get([w.set_layout.remote(layout) for w in self.workers])

    def update_weights(self, update: StoredUpdate) -> list[float]:
        """Every worker fetches and checks `update`; one that died is replaced by one holding it."""
        times = []
        for i, future in enumerate([w.update_weights.remote(update) for w in self.workers]):
            try:
                times.append(ray.get(future))
            except ray.exceptions.RayActorError as err:
                self.restart(i, f"{type(err).__name__} during weight update v{update.version}", update)
        self.version = update.version
        return times

    def open_transfer(self, host: str, port: int, backend: str, timeout_s: float, layout: Layout) -> list:
        """Futures: worker i joins the weight-transfer group as rank i + 1 (rank 0: the sender)."""
        world_size = len(self.workers) + 1
        return [w.open_transfer.remote(host, port, i + 1, world_size, backend, timeout_s, layout)
                for i, w in enumerate(self.workers)]

    def receive_ipc(self, version: int, handles: list[tuple]) -> None:
        """`ipc`: engine k opens learner rank k's handles (the two share bundle k and its GPU)."""
        ray.get([w.receive_ipc.remote(version, h) for w, h in zip(self.workers, handles)])

    def receive_weights(self, version: int) -> list:
        """Futures of every worker's receive (the learners broadcast at the same time)."""
        return [w.receive_weights.remote(version) for w in self.workers]

    def sleep(self, level: int) -> list[EngineMemory]:
        return ray.get([w.sleep.remote(level) for w in self.workers])

    def wake_up(self) -> None:
        ray.get([w.wake_up.remote() for w in self.workers])

    def versions(self) -> list[int]:
        return ray.get([w.get_version.remote() for w in self.workers])

    def stats(self) -> list[dict]:
        """Each live worker's counters: one that died and is not replaced yet (the loop finds out
        when it next uses it) is left out, and a replaced worker's counts went with it."""
        out = []
        for future in [w.stats.remote() for w in self.workers]:
            try:
                out.append(ray.get(future))
            except ray.exceptions.RayActorError:
                continue
        return out

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
