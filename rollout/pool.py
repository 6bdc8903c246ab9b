"""RolloutWorker actors (one engine each) and the RolloutPool that fans requests out."""

from __future__ import annotations

import os
import time

import ray

from rollout.types import GenerationRequest, Rollout, SamplingParams
from rollout.weight_sync import WeightUpdate, verify

ENGINES = ("hf", "vllm")


def make_engine(engine: str, model_path: str, dtype: str, threads: int, options: dict):
    """The engine named by rollout.engine, imported only when selected (vLLM is an optional extra)."""
    if engine == "hf":
        from rollout.hf_engine import HFEngine

        return HFEngine(model_path, dtype)
    if engine == "vllm":
        from rollout.vllm_engine import VLLMEngine, VLLMOptions

        return VLLMEngine(model_path, dtype, threads, VLLMOptions(**options))
    raise ValueError(f"rollout.engine '{engine}' is not an engine (valid: {', '.join(ENGINES)})")


class RolloutWorker:
    """Ray actor body: owns one engine and the policy version of its weights."""

    def __init__(self, model_path: str, engine: str, dtype: str, threads: int,
                 engine_options: dict | None = None):
        import torch

        torch.set_num_threads(threads)
        self.engine = make_engine(engine, model_path, dtype, threads, engine_options or {})
        self.version = 0

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, batch_size: int) -> list[Rollout]:
        return self.engine.generate(requests, params, self.version, batch_size)

    def update_weights(self, update: WeightUpdate) -> float:
        """Fetch, verify and load one update; returns the seconds it took."""
        t0 = time.perf_counter()
        arrays = ray.get(list(update.refs))
        checked = verify(update, arrays, expected_version=self.version + 1)
        self.engine.load_weights(checked)
        self.version = update.version
        return time.perf_counter() - t0

    def get_version(self) -> int:
        return self.version

    def pid(self) -> int:
        return os.getpid()


class RolloutPool:
    """Driver-side handle on N rollout workers; requests are split evenly, order kept."""

    def __init__(self, model_path: str, num_workers: int, engine: str = "hf", dtype: str = "float32",
                 threads: int = 1, batch_size: int = 256, actor_options: list[dict] | None = None,
                 engine_options: dict | None = None):
        # actor_options: per-worker Ray options (placement group bundle, resources) from cluster/placement.py.
        base = dict(num_cpus=threads, runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
        extra = actor_options or [{} for _ in range(num_workers)]
        actor = ray.remote(RolloutWorker)  # one class export; per-actor options below
        args = (model_path, engine, dtype, threads, engine_options)
        self.workers = [actor.options(**{**base, **extra[i]}).remote(*args) for i in range(num_workers)]
        self.batch_size = batch_size
        ray.get([w.get_version.remote() for w in self.workers])  # surface start-up errors here

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[Rollout]:
        n = len(self.workers)
        shards = [requests[i::n] for i in range(n)]
        futures = [
            w.generate.remote(shard, SamplingParams(params.temperature, params.top_p, params.max_new_tokens,
                                                    params.seed * 1000 + i), self.batch_size)
            for i, (w, shard) in enumerate(zip(self.workers, shards)) if shard
        ]
        rollouts = [r for part in ray.get(futures) for r in part]
        order = {req.group_id: i for i, req in enumerate(requests)}
        return sorted(rollouts, key=lambda r: (order[r.group_id], r.sample_index))

    def update_weights(self, update: WeightUpdate) -> list[float]:
        return ray.get([w.update_weights.remote(update) for w in self.workers])

    def versions(self) -> list[int]:
        return ray.get([w.get_version.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
