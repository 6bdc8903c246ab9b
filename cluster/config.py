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
    reward_model_device: str = "cpu"
    # LLM judge: base URL of an OpenAI-compatible API (…/v1); key from TANDEM_JUDGE_API_KEY.
    judge_url: Optional[str] = None
    judge_model: str = "judge"
    judge_requests_per_s: float = Field(5.0, gt=0)
    judge_concurrency: int = Field(4, ge=1)
    judge_max_retries: int = Field(3, ge=0)
    judge_timeout_s: float = Field(30.0, gt=0)


def _registered(registry, value: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {registry.kind} '{value}'; valid names: {', '.join(registry.names())}")
    return value


class AlgorithmConfig(Section):
    name: str = "grpo"  # a label for the summary; behaviour comes from the fields below
    advantage: str = "grpo"
    loss: str = "ppo_clip"
    loss_agg: str = "token-mean"
    group_size: int = Field(8, ge=1)
    # Advantage options: divide by std (grpo; off = Dr.GRPO) / whiten (gae); group or batch std.
    normalize_std: bool = True
    std_scope: Literal["group", "batch"] = "group"
    group_baseline: bool = True  # reinforce_pp: REINFORCE++-baseline
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    clip_eps: float = Field(0.2, gt=0)
    clip_eps_high: Optional[float] = Field(None, gt=0)  # DAPO clip-higher
    dual_clip: float = Field(0.0, ge=0)  # c > 1 enables dual-clip PPO
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: str = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    kl_target: Optional[float] = Field(None, gt=0)  # adaptive coefficient towards this KL
    kl_horizon: int = Field(100, ge=1)
    entropy_coef: float = 0.0
    # DAPO overlong shaping: linear penalty over the last `overlong_buffer` tokens before the limit.
    overlong_buffer: int = Field(0, ge=0)
    overlong_penalty: float = Field(1.0, ge=0)
    mask_truncated: bool = False  # drop responses cut at max_new_tokens from the loss

    @field_validator("advantage")
    @classmethod
    def _advantage(cls, v: str) -> str:
        from trainer.advantages import ADVANTAGES

        return _registered(ADVANTAGES, v)

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        from trainer.losses import CRITIC_LOSSES, LOSSES

        if v in CRITIC_LOSSES:
            raise ValueError(f"'{v}' is a critic loss; the policy loss is one of "
                             f"{', '.join(n for n in LOSSES.names() if n not in CRITIC_LOSSES)}")
        return _registered(LOSSES, v)

    @field_validator("loss_agg")
    @classmethod
    def _agg(cls, v: str) -> str:
        from trainer.losses import AGGREGATIONS

        return _registered(AGGREGATIONS, v)

    @field_validator("kl_estimator")
    @classmethod
    def _kl(cls, v: str) -> str:
        from trainer.losses import KL_ESTIMATORS

        return _registered(KL_ESTIMATORS, v)


class CriticConfig(Section):
    """The value model for PPO (`algorithm.advantage: gae`)."""

    enabled: bool = False
    path: Optional[str] = None  # default: model.path (a policy or reward-model checkpoint)
    num_learners: int = Field(1, ge=1)
    threads_per_learner: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    lr: float = Field(1e-4, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(64, ge=1)
    value_clip: float = Field(0.2, gt=0)
    warmup_steps: int = Field(0, ge=0)  # steps that train only the critic


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
    # Placement (cluster/placement.py): the roles' resources become Ray placement groups.
    # disaggregated: each role its own bundles; colocated: learner ranks and engines share
    # bundles (and GPUs, time-sliced), which halves the GPUs a synchronous run needs.
    placement: Literal["disaggregated", "colocated"] = "disaggregated"
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    gpus_per_learner: int = Field(0, ge=0, le=1)
    # GPUs per rollout engine replica = its tensor-parallel size (0: a CPU engine).
    gpus_per_engine: int = Field(0, ge=0)
    # Reward workers reserve no CPU by default: in synchronous mode they run while the
    # other roles wait, so reserving cores for them would only shrink what fits.
    cpus_per_reward_worker: float = Field(0, ge=0)
    # Extra Ray resources each actor of a role asks for, e.g. {learner: {a100: 1}}: pins
    # roles to node types declared with `ray start --resources`.
    resources: dict[Literal["learner", "rollout", "reward", "critic"], dict[str, float]] = {}
    # Placement groups not ready after this long are an error (resources held elsewhere).
    placement_timeout_s: float = Field(120, gt=0)
    # `tandem submit` (slurm, kuberay): the cluster to ask for. num_nodes null: enough
    # nodes of gpus_per_node GPUs for the plan (1 on CPU).
    num_nodes: Optional[int] = Field(None, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int = Field(8, ge=1)
    memory_per_node: str = "32Gi"
    image: str = "tandem:gpu"


class Config(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    trainer: TrainerConfig = TrainerConfig()
    critic: CriticConfig = CriticConfig()
    controller: ControllerConfig = ControllerConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        a = self.algorithm
        if (a.advantage == "gae") != self.critic.enabled:
            raise ValueError("algorithm.advantage 'gae' and critic.enabled go together (PPO with a critic)")
        if a.advantage in ("grpo", "rloo") and a.group_size < 2:
            raise ValueError(f"algorithm.advantage '{a.advantage}' needs algorithm.group_size >= 2")
        if a.overlong_buffer >= self.rollout.max_new_tokens:
            raise ValueError("algorithm.overlong_buffer must be below rollout.max_new_tokens")
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
