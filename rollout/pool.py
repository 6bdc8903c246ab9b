"""RolloutWorker actors (one engine each) and the RolloutPool that fans requests out.

A worker runs generation in one concurrency group and weight updates in another, so an
update can arrive while a generation call is in flight. What happens then is the
`in_flight` mode: `interrupt` swaps the weights at the next decode step (the `hf` engine
re-encodes the in-flight sequences under the new weights; vLLM pauses them and resumes),
so a rollout's tokens can carry two versions; `finish` lets the in-flight call finish on
the weights it started with and applies the update before the next call.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterator, Optional

import ray

from rollout.config import EngineSetup, RolloutConfig, vllm_options
from rollout.devices import freeze_setup_objects, release_memory, resident_bytes
from rollout.types import EngineError, EngineMemory, GenerationRequest, Rollout, SamplingParams
from rollout.transfer.buckets import Layout, WeightSyncError, unpack
from rollout.transfer.collective import TransferGroup
from rollout.transfer.object_store import StoredUpdate, fetch_update

def make_engine(cfg: RolloutConfig, model_path: str, dtype: str, setup: EngineSetup = EngineSetup()):
    """The engine named by rollout.engine, imported only when selected (vLLM is an optional extra)."""
    if cfg.engine == "hf":
        from rollout.devices import actor_device
        from rollout.hf_engine import HFEngine

        return HFEngine(model_path, dtype, actor_device("rollout worker (hf engine)"))
    if cfg.engine == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype, cfg.threads_per_worker, vllm_options(cfg, setup))
    raise ValueError(f"rollout.engine '{cfg.engine}' is not an engine (valid: hf, vllm)")


class RolloutWorker:
    """Ray actor body: owns one engine and the policy version of its weights."""

    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str, setup: EngineSetup = EngineSetup()):
        import torch

        torch.set_num_threads(cfg.threads_per_worker)
        self.engine = make_engine(cfg, model_path, dtype, setup)
        freeze_setup_objects()  # sleep() collects garbage: only what is newer than the engine
        # `hf` streams and swaps weights at its own decode steps; vLLM returns a call's rollouts
        # together and pauses/resumes in-flight requests itself when weights are loaded.
        self.engine_streams = hasattr(self.engine, "stream")
        self.in_flight = cfg.in_flight
        self.version = setup.version  # the version of the weights in the engine
        self.latest = setup.version  # the newest verified update received (== version unless one waits)
        self._pending: Optional[tuple[int, dict]] = None  # verified, waiting for a safe point
        self._generating = False
        self._cond = threading.Condition()
        self.swaps_in_flight = 0  # updates applied in the middle of a generation call
        self.transfer: Optional[TransferGroup] = None  # rollout.weight_transfer 'collective'
        self.layout: Optional[Layout] = None
        self.asleep = 0  # colocated placement: the sleep level while the learners train, else 0
        self.needs_weights = False  # woke from a level-2 sleep: no weights until the next update

    # ---- generation (concurrency group "generate": one call at a time) ----

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
                    "after waking from a level-2 sleep, before a weight update refilled its weights"))
            self._generating = True
        try:
            if self.engine_streams:
                yield from self.engine.stream(requests, params, self._safe_point, batch_size)
            else:
                yield self.engine.generate(requests, params, self.version, batch_size)
        finally:
            with self._cond:
                self._generating = False
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
        self.engine.load_weights(arrays)
        self.version, self._pending, self.needs_weights = version, None, False
        return True

    # ---- control (concurrency group "control": runs while a generation call is in flight) ----

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
        if version != self.latest + 1:
            raise WeightSyncError(f"weight update has version {version}, receiver expected {self.latest + 1}")

    @ray.method(concurrency_group="control")
    def open_transfer(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                      layout: Layout) -> None:
        """Join learner rank 0's weight-transfer group as engine `rank` (rollout/transfer/); gloo's
        traffic stays on loopback when the store is there (the embedded cluster)."""
        bind_host = host if host == "127.0.0.1" else ray.util.get_node_ip_address()
        if hasattr(self.engine, "open_collective"):  # vLLM: its own worker process joins the group
            self.engine.open_collective(host, port, rank, world_size, backend, timeout_s, bind_host, layout)
        else:
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
            if self._generating:
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
            if not self._generating:
                self._apply_pending()
            elif self.in_flight == "interrupt" and not self.engine_streams:
                self._apply_pending()  # vllm pauses its in-flight requests, loads, resumes
                self.swaps_in_flight += 1
            elif self.in_flight == "interrupt":
                self._cond.wait_for(lambda: self._pending is None or not self._generating)
                if self._pending is not None:  # the call ended before a decode step came
                    self._apply_pending()

    # ---- colocated placement: the engine sleeps while the learners train on its device ----

    @ray.method(concurrency_group="control")
    def sleep(self, level: int) -> EngineMemory:
        """Release the engine's device memory (level 1: weights to host memory; 2: dropped) and
        say how much went, in weight bytes and in this process's resident memory."""
        with self._cond:
            if self._generating or self.asleep:
                raise EngineError("sleep() while " + ("generating" if self._generating else "already asleep"))
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


class RolloutPool:
    """Driver-side handle on N rollout workers; requests are split evenly, order kept."""

    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str = "float32", setup: EngineSetup = EngineSetup(),
                 actor_options: list[dict] | None = None):
        # actor_options: per-worker Ray options (placement group bundle, resources) from cluster/placement.py.
        threads = cfg.threads_per_worker
        base = dict(num_cpus=threads, runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
        extra = actor_options or [{} for _ in range(cfg.num_workers)]
        actor = ray.remote(concurrency_groups={"generate": 1, "control": 1})(RolloutWorker)
        args = (model_path, cfg, dtype, setup)
        self.workers = [actor.options(**{**base, **extra[i]}).remote(*args) for i in range(cfg.num_workers)]
        self.batch_size = cfg.batch_size
        self._next = 0  # the worker that gets the next call's first shard
        ray.get([w.get_version.remote() for w in self.workers])  # surface start-up errors here

    def _shards(self, requests: list[GenerationRequest], params: SamplingParams):
        """Shard i of a call goes to the workers in turn, so small calls (replacement groups) do
        not all land on the first worker. Seeds are per sample (rollout/types.py: sample_seed),
        so the rollouts do not depend on which worker (all hold the same weights) runs them."""
        n = len(self.workers)
        shards = [requests[i::n] for i in range(n) if requests[i::n]]
        first, self._next = self._next, (self._next + len(shards)) % n
        for i, shard in enumerate(shards):
            yield self.workers[(first + i) % n], shard, params

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[Rollout]:
        futures = [w.generate.remote(shard, p, self.batch_size) for w, shard, p in self._shards(requests, params)]
        rollouts = [r for part in ray.get(futures) for r in part]
        order = {req.group_id: i for i, req in enumerate(requests)}
        return sorted(rollouts, key=lambda r: (order[r.group_id], r.sample_index))

    def stream(self, requests: list[GenerationRequest], params: SamplingParams) -> list:
        """The same split and seeds as generate(), as one streaming generator per worker shard:
        each yields lists of rollouts as they finish."""
        return [w.stream.options(num_returns="streaming").remote(shard, p, self.batch_size)
                for w, shard, p in self._shards(requests, params)]

    def set_layout(self, layout: Layout) -> None:
        self.layout = layout  # the buckets updates travel in, for the sender's side too
        ray.get([w.set_layout.remote(layout) for w in self.workers])

    def update_weights(self, update: StoredUpdate) -> list[float]:
        return ray.get([w.update_weights.remote(update) for w in self.workers])

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
        return ray.get([w.stats.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
