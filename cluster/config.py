"""The one config schema: pydantic models, YAML recipes, dotted CLI overrides.

Unknown keys are rejected with the nearest valid name suggested; the resolved
config is frozen (never mutated while running).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reward.config import RewardConfig
from rollout.config import RolloutConfig


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(Section):
    # rl: the rollout loop (policy-gradient RL, or online DPO when algorithm.loss is a preference
    # loss); sft / reward_model / dpo: offline passes over a dataset (cluster/offline.py).
    mode: Literal["rl", "sft", "reward_model", "dpo"] = "rl"
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0


class BootstrapConfig(Section):
    """How the tiny model is built when `model.bootstrap` is on (CPU quickstart)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_digits: int = Field(2, ge=1)
    # addition: answer in the head; the multi-turn recipes' (trainer/env_tasks.py): tool_addition,
    # 4-digit sums with the tool_use environment's calculator, warm-up examples calling it at
    # `tool_rate`; guess_number, find a secret digit from higher / lower answers.
    task: Literal["addition", "tool_addition", "guess_number"] = "addition"
    tool_rate: float = Field(0.3, ge=0, le=1)
    sft_max_steps: int = Field(600, ge=0)
    # The warm-up stops once greedy accuracy on the validation prompts reaches this.
    sft_target_accuracy: float = Field(0.2, ge=0, le=1)
    sft_check_every: int = Field(10, ge=1)
    sft_batch_size: int = Field(64, ge=1)
    sft_lr: float = 2e-3
    num_train_prompts: int = Field(8000, ge=1)
    num_eval_prompts: int = Field(256, ge=1)
    sft_val_prompts: int = Field(256, ge=1)


class LoraConfig(Section):
    """LoRA adapters (rollout/lora.py) for every learner group: the policy (RL, SFT, DPO), the
    critic and reward-model training. Only the adapter trains and travels in weight syncs."""

    r: int = Field(ge=1)
    alpha: Optional[float] = Field(None, gt=0)  # null: 2 x r
    # Dropout on the adapter's input. Above 0 the learner's logprobs (train mode) are not the
    # engine's, so importance ratios and KL see noise; 0 (the default) keeps them equal.
    dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear" (every linear layer but the output head), or module names (q_proj, v_proj, ...).
    target_modules: Union[Literal["all-linear"], tuple[str, ...]] = "all-linear"
    merge_on_export: bool = False  # final/merged: the adapter merged into the base, a plain checkpoint

    def spec(self):
        from rollout.lora import LoraSpec

        return LoraSpec(self.r, self.alpha if self.alpha is not None else 2.0 * self.r, self.dropout,
                        self.target_modules)


class ModelConfig(Section):
    path: str
    # Build the tiny model, tokenizer and task data at `path` when absent.
    bootstrap: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    # The kernel of every Linear layer on CPU, in the engines and the learners (rollout/cpu_linear.py):
    # auto (oneDNN where torch has it), onednn (required), aten (PyTorch's F.linear).
    cpu_linear: Literal["auto", "onednn", "aten"] = "auto"
    bootstrap_spec: BootstrapConfig = BootstrapConfig()
    lora: Optional[LoraConfig] = None


