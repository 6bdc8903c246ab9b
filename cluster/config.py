"""The one config schema: pydantic models, YAML recipes, dotted CLI overrides.

Unknown keys are rejected with the nearest valid name suggested; the resolved
config is frozen (never mutated while running).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0


class BootstrapConfig(Section):
    """How the tiny model is built when `model.bootstrap` is on (CPU quickstart)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_digits: int = Field(2, ge=1)
    sft_max_steps: int = Field(600, ge=0)
    # The warm-up stops once greedy accuracy on the validation prompts reaches this.
    sft_target_accuracy: float = Field(0.25, ge=0, le=1)
    sft_check_every: int = Field(10, ge=1)
    sft_batch_size: int = Field(64, ge=1)
    sft_lr: float = 2e-3
    num_train_prompts: int = Field(8000, ge=1)
    num_eval_prompts: int = Field(256, ge=1)
    sft_val_prompts: int = Field(256, ge=1)


class ModelConfig(Section):
    path: str
    # Build the tiny model, tokenizer and task data at `path` when absent.
    bootstrap: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    bootstrap_spec: BootstrapConfig = BootstrapConfig()


class DataConfig(Section):
    train_path: str
    eval_path: str
    prompt_key: str = "prompt"
    answer_key: str = "answer"


class RolloutConfig(Section):
    engine: Literal["hf"] = "hf"
    num_workers: int = Field(1, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(16, ge=1)
    # Sequences per generate() call inside a worker.
    batch_size: int = Field(256, ge=1)


class RewardConfig(Section):
    num_workers: int = Field(1, ge=1)
    verifier: str = "arithmetic"
    # Weight of the format reward added to the correctness reward.
    format_weight: float = 0.1
    timeout_s: float = Field(2.0, gt=0)
    # Score given to a sample whose verifier raised or timed out (recorded, never silent).
    fallback_score: float = 0.0


class AlgorithmConfig(Section):
    name: str = "grpo"
    advantage: str = "grpo"
    loss: str = "grpo"
    group_size: int = Field(8, ge=2)
    clip_eps: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: str = "k3"
    # Divide group-centred rewards by the group std (GRPO); off = Dr.GRPO style.
    normalize_std: bool = True


class TrainerConfig(Section):
    num_learners: int = Field(1, ge=1)
    threads_per_learner: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(64, ge=1)
    # Optimizer steps per batch of rollouts (PPO-style mini-batch epochs).
    updates_per_batch: int = Field(1, ge=1)


class ControllerConfig(Section):
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    max_staleness: int = Field(0, ge=0)
    eval_every: int = Field(0, ge=0)
    eval_prompts: int = Field(256, ge=1)
    eval_temperature: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    progress: bool = True

    @field_validator("max_staleness")
    @classmethod
    def _sync_only(cls, value: int) -> int:
        if value != 0:
            raise ValueError(
                "only synchronous training (max_staleness: 0) is implemented so far; "
                "asynchronous off-policy training (k > 0) is not available yet"
            )
        return value


class ClusterConfig(Section):
    # None: start an embedded local Ray bound to 127.0.0.1; else join this cluster.
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    dashboard: bool = False


class Config(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    trainer: TrainerConfig = TrainerConfig()
    controller: ControllerConfig = ControllerConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.trainer.zero_stage == 3 and self.trainer.num_learners < 1:
            raise ValueError("trainer.zero_stage 3 needs at least one learner")
        return self


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return hint


def _model_at(path: tuple, root: type[BaseModel] = Config) -> Optional[type[BaseModel]]:
    """The pydantic model class that owns the field at `path` (or None)."""
    model = root
    for part in path:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            valid = list(owner.model_fields) if owner else []
            lines.append(f"unknown key '{dotted}': {_suggest(str(loc[-1]), valid)}")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{dotted}'")
        else:
            got = e.get("input")
            lines.append(f"'{dotted}': {e['msg']} (got {got!r})")
    return f"invalid config ({source}):\n  " + "\n  ".join(lines)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` strings into a nested dict; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}' has an empty key")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(recipe: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe, apply dotted overrides, validate; relative paths stay as given."""
    path = Path(recipe)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    merged = _merge(raw, parse_overrides(overrides or []))
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(path))) from None


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
