"""The `rollout` section of the config schema. It lives with the stage that uses it, as
reward/config.py does (cluster/config.py composes both into the whole schema): the rollout
pool takes the validated section itself, and the vllm engine's typed options are built from it
here (`vllm_options`), so no mirror of its fields exists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.envs.spec import EnvSpec
from rollout.lora import LoraSpec
from rollout.types import VLLMOptions


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["hf", "vllm"] = "hf"
    num_workers: int = Field(1, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(16, ge=1)
    # No end of sequence before this many new tokens (per turn): min = max gives every response
    # the same length, as benchmarks need. The engine samples from the model's distribution with
    # EOS removed before then, but reports (and the learner trains on) the model's own logprobs:
    # a bias no importance ratio corrects, so it is a benchmarking knob, `hf` engine only.
    min_new_tokens: int = Field(0, ge=0)
    # Sequences decoding at once per generation call (hf: the batch's rows, refilled as rows
    # finish; vllm: samples in flight per call).
    batch_size: int = Field(256, ge=1)
    # vllm engine only (rollout/vllm_engine.py). On CPU the KV cache is vllm_kv_cache_gib
    # (default 1 GiB); on GPUs, vllm_gpu_memory_utilization of the GPU unless that is set.
    vllm_gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    vllm_kv_cache_gib: Optional[float] = Field(None, gt=0)
    vllm_max_model_len: Optional[int] = Field(None, ge=1)
    vllm_max_num_seqs: int = Field(256, ge=1)
    vllm_enforce_eager: Optional[bool] = None  # null: eager on CPU, CUDA graphs on GPUs
    vllm_enable_prefix_caching: bool = True
    # Weights arriving while a generation call is in flight (asynchronous training):
    # interrupt = swap at the next decode step, in-flight rollouts continue on the new
    # weights (partial rollouts, tokens keep their versions); finish = in-flight calls
    # finish on the weights they started with, the update applies before the next call.
    in_flight: Literal["interrupt", "finish"] = "interrupt"
    # How weights travel from the learners (cluster/weights.py, rollout/transfer/): auto =
    # collective when learners and engines both have GPUs and are disaggregated (one GPU per
    # engine), ipc when colocated on GPUs, object_store otherwise (the tested CPU default).
    weight_transfer: Literal["auto", "object_store", "collective", "ipc"] = "auto"
    weight_bucket_mb: int = Field(32, ge=1)  # collective: at most this much per broadcast (one tensor may exceed it)
    weight_transfer_timeout_s: float = Field(120.0, gt=0)  # collective: every rendezvous and broadcast
    # cluster.placement 'colocated': what the engine releases while the learners train (vLLM's
    # levels): 1 = weights to host memory, KV cache freed; 2 = weights dropped too, the weight
    # sync that follows every training phase refills them (saves host memory and a copy).
    sleep_level: Literal[1, 2] = 1
    # Multi-turn rollouts (rollout/envs/): the environment every trajectory runs in (null: one
    # turn, a response to the prompt), its options, the modules that register environments and
    # tools of your own, and the bounds of an episode: model turns (each up to max_new_tokens)
    # and tokens after the prompt, the model's and the observations' together (null: no bound).
    env: Optional[str] = None
    env_options: dict[str, Any] = {}
    env_plugins: list[str] = []
    max_turns: int = Field(4, ge=1)
    max_episode_tokens: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _env(self) -> "RolloutConfig":
        if self.env is None:
            if self.env_options or self.env_plugins:
                raise ValueError("rollout.env_options / rollout.env_plugins are set but rollout.env is null")
            return self
        try:
            self.env_spec().load()
        except KeyError as exc:
            raise ValueError(f"rollout.env: {exc.args[0]}") from None
        return self

    def env_spec(self) -> Optional[EnvSpec]:
        """The environment settings a rollout worker builds its episodes from (an engine loads them:
        registers the plugins in its process, checks the options)."""
        if self.env is None:
            return None
        return EnvSpec(self.env, dict(self.env_options), self.max_turns, self.max_episode_tokens,
                       tuple(self.env_plugins))

    @model_validator(mode="after")
    def _min_new_tokens(self) -> "RolloutConfig":
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"rollout.min_new_tokens={self.min_new_tokens} is above rollout.max_new_tokens="
                             f"{self.max_new_tokens}")
        if self.min_new_tokens and self.engine != "hf":
            # vLLM's processed logprobs would be those of the EOS-masked distribution, which the
            # learner does not compute: every early ratio would be off.
            raise ValueError(f"rollout.min_new_tokens with rollout.engine '{self.engine}': only the hf engine "
                             "reports the model's own logprobs under it; use engine: hf or min_new_tokens: 0")
        return self

    @model_validator(mode="after")
    def _top_p(self) -> "RolloutConfig":
        # Both engines would report the logprobs of a distribution the learner does not compute:
        # hf before the top-p truncation (so the ratio is off for every token), vLLM after it.
        if self.top_p < 1:
            raise ValueError(f"rollout.top_p={self.top_p} with rollout.engine '{self.engine}': the learner computes "
                             "logprobs of the full temperature-scaled distribution, not of the top-p truncated one "
                             "the engine would sample from, so every importance ratio would be off; use top_p: 1")
        return self


@dataclass(frozen=True)
class EngineSetup:
    """What the run decides about each engine beyond the rollout section (cluster/roles.py)."""

    tensor_parallel_size: int = 1  # GPUs per engine replica
    seed: int = 0
    sleep_mode: bool = False  # colocated placement: the engine sleeps while the learners train
    collective: bool = False  # rollout.weight_transfer resolved to 'collective' (cluster/weights.py)
    version: int = 0  # the policy version of the weights the engine starts from (a resumed run's)
    # A restarted worker (rollout/pool.py): its weights from disk are not the run's; it serves
    # only after a verified full update of `version` itself (not version + 1) has loaded.
    awaiting: bool = False
    lora: Optional[LoraSpec] = None  # model.lora: the engine wraps its model with the learners' adapter layout
    adapter: Optional[str] = None  # ... loaded from this directory (a resumed run's checkpoint), else a no-op
    # controller.max_staleness > 0: calls may overlap (rollout/pool.py: calls_in_flight); a
    # synchronous run keeps the `hf` engine to one call at a time, its batches independent of the clock.
    asynchronous: bool = False
    cpu_linear: str = "auto"  # model.cpu_linear: the hf engine's Linear kernel on CPU (rollout/cpu_linear.py)


def vllm_options(cfg: RolloutConfig, setup: EngineSetup = EngineSetup()) -> VLLMOptions:
    """The vllm engine's settings from the rollout section (rollout/vllm_engine.py reads them)."""
    return VLLMOptions(tensor_parallel_size=setup.tensor_parallel_size,
                       gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, kv_cache_gib=cfg.vllm_kv_cache_gib,
                       max_model_len=cfg.vllm_max_model_len,
                       max_num_seqs=cfg.vllm_max_num_seqs, enforce_eager=cfg.vllm_enforce_eager,
                       enable_prefix_caching=cfg.vllm_enable_prefix_caching, enable_sleep_mode=setup.sleep_mode,
                       seed=setup.seed, weight_transfer="tandem_collective" if setup.collective else "tandem_file",
                       weight_version=setup.version, lora=setup.lora, lora_adapter=setup.adapter)