class DataConfig(Section):
    # jsonl, parquet or csv files, or `datasets.save_to_disk` directories (rollout/data.py: read_rows).
    train_path: str
    eval_path: str
    # Columns; a dotted name reaches into a nested record (e.g. reward_model.ground_truth).
    prompt_key: str = "prompt"  # a string, or a list of {role, content} messages
    answer_key: str = "answer"
    hint_key: Optional[str] = None  # RL: a partial solution per training prompt (algorithm.hint_rescue)
    system_prompt: Optional[str] = None  # a system message before every prompt (chat template)
    completion_key: str = "completion"  # sft: the trained text next to prompt_key
    messages_key: str = "messages"  # sft: a chat whose assistant turns train
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    margin_key: Optional[str] = None  # reward_model: per-pair margin column (Bradley-Terry with margin)
    # null: use the tokenizer's chat template when it has one; false: plain text; true: require one.
    chat_template: Optional[bool] = None
    max_length: int = Field(1024, ge=2)  # tokens per example; longer answers are cut


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
    # The verifier's error rates, for the noisy_backward / noisy_forward estimators: false positive
    # (says correct, is wrong) and false negative (says wrong, is correct).
    verifier_fp_rate: float = Field(0.0, ge=0, lt=1)
    verifier_fn_rate: float = Field(0.0, ge=0, lt=1)
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
    # Preference losses (dpo, cdpo, ipo, simpo, orpo) and reward models (bradley_terry).
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # cdpo
    simpo_gamma: float = Field(0.5, ge=0)
    orpo_lambda: float = Field(0.1, ge=0)
    rm_margin: float = 0.0  # bradley_terry margin when the data has no margin column
    # Off-policy correction (decoupled_ppo, tis): importance weights are truncated at this cap.
    is_cap: float = Field(2.0, gt=0)
    # icepop / seq_mis: weights (token / sequence geometric mean) outside [low, high] are masked out.
    is_band: tuple[float, float] = (0.5, 2.0)
    # DAPO dynamic sampling: drop groups whose rewards all tie and generate replacements; a step
    # that drops more than dynamic_sampling_limit x prompts_per_step groups fails.
    dynamic_sampling: bool = False
    dynamic_sampling_limit: int = Field(8, ge=1)
    # What each dispatch generates (cluster/rl/budget.py): samples per prompt (uniform = group_size;
    # knapsack = budget_min..budget_max by estimated success rate, the same total), and which
    # prompts (none = in the dealt order; intermediate = of curriculum_pool x as many candidates,
    # those whose estimated success rate is nearest 0.5).
    rollout_budget: str = "uniform"
    budget_min: int = Field(2, ge=1)
    budget_max: Optional[int] = Field(None, ge=1)  # null: 4 x group_size
    budget_value: Literal["knapsack_rl", "nonzero_groups", "nonzero_samples"] = "knapsack_rl"
    curriculum: str = "none"
    curriculum_pool: int = Field(4, ge=2)
    # Down-sampling (PODS): of each group's group_size samples, train on downsample_keep (null: all),
    # chosen by the rule `downsample` (max_variance: the most varied rewards; random).
    downsample_keep: Optional[int] = Field(None, ge=2)
    downsample: str = "max_variance"
    # Token prioritisation (D3S): the fraction of each micro-batch's response tokens that train,
    # those with the largest |advantage| x entropy (weights rescaled to the same sum); 1 = all.
    token_keep_frac: float = Field(1.0, gt=0, le=1)
    # Zero-signal rescue (cluster/rl/rescue.py): a group whose every sample failed is generated
    # again after its prompt's hint (data.hint_key), and trains in the hint-free context.
    hint_rescue: bool = False

    @model_validator(mode="before")
    @classmethod
    def _loss_defaults(cls, data: Any) -> Any:
        """GSPO's own defaults (Zheng et al. 2025): its ratio is a per-sequence geometric mean, which
        moves orders of magnitude less than a per-token one, so PPO's clip 0.2 would never clip."""
        if isinstance(data, dict) and data.get("loss") == "gspo":
            data = {"clip_eps": 3e-4, "clip_eps_high": 4e-4, "loss_agg": "seq-mean-token-mean", **data}
        return data

    @field_validator("rollout_budget", "curriculum", "downsample")
    @classmethod
    def _planner_rule(cls, v: str, info) -> str:
        from cluster.rl.budget import BUDGETS, CURRICULA, DOWNSAMPLERS

        return _registered({"rollout_budget": BUDGETS, "curriculum": CURRICULA,
                            "downsample": DOWNSAMPLERS}[info.field_name], v)

    @field_validator("advantage", "loss", "loss_agg", "kl_estimator")
    @classmethod
    def _registered_name(cls, v: str, info) -> str:
        # The registries import torch: loaded when a config is validated, not on `import cluster.config`.
        from trainer.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, LOSSES
        from trainer.losses import losses_that

        if info.field_name == "loss" and v in losses_that("critic"):
            raise ValueError(f"'{v}' is a critic loss; the policy loss is one of "
                             f"{', '.join(n for n in LOSSES.names() if n not in losses_that('critic'))}")
        registry = {"advantage": ADVANTAGES, "loss": LOSSES, "loss_agg": AGGREGATIONS,
                    "kl_estimator": KL_ESTIMATORS}[info.field_name]
        return _registered(registry, v)

    @model_validator(mode="after")
    def _traps(self) -> "AlgorithmConfig":
        if self.kl_coef > 0 and self.kl_in == "loss" and self.kl_estimator == "k1":
            raise ValueError("algorithm.kl_estimator 'k1' with kl_in 'loss': the gradient of the k1 estimate is the "
                             "score function, whose expectation under the policy is zero, so the penalty would not "
                             "pull towards the reference; use kl_estimator 'k3' or 'k2', or kl_in 'reward'")
        for name in ("clip_eps", "clip_eps_high"):
            value = getattr(self, name)
            if self.loss == "gspo" and value is not None and value > 0.01:
                raise ValueError(f"algorithm.{name}={value} with loss 'gspo': a per-sequence ratio almost never "
                                 "leaves [1 - 0.01, 1 + 0.01], so this would not clip; GSPO's defaults are clip_eps "
                                 "3e-4, clip_eps_high 4e-4 (leave them unset)")
        low, high = self.is_band
        if not 0 < low < 1 < high:
            raise ValueError(f"algorithm.is_band={list(self.is_band)}: the band of accepted importance weights must "
                             "hold 1 (an on-policy token), as [low, high] with 0 < low < 1 < high")
        return self


