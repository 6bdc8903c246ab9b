"""The `reward` section of the config schema. It lives with the stage that uses it
(cluster/config.py composes it into the whole schema), so the reward pool takes the
validated section itself and no mirror of its fields exists."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

# Names of components served by dedicated actors rather than registered verifiers.
MODEL_COMPONENTS = ("reward_model", "judge")


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_workers: int = Field(1, ge=1)
    verifier: str = "arithmetic"
    # Weight of the format reward added to the correctness reward.
    format_weight: float = 0.1
    timeout_s: float = Field(2.0, gt=0)
    # Score given to a sample whose verifier raised or timed out (recorded, never silent).
    fallback_score: float = 0.0
    # Pool (reward/pool.py): scale verifier workers up to max_workers under load (null: fixed).
    max_workers: Optional[int] = Field(None, ge=1)
    # Extra tries after a timeout or a lost worker (a verifier's exception is not retried).
    max_retries: int = Field(1, ge=0)
    # Results cached by (verifier setup, prompt, response, answer); 0 turns the cache off.
    cache_size: int = Field(100_000, ge=0)
    batch_size: int = Field(8, ge=1)
    # Samples outstanding before submit() blocks (backpressure).
    max_pending: int = Field(4096, ge=1)
    # Composition: extra named rewards (verifier names, reward_model, judge) -> weights,
    # added to verifier (weight 1) and format (format_weight).
    components: dict[str, float] = {}
    # Keyword options per verifier, e.g. {code: {timeout_s: 5, memory_mb: 512}}.
    verifier_options: dict[str, dict[str, Any]] = {}
    # Python modules every reward worker imports first, to register verifiers of your own.
    plugins: list[str] = []
    clip_min: Optional[float] = None
    clip_max: Optional[float] = None
    normalize: Literal["none", "running"] = "none"
    # PAR: sigmoid(reward - reference); the reference is a constant or the group's mean.
    shaping: Literal["none", "par"] = "none"
    par_reference: Literal["fixed", "group_mean"] = "fixed"
    par_reference_value: float = 0.0
    # Reward model: a local HF sequence-classification checkpoint with one label.
    reward_model_path: Optional[str] = None
    reward_model_batch_size: int = Field(32, ge=1)
    # cuda: the reward-model actor asks Ray for one GPU and runs on the one it is given.
    reward_model_device: Literal["cpu", "cuda"] = "cpu"
    # LLM judge: base URL of an OpenAI-compatible API (…/v1); key from TANDEM_JUDGE_API_KEY.
    judge_url: Optional[str] = None
    judge_model: str = "judge"
    judge_requests_per_s: float = Field(5.0, gt=0)
    judge_concurrency: int = Field(4, ge=1)
    judge_max_retries: int = Field(3, ge=0)
    judge_timeout_s: float = Field(30.0, gt=0)

    def weights(self) -> dict[str, float]:
        """All weighted components: the correctness verifier, format, and the extras."""
        out = {self.verifier: 1.0}
        if self.format_weight:
            out["format"] = out.get("format", 0.0) + self.format_weight
        for name, w in self.components.items():
            out[name] = out.get(name, 0.0) + w
        return out
