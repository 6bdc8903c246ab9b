"""The `reward` section of the config schema. It lives with the stage that uses it
(cluster/config.py composes it into the whole schema), so the reward pool takes the
validated section itself and no mirror of its fields exists."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal, Optional
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    # The code verifier refuses to run where the sandbox cannot make namespaces (not root, no
    # unshare): its fallback limits resources but isolates nothing. True accepts that, knowingly.
    allow_unisolated_sandbox: bool = False
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
    # An ensemble: more checkpoints scored beside reward_model_path (the same worker), each
    # sample's scores combined as their mean, or mean - reward_model_std_coef x their std (over
    # the members): a score the members disagree on counts for less (uncertainty-aware reward).
    reward_model_ensemble: tuple[str, ...] = ()
    reward_model_combine: Literal["mean", "mean_minus_std"] = "mean"
    reward_model_std_coef: float = Field(1.0, ge=0)
    # LLM judge: base URL of an OpenAI-compatible API (…/v1); key from TANDEM_JUDGE_API_KEY.
    judge_url: Optional[str] = None
    judge_model: str = "judge"
    judge_requests_per_s: float = Field(5.0, gt=0)
    judge_concurrency: int = Field(4, ge=1)
    judge_max_retries: int = Field(3, ge=0)
    judge_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _check_components(self) -> "RewardConfig":
        """Every named verifier exists (plugins imported), its options are its own, a reward model
        or judge is pointed at, and the code verifier's tests fit in the per-sample timeout."""
        for i, module in enumerate(self.plugins):
            try:
                importlib.import_module(module)
            except Exception as exc:
                raise ValueError(f"reward.plugins[{i}] '{module}' cannot be imported: {type(exc).__name__}: {exc}")
        from reward.verifiers import VERIFIERS

        if self.max_workers is not None and self.max_workers < self.num_workers:
            raise ValueError(f"reward.max_workers ({self.max_workers}) < reward.num_workers ({self.num_workers})")
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise ValueError(f"reward.clip_min ({self.clip_min}) > reward.clip_max ({self.clip_max})")
        weights = self.weights()
        for name in weights:
            if name not in MODEL_COMPONENTS and name not in VERIFIERS:
                raise ValueError(f"reward: unknown verifier '{name}'; valid names: {', '.join(VERIFIERS.names())}, "
                                 f"{', '.join(MODEL_COMPONENTS)}")
        for name, options in self.verifier_options.items():
            if name not in weights or name in MODEL_COMPONENTS:
                raise ValueError(f"reward.verifier_options.{name}: '{name}' is not among this run's verifiers "
                                 f"({', '.join(weights)})")
            takes = list(inspect.signature(VERIFIERS.get(name)).parameters)[2:]
            for key in options:
                if key not in takes:
                    raise ValueError(f"reward.verifier_options.{name}.{key}: {name} takes {', '.join(takes) or 'none'}")
        if "reward_model" in weights and not self.reward_model_path:
            raise ValueError("reward.components names reward_model but reward.reward_model_path is not set")
        if self.reward_model_combine == "mean_minus_std" and not self.reward_model_ensemble:
            raise ValueError("reward.reward_model_combine 'mean_minus_std' needs an ensemble (reward.reward_model_ensemble "
                             "lists the checkpoints beside reward.reward_model_path): one model has no spread")
        if "judge" in weights:
            url = urlparse(self.judge_url or "")
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"reward.components names judge but reward.judge_url {self.judge_url!r} is not an "
                                 "http(s) URL (an OpenAI-compatible API's base, e.g. http://host:8000/v1)")
        if "code" in weights:
            self._check_code_budget()
        return self

    def _check_code_budget(self) -> None:
        from reward.verifiers import VERIFIERS

        defaults = {k: p.default for k, p in inspect.signature(VERIFIERS.get("code")).parameters.items()}
        options = {**defaults, **self.verifier_options.get("code", {})}
        worst = float(options["timeout_s"]) * int(options["max_tests"]) + 1.0
        if self.timeout_s < worst:
            raise ValueError(f"reward.timeout_s {self.timeout_s} s is shorter than the code verifier may need: "
                             f"verifier_options.code.timeout_s {options['timeout_s']} s per test x max_tests "
                             f"{options['max_tests']} + 1 s = {worst:g} s; raise reward.timeout_s or lower those")

    @property
    def uses_sandbox(self) -> bool:
        return "code" in self.weights()

    def weights(self) -> dict[str, float]:
        """All weighted components: the correctness verifier, format, and the extras."""
        out = {self.verifier: 1.0}
        if self.format_weight:
            out["format"] = out.get("format", 0.0) + self.format_weight
        for name, w in self.components.items():
            out[name] = out.get(name, 0.0) + w
        return out