class LearnerSection(Section):
    """What every DeepSpeed learner group is configured by (the policy's and the critic's)."""

    num_learners: int = Field(1, ge=1)
    threads_per_learner: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    lr: float = Field(1e-4, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(64, ge=1)
    # Learning-rate schedule per optimizer step (trainer/schedules.py): a linear warm-up over the
    # first lr_warmup_steps, then constant, linear or cosine decay towards min_lr_ratio x lr.
    lr_schedule: str = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)

    @field_validator("lr_schedule")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        from trainer.schedules import SCHEDULES

        return _registered(SCHEDULES, v)


class CriticConfig(LearnerSection):
    """The value model for PPO (`algorithm.advantage: gae`)."""

    enabled: bool = False
    path: Optional[str] = None  # default: model.path (a policy or reward-model checkpoint)
    value_clip: float = Field(0.2, gt=0)
    warmup_steps: int = Field(0, ge=0)  # steps that train only the critic


class TrainerConfig(LearnerSection):
    weight_decay: float = Field(0.0, ge=0)
    # Optimizer steps per batch of rollouts (PPO-style mini-batch epochs).
    updates_per_batch: int = Field(1, ge=1)
    # GPU learner path: activation recomputation, and the attention kernel (`auto`: flash
    # attention on a GPU that has flash-attn, else PyTorch SDPA).
    gradient_checkpointing: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    # Policy logprobs and entropy: the output head runs over this many token positions at a
    # time, so no fp32 [batch, length, vocab] tensor exists (trainer/logprobs.py); 0: the
    # model's own logits, whole (for a model whose logits are not its head on its last
    # hidden state, which the learner detects at start and refuses to chunk).
    logprob_chunk_tokens: int = Field(1024, ge=0)


class OfflineConfig(Section):
    """Offline modes (run.mode sft | reward_model | dpo): passes over a dataset, no rollouts."""

    batch_size: int = Field(16, ge=1)  # examples per optimizer step (pairs for reward_model / dpo)
    epochs: int = Field(1, ge=1)
    max_steps: int = Field(0, ge=0)  # 0: as many steps as `epochs` passes take
    eval_every: int = Field(0, ge=0)  # held-out evaluation every N steps (always before and after)
    eval_size: int = Field(512, ge=1)  # held-out examples evaluated
    packing: bool = False  # sft: pack several examples into rows of data.max_length tokens
    save: bool = True  # write the trained model to <run dir>/final


