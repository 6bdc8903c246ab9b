"""Records that cross the rollout actor boundary, and the engines' settings and errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rollout.lora import LoraSpec


class EngineError(RuntimeError):
    """An engine that cannot run as configured (missing extra, bad checkpoint, version mismatch)."""


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """One generation call's sampling. Each sample's seed is `sample_seed(seed, step, group, sample)`:
    the same rollout whichever worker, batch or shard generates it, with either engine."""

    temperature: float = 1.0  # 0 = greedy
    max_new_tokens: int = 16
    # No end of sequence before this many tokens (benchmarks' fixed lengths; rollout.min_new_tokens)
    min_new_tokens: int = 0
    seed: int = 0  # run.seed
    step: int = 0  # the call's step (evaluation and replacement calls have their own numbers)


def sample_seed(run_seed: int, step: int, group_id: int, sample_index: int) -> int:
    """The one sampling seed function: a 63-bit seed from (run seed, step, group, sample)."""
    key = f"{run_seed}/{step}/{group_id}/{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    group_id: int  # unique per request in a run; all samples of it form one group
    prompt_id: int
    prompt: str  # the text (the reward side reads it)
    prompt_ids: tuple[int, ...]  # [P] what the engine generates after (the controller rendered it)
    answer: str
    num_samples: int  # group size: responses sampled for this prompt
    # Which of the group's samples to generate; () = all of 0 .. num_samples - 1. A re-issue
    # after a worker died asks only for the samples that never came back (same seeds).
    sample_indices: tuple[int, ...] = ()

    def indices(self) -> tuple[int, ...]:
        return self.sample_indices or tuple(range(self.num_samples))


@dataclass(frozen=True)
class EpisodeStats:
    """What a multi-turn episode (rollout.env) did: its model turns, tool calls and rewards."""

    turns: int  # model turns
    tool_calls: int = 0
    tool_failures: int = 0  # calls that raised or overran (their error was the observation)
    tool_seconds: float = 0.0
    reward: float = 0.0  # the environment's per-turn rewards, summed
    truncated: bool = False  # ended by rollout.max_turns or max_episode_tokens, not by the environment
    # (index in response_ids of the turn's last token, reward) for every turn the environment
    # rewarded: per-token rewards there for the advantage estimators (trainer/advantages.py)
    turn_rewards: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Rollout:
    """One sampled response, or one multi-turn trajectory after the prompt.

    `logprobs[i]` is log p(response_ids[i]) under the sampling policy's
    temperature-scaled distribution (log_softmax(logits / T));
    `versions[i]` is the policy version that produced token i. In a trajectory
    (rollout.env) `trains[i]` is 1 for the model's tokens and 0 for the ids of an
    observation, which are context only (logprob 0, the version of the weights then).
    """

    group_id: int
    prompt_id: int
    sample_index: int  # index within its group
    prompt: str
    answer: str
    prompt_ids: tuple[int, ...]  # [P], starts with BOS
    response_ids: tuple[int, ...]  # [R], includes EOS when finished
    response_text: str  # a trajectory's: its last model turn (what the outcome verifier reads)
    logprobs: tuple[float, ...]  # [R]
    versions: tuple[int, ...]  # [R]
    finish_reason: Literal["stop", "length"]
    # The seed it was sampled with, sample_seed(run seed, step, group, sample); the engines set it.
    seed: int = 0
    trains: tuple[int, ...] = ()  # [R] or () (every token the model's)
    episode: EpisodeStats | None = None  # a trajectory's turns and tool calls

    @property
    def min_version(self) -> int:
        return min(self.versions) if self.versions else -1


@dataclass(frozen=True)
class AbortResult:
    """What one engine's abort() stopped: groups that can no longer be trained (their oldest
    token is below the staleness floor, or the controller named them) and their work so far."""

    groups: tuple[int, ...]  # group ids with samples in flight or queued here, now aborted
    tokens: int  # response tokens those samples had generated: wasted


def doomed(started: dict[int, int], floor: int | None) -> set[int]:
    """Training groups (ids >= 0; held-out prompts are never trained) with a sample whose first
    token came from a version below `floor`: a group trains whole, at a version no older than the
    controller's, so it can never meet the staleness bound (started: group -> oldest version)."""
    if floor is None:
        return set()
    return {g for g, v in started.items() if g >= 0 and v < floor}


@dataclass(frozen=True)
class EngineMemory:
    """What an engine's sleep() released (colocated placement: the learner gets the device)."""

    released_bytes: int  # weight bytes that left the engine's device (0: nothing to move them off)
    resident_before: int  # the worker process's resident set size before sleep() (bytes)
    resident_after: int  # ... and after it


@dataclass(frozen=True)
class VLLMOptions:
    """Engine settings (rollout.vllm_* in the config; see docs/config.md)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    kv_cache_gib: float | None = None  # None: 1 GiB on CPU, from gpu_memory_utilization on GPU
    max_model_len: int | None = None  # None: the model's own limit
    max_num_seqs: int = 256
    enforce_eager: bool | None = None  # None: eager on CPU (no compile at start-up), graphs on GPU
    enable_prefix_caching: bool = True
    enable_sleep_mode: bool = False  # GPUs, colocated with learners: sleep()/wake_up() free the GPU
    seed: int = 0
    # `tandem_file` (tested on CPU): updates from the object store through a shared file.
    # `nccl` / `ipc`: vLLM's GPU backends, fed by the learner through vLLM's trainer-side
    # engines (untested here: no GPU in CI).
    weight_transfer: str = "tandem_file"
    weight_version: int = 0  # the policy version of the weights it starts from (a resumed run's)
    # model.lora (rollout/lora.py LoraSpec): updates are adapters, served through vLLM's LoRA
    # requests; `lora_adapter`: the adapter of weight_version on disk (a resumed run's checkpoint).
    lora: LoraSpec | None = None
    lora_adapter: str | None = None
