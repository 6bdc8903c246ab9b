"""Batch-shape arithmetic: how many rows a step trains on and how they split into learner ranks,
mini-batches and micro-batches, and the LearnerOptions of each learner group (policy, critic,
offline). Pure functions of the config: errors name the fields to change, before anything starts."""

from __future__ import annotations

from cluster.config import Config, ConfigError
from trainer.learner import LearnerOptions
from trainer.losses import loss_kind
from trainer.schedules import Schedule

PAIRED_MODES = ("reward_model", "dpo")  # offline modes whose examples are chosen/rejected pairs


def is_online_preference(cfg: Config) -> bool:
    """run.mode rl with a preference loss (online DPO): each group becomes one pair."""
    return cfg.run.mode == "rl" and loss_kind(cfg.algorithm.loss).trains == "preference"


def rows_per_step(cfg: Config) -> int:
    """Rows each RL step trains on: every sample (those down-sampling keeps), or (online DPO) one
    chosen/rejected pair per prompt."""
    if is_online_preference(cfg):
        return 2 * cfg.controller.prompts_per_step
    return cfg.controller.prompts_per_step * (cfg.algorithm.downsample_keep or cfg.algorithm.group_size)


def learner_shape(rows: int, what: str, parts: int, parts_desc: str, micro_batch_size: int, micro_field: str,
                  pairs: bool = False) -> tuple[int, int]:
    """(micro-batch rows, accumulation steps) for `rows` rows per optimizer step split into `parts`
    equal shards (learner ranks x mini-batches); the errors name the fields to change."""
    if rows % parts:
        raise ConfigError(f"{rows} rows per step ({what}) do not split into {parts_desc} equal parts")
    per_rank = rows // parts
    micro = min(micro_batch_size, per_rank)
    if per_rank % micro or (pairs and micro % 2):
        raise ConfigError(f"{micro_field}={micro_batch_size}: the micro-batch must divide the {per_rank} rows "
                          f"each learner gets per step" + (" and must be even (chosen/rejected row pairs stay "
                                                           "together)" if pairs else ""))
    return micro, per_rank // micro


def lora_spec(cfg: Config):
    """model.lora as the learners and engines take it (rollout/lora.py), or None."""
    return cfg.model.lora.spec() if cfg.model.lora is not None else None


def schedule(section, optimizer_steps: int) -> Schedule:
    """A learner section's (trainer, critic) learning-rate schedule over the run's optimizer steps."""
    return Schedule(section.lr_schedule, max(optimizer_steps, 1), section.lr_warmup_steps, section.min_lr_ratio)


def policy_optimizer_steps(cfg: Config) -> int:
    """Policy optimizer steps an RL run applies: updates_per_batch per step, none in the critic's warm-up."""
    trained = cfg.controller.steps - (cfg.critic.warmup_steps if cfg.critic.enabled else 0)
    return max(trained, 0) * cfg.trainer.updates_per_batch


def learner_options(cfg: Config, offline_steps: int = 1) -> LearnerOptions:
    """The policy learners' options (any run.mode; offline modes: over `offline_steps` optimizer steps)."""
    if cfg.run.mode != "rl":
        return offline_learner_options(cfg, offline_steps)
    t = cfg.trainer
    pairs = is_online_preference(cfg)
    what = ("2 x controller.prompts_per_step, a pair per prompt" if pairs
            else "controller.prompts_per_step x algorithm.group_size (or downsample_keep)")
    micro, accum = learner_shape(rows_per_step(cfg), what, t.updates_per_batch * t.num_learners,
                                 f"trainer.updates_per_batch={t.updates_per_batch} x "
                                 f"trainer.num_learners={t.num_learners}", t.micro_batch_size,
                                 "trainer.micro_batch_size", pairs)
    return LearnerOptions(
        zero_stage=t.zero_stage, lr=t.lr, schedule=schedule(t, policy_optimizer_steps(cfg)),
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, micro_batch_size=micro, grad_accum_steps=accum,
        dtype=cfg.model.dtype,
        use_reference=cfg.algorithm.kl_coef > 0 or loss_kind(cfg.algorithm.loss).needs_reference, seed=cfg.run.seed,
        gradient_checkpointing=t.gradient_checkpointing, attn_implementation=t.attn_implementation,
        logprob_chunk_tokens=t.logprob_chunk_tokens, collective_timeout_s=cfg.cluster.collective_timeout_s,
        lora=lora_spec(cfg), cpu_linear=cfg.model.cpu_linear,
    )


def critic_options(cfg: Config) -> LearnerOptions:
    c, t = cfg.critic, cfg.trainer
    micro, accum = learner_shape(rows_per_step(cfg), "controller.prompts_per_step x algorithm.group_size",
                                 t.updates_per_batch * c.num_learners,
                                 f"trainer.updates_per_batch={t.updates_per_batch} x "
                                 f"critic.num_learners={c.num_learners}", c.micro_batch_size,
                                 "critic.micro_batch_size")
    return LearnerOptions(zero_stage=c.zero_stage, lr=c.lr,
                          schedule=schedule(c, cfg.controller.steps * t.updates_per_batch),
                          max_grad_norm=c.max_grad_norm, micro_batch_size=micro, grad_accum_steps=accum, dtype=cfg.model.dtype, model_kind="value",
                          seed=cfg.run.seed, gradient_checkpointing=t.gradient_checkpointing,
                          attn_implementation=t.attn_implementation,
                          collective_timeout_s=cfg.cluster.collective_timeout_s, lora=lora_spec(cfg),
                          cpu_linear=cfg.model.cpu_linear)


def offline_learner_options(cfg: Config, steps: int) -> LearnerOptions:
    """Learner shapes for an offline step of offline.batch_size examples (2 rows per pair), over `steps`
    optimizer steps."""
    t = cfg.trainer
    pairs = cfg.run.mode in PAIRED_MODES
    rows = cfg.offline.batch_size * (2 if pairs else 1)
    micro, accum = learner_shape(rows, f"offline.batch_size={cfg.offline.batch_size}" + (" pairs" if pairs else ""),
                                 t.num_learners, f"trainer.num_learners={t.num_learners}", t.micro_batch_size,
                                 "trainer.micro_batch_size", pairs)
    return LearnerOptions(zero_stage=t.zero_stage, lr=t.lr, schedule=schedule(t, steps), weight_decay=t.weight_decay,
                          max_grad_norm=t.max_grad_norm, micro_batch_size=micro, grad_accum_steps=accum,
                          dtype=cfg.model.dtype, model_kind="reward" if cfg.run.mode == "reward_model" else "policy",
                          seed=cfg.run.seed, gradient_checkpointing=t.gradient_checkpointing,
                          attn_implementation=t.attn_implementation, logprob_chunk_tokens=t.logprob_chunk_tokens,
                          collective_timeout_s=cfg.cluster.collective_timeout_s, lora=lora_spec(cfg),
                          cpu_linear=cfg.model.cpu_linear)