class GuardConfig(Section):
    """Numerics guardrails (cluster/rl/guard.py): a metric past its limit for `patience`
    consecutive steps stops the run with a diagnosis; null: not guarded. The defaults are 3-13x
    the largest values of healthy quickstart runs (README: Failures and recovery)."""

    logprob_diff_max: Optional[float] = Field(25.0, gt=0)  # |learner - behaviour| logprob, largest token
    is_weight_max: Optional[float] = Field(1000.0, gt=0)  # largest untruncated importance weight (off-policy losses)
    kl: Optional[float] = Field(5.0, gt=0)  # mean per-token KL to the reference
    grad_norm: Optional[float] = Field(100.0, gt=0)  # global gradient norm before clipping
    patience: int = Field(3, ge=1)
    nonfinite_steps: int = Field(3, ge=1)  # skipped non-finite steps in a row that stop the run

    def limits(self) -> dict[str, float]:
        return {k: v for k in ("logprob_diff_max", "is_weight_max", "kl", "grad_norm")
                if (v := getattr(self, k)) is not None}


class ControllerConfig(Section):
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    # Versions generation may run ahead of the learner: 0 = synchronous (on-policy); k > 0 =
    # asynchronous, no sample older than k versions is ever trained on (cluster/rl/scheduler.py).
    max_staleness: int = Field(0, ge=0)
    # Which token the bound applies to (cluster/rl/gate.py): oldest = every token at most k
    # versions behind (long responses go stale first); newest = the last token (AReaL /
    # PipelineRL: in-flight updates keep long responses, their early tokens may be older).
    staleness_rule: Literal["oldest", "newest"] = "oldest"
    # Stop a group's generation as soon as it can no longer meet the bound and replace it;
    # false: it finishes and is dropped when judged.
    abort_doomed: bool = True
    # How far ahead generation starts (cluster/rl/lookahead.py): adaptive = the fewest steps (0 to
    # max_staleness) that are as fast as more, measured from step times, so samples are no older
    # than speed requires; eager = always max_staleness steps ahead.
    lookahead: Literal["adaptive", "eager"] = "adaptive"
    eval_every: int = Field(0, ge=0)
    eval_prompts: int = Field(256, ge=1)
    eval_temperature: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(3, ge=0)  # the newest N complete checkpoints are kept (0: all)
    progress: bool = True
    guard: GuardConfig = GuardConfig()


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
    resources: dict[Literal["learner", "rollout", "reward", "critic", "reward_model"], dict[str, float]] = {}
    # Placement groups not ready after this long are an error (resources held elsewhere).
    placement_timeout_s: float = Field(120, gt=0)
    # Rollout and reward workers that die (killed, OOM, node lost) are replaced and their
    # unfinished work re-issued, at most this many times per role in a run; 0: a death ends it.
    max_actor_restarts: int = Field(3, ge=0)
    # Every collective of the learners' (and critic's) process group fails after this long
    # instead of hanging on a rank that stalls; a rank that dies is noticed at once.
    collective_timeout_s: float = Field(600, gt=0)
    # `tandem submit` (slurm, kuberay): the cluster to ask for. num_nodes null: enough
    # nodes of gpus_per_node GPUs for the plan (1 on CPU).
    num_nodes: Optional[int] = Field(None, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int = Field(8, ge=1)
    memory_per_node: str = "32Gi"
    image: str = "tandem:gpu"


class WandbConfig(Section):
    """A Weights & Biases run beside metrics.jsonl (cluster/trackers.py)."""

    project: str
    mode: Literal["online", "offline"] = "online"  # offline: written under the run directory, `wandb sync` later
    entity: Optional[str] = None
    name: Optional[str] = None  # default: run.name
    tags: tuple[str, ...] = ()


class LoggingConfig(Section):
    """Trackers besides metrics.jsonl (which is always written) and sample generations."""

    tensorboard: bool = False  # event files under <run dir>/tensorboard
    wandb: Optional[WandbConfig] = None
    # RL: every N steps, the first sample of up to samples_per_step groups goes to samples.jsonl
    # (prompt, response, reward, versions) and to a W&B table; 0: none.
    samples_every: int = Field(0, ge=0)
    samples_per_step: int = Field(4, ge=1)


class Config(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    trainer: TrainerConfig = TrainerConfig()
    critic: CriticConfig = CriticConfig()
    offline: OfflineConfig = OfflineConfig()
    controller: ControllerConfig = ControllerConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        a = self.algorithm
        from trainer.advantages import ADVANTAGES

        if ADVANTAGES.entry(a.advantage).traits.needs_critic != self.critic.enabled:
            raise ValueError(f"algorithm.advantage '{a.advantage}' and critic.enabled={self.critic.enabled} disagree: "
                             "a critic goes with an estimator that reads its values (gae: PPO with a critic)")
        from trainer.advantages import ADVANTAGES, AdvantageOptions

        grouped = ADVANTAGES.entry(a.advantage).traits.grouped(AdvantageOptions(group_baseline=a.group_baseline))
        if grouped and a.group_size < 2:
            raise ValueError(f"algorithm.advantage '{a.advantage}' needs algorithm.group_size >= 2 "
                             "(a group baseline); use group_baseline: false or gae for one sample per prompt")
        _check_budget(self)
        if a.hint_rescue:
            _check_rescue(self)
        if a.advantage.startswith("noisy_"):
            _check_noisy(self)
        if a.overlong_buffer >= self.rollout.max_new_tokens:
            raise ValueError("algorithm.overlong_buffer must be below rollout.max_new_tokens")
        if self.controller.max_staleness > 0 and self.cluster.placement == "colocated":
            raise ValueError("controller.max_staleness > 0 needs cluster.placement 'disaggregated': colocated "
                             "learners and engines share devices, so generation cannot overlap training")
        if self.cluster.placement == "colocated" and self.run.mode == "rl":
            _check_colocated(self)
        if self.model.lora is not None and self.run.mode == "rl" and self.rollout.engine == "vllm" and \
                self.rollout.weight_transfer not in ("auto", "object_store"):
            raise ValueError(f"model.lora with rollout.engine 'vllm' takes its adapters through the object store "
                             f"(rollout.weight_transfer 'object_store'), not '{self.rollout.weight_transfer}'")
        if self.controller.max_staleness > 0 and self.run.mode != "rl":
            raise ValueError("controller.max_staleness applies to run.mode 'rl' (offline modes have no rollouts)")
        _check_mode(self)
        return self


def _check_noisy(cfg: "Config") -> None:
    """The noisy-verifier corrections model a binary verifier: one 0/1 outcome per sample."""
    a, r = cfg.algorithm, cfg.reward
    if a.verifier_fp_rate + a.verifier_fn_rate >= 1:
        raise ValueError(f"algorithm.verifier_fp_rate + verifier_fn_rate = {a.verifier_fp_rate + a.verifier_fn_rate}"
                         ": at 1 or more the verifier says nothing about correctness (below 1 is needed)")
    if r.format_weight != 0 or r.components or r.shaping != "none" or r.normalize != "none" or \
            a.kl_in == "reward" and a.kl_coef > 0:
        raise ValueError(f"algorithm.advantage '{a.advantage}' corrects a binary verifier's errors: set "
                         "reward.format_weight 0, no reward.components, reward.shaping and reward.normalize 'none', "
                         "and the KL in the loss (algorithm.kl_in 'loss')")


def _check_rescue(cfg: "Config") -> None:
    a = cfg.algorithm
    if cfg.data.hint_key is None:
        raise ValueError("algorithm.hint_rescue generates failed prompts again after their hint: set data.hint_key "
                         "to the column that holds the hints")
    if cfg.rollout.env is not None or a.rollout_budget != "uniform" or cfg.run.mode != "rl":
        raise ValueError("algorithm.hint_rescue goes with single-turn RL (rollout.env null) and "
                         "algorithm.rollout_budget 'uniform' (a retry has group_size samples)")


def _check_budget(cfg: "Config") -> None:
    """Down-sampling trains downsample_keep of each group's samples. A rollout budget other than
    uniform gives prompts groups of different sizes, each dispatch spending n x group_size in all;
    the step's rows equal that sum only when a step trains exactly the groups dispatched for it:
    synchronous, with no group dropped and replaced."""
    from trainer.losses import loss_kind

    a = cfg.algorithm
    if a.token_keep_frac < 1 and (cfg.run.mode != "rl" or loss_kind(a.loss).trains != "policy"):
        raise ValueError(f"algorithm.token_keep_frac {a.token_keep_frac} ranks tokens by |advantage| x entropy: it "
                         f"goes with an RL policy loss, not '{a.loss}' in run.mode '{cfg.run.mode}'")
    if a.downsample_keep is not None:
        if a.downsample_keep >= a.group_size:
            raise ValueError(f"algorithm.downsample_keep ({a.downsample_keep}) must be below algorithm.group_size "
                             f"({a.group_size}): it is how many of each group's samples train")
        if a.rollout_budget != "uniform" or cfg.run.mode == "rl" and loss_kind(a.loss).trains == "preference":
            raise ValueError("algorithm.downsample_keep goes with algorithm.rollout_budget 'uniform' and a policy loss "
                             "(not online DPO, which trains one pair per group anyway)")
    if a.rollout_budget == "uniform":
        return
    hi = a.budget_max or 4 * a.group_size
    if not a.budget_min <= a.group_size <= hi:
        raise ValueError(f"algorithm.budget_min ({a.budget_min}) <= algorithm.group_size ({a.group_size}) <= "
                         f"algorithm.budget_max ({hi}) must hold: group_size is the mean samples per prompt")
    if a.budget_min < 2:
        raise ValueError(f"algorithm.rollout_budget '{a.rollout_budget}' needs algorithm.budget_min >= 2: a group "
                         "of one sample has no group baseline")
    if cfg.controller.max_staleness > 0 or a.dynamic_sampling:
        raise ValueError(f"algorithm.rollout_budget '{a.rollout_budget}' runs with controller.max_staleness 0 and "
                         "algorithm.dynamic_sampling false for now: a group dropped and replaced would change the "
                         "step's row count, which the learners' shapes fix")


def _check_colocated(cfg: "Config") -> None:
    """Colocated placement time-slices each device (cluster/rl/timeslice.py): the learners
    offload their states through DeepSpeed ZeRO-1/2's offload_states and the engine sleeps."""
    if cfg.trainer.zero_stage not in (1, 2):
        raise ValueError(f"cluster.placement 'colocated' with trainer.zero_stage {cfg.trainer.zero_stage}: the "
                         "learners hand the device to the engine through DeepSpeed ZeRO-1/2's offload_states "
                         "(its ZeRO-3 version needs DeepSpeed's FusedAdam); use trainer.zero_stage 1 or 2, or "
                         "cluster.placement 'disaggregated'")
    if cfg.rollout.engine == "vllm" and cfg.cluster.gpus_per_engine == 0:
        raise ValueError("cluster.placement 'colocated' with rollout.engine 'vllm' on CPU: vLLM's sleep mode, which "
                         "frees the device for the learners, runs on GPUs only; use rollout.engine 'hf' or "
                         "cluster.placement 'disaggregated'")
    if cfg.cluster.gpus_per_engine > 1:
        raise ValueError(f"cluster.placement 'colocated' with a tensor-parallel engine (cluster.gpus_per_engine="
                         f"{cfg.cluster.gpus_per_engine}) is not built yet: vLLM's Ray workers would each need a whole "
                         "GPU that a learner rank shares; use cluster.placement 'disaggregated'")


def _check_mode(cfg: "Config") -> None:
    """Each run.mode trains with its own kind of loss; say which when they disagree."""
    from trainer.losses import loss_kind, losses_that

    mode, loss = cfg.run.mode, cfg.algorithm.loss
    trains = loss_kind(loss).trains
    wanted = {"sft": "supervised", "reward_model": "reward_model", "dpo": "preference"}
    if mode in wanted and trains != wanted[mode]:
        raise ValueError(f"run.mode '{mode}' trains with algorithm.loss one of {', '.join(losses_that(wanted[mode]))}; "
                         f"got '{loss}'")
    if mode == "rl" and trains in ("supervised", "reward_model"):
        raise ValueError(f"algorithm.loss '{loss}' is for run.mode 'sft' / 'reward_model', not 'rl'")
    if mode == "rl" and trains == "preference":
        if cfg.algorithm.group_size < 2:
            raise ValueError("online DPO (run.mode 'rl' with a preference loss) needs algorithm.group_size >= 2 "
                             "samples per prompt to rank into a pair")
        if cfg.critic.enabled:
            raise ValueError("online DPO (a preference loss in run.mode 'rl') uses no critic; set critic.enabled false")


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
