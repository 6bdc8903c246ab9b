"""Start the run's Ray roles (rollout, reward, learners) from the config, and check inputs first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cluster.config import Config, ConfigError
from cluster.placement import Placement, actor_nodes, build_plan, place
from reward.pool import RewardPool
from rollout.data import Prompt, load_prompts
from rollout.pool import RolloutPool
from trainer.group import LearnerGroup
from trainer.learner import LearnerOptions


@dataclass
class Roles:
    rollout: RolloutPool
    reward: RewardPool
    learners: LearnerGroup
    placement: Optional[Placement] = None  # the reserved placement groups, freed on shutdown
    critic: Optional[LearnerGroup] = None  # the value model (PPO with GAE)

    def shutdown(self) -> None:
        try:
            if self.critic is not None:
                self.critic.shutdown()
            self.learners.shutdown()
            self.rollout.shutdown()
            self.reward.shutdown()
        finally:
            if self.placement is not None:
                self.placement.remove()

    def actor_nodes(self) -> dict[str, list[str]]:
        """role -> the Ray node id of each of its actors (rank order), as the actors report it."""
        nodes = {"learner": actor_nodes(self.learners.actors), "rollout": actor_nodes(self.rollout.workers),
                 "reward": actor_nodes(self.reward.workers)}
        if self.critic is not None:
            nodes["critic"] = actor_nodes(self.critic.actors)
        return nodes


def prepare_inputs(cfg: Config, log=print) -> tuple[list[Prompt], list[Prompt]]:
    """Bootstrap the tiny model if asked, then check model and data before any actor starts."""
    if cfg.model.bootstrap:
        from trainer.bootstrap import ensure_tiny_model

        ensure_tiny_model(cfg.model.path, cfg.model.bootstrap_spec, seed=cfg.run.seed, log=log)
    model = Path(cfg.model.path)
    if not model.exists():
        raise ConfigError(f"model.path '{model}' does not exist (set model.bootstrap: true to build the tiny model)")
    if not (model / "config.json").is_file():
        raise ConfigError(f"model.path '{model}' is not a Hugging Face checkpoint (no config.json)")
    keys = dict(prompt_key=cfg.data.prompt_key, answer_key=cfg.data.answer_key)
    return load_prompts(cfg.data.train_path, **keys), load_prompts(cfg.data.eval_path, **keys)


def rows_per_step(cfg: Config) -> int:
    """Rows each step trains on: every sample, or (online DPO) one chosen/rejected pair per prompt."""
    from trainer.losses import PREFERENCE_LOSSES

    if cfg.algorithm.loss in PREFERENCE_LOSSES:
        return 2 * cfg.controller.prompts_per_step
    return cfg.controller.prompts_per_step * cfg.algorithm.group_size


def learner_options(cfg: Config) -> LearnerOptions:
    from trainer.losses import PREFERENCE_LOSSES, REFERENCE_LOSSES

    if cfg.run.mode != "rl":
        from cluster.offline import offline_learner_options

        return offline_learner_options(cfg)
    t = cfg.trainer
    rows = rows_per_step(cfg)
    pairs = cfg.algorithm.loss in PREFERENCE_LOSSES
    what = ("2 x controller.prompts_per_step, a pair per prompt" if pairs
            else "controller.prompts_per_step x algorithm.group_size")
    micro, accum = learner_shape(rows, what, t.updates_per_batch * t.num_learners,
                                 f"trainer.updates_per_batch={t.updates_per_batch} x "
                                 f"trainer.num_learners={t.num_learners}", t.micro_batch_size,
                                 "trainer.micro_batch_size", pairs)
    return LearnerOptions(
        zero_stage=t.zero_stage, lr=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        micro_batch_size=micro, grad_accum_steps=accum, dtype=cfg.model.dtype,
        use_reference=cfg.algorithm.kl_coef > 0 or cfg.algorithm.loss in REFERENCE_LOSSES, seed=cfg.run.seed,
        gradient_checkpointing=t.gradient_checkpointing, attn_implementation=t.attn_implementation,
    )


def critic_options(cfg: Config) -> LearnerOptions:
    c, t = cfg.critic, cfg.trainer
    micro, accum = learner_shape(rows_per_step(cfg), "controller.prompts_per_step x algorithm.group_size",
                                 t.updates_per_batch * c.num_learners,
                                 f"trainer.updates_per_batch={t.updates_per_batch} x "
                                 f"critic.num_learners={c.num_learners}", c.micro_batch_size,
                                 "critic.micro_batch_size")
    return LearnerOptions(zero_stage=c.zero_stage, lr=c.lr, max_grad_norm=c.max_grad_norm, micro_batch_size=micro,
                          grad_accum_steps=accum, dtype=cfg.model.dtype, model_kind="value",
                          seed=cfg.run.seed, gradient_checkpointing=t.gradient_checkpointing,
                          attn_implementation=t.attn_implementation)


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


def cpus_needed(cfg: Config) -> int:
    """Logical CPUs the placement plan reserves (the embedded cluster gets at least this many)."""
    import math

    return math.ceil(build_plan(cfg).totals().get("CPU", 0))


def start_roles(cfg: Config, loopback: bool) -> Roles:
    """Reserve the placement plan's bundles (a plan the cluster cannot hold fails here, before
    any actor starts), then start each role's actors in their bundles."""
    opts = learner_options(cfg)
    placement = place(build_plan(cfg), cfg.cluster.placement_timeout_s)
    started = []
    try:
        r = cfg.reward
        started.append(RewardPool(r, actor_options=placement.options("reward")))
        started.append(RolloutPool(cfg.model.path, cfg.rollout.num_workers, cfg.rollout.engine, cfg.model.dtype,
                                   cfg.rollout.threads_per_worker, cfg.rollout.batch_size,
                                   actor_options=placement.options("rollout"),
                                   engine_options=cfg.rollout.engine_options(max(1, cfg.cluster.gpus_per_engine)),
                                   in_flight=cfg.rollout.in_flight))
        started.append(LearnerGroup(cfg.model.path, cfg.trainer.num_learners, opts, cfg.trainer.threads_per_learner,
                                    loopback=loopback, actor_options=placement.options("learner")))
        if cfg.critic.enabled:
            c = cfg.critic
            started.append(LearnerGroup(c.path or cfg.model.path, c.num_learners, critic_options(cfg),
                                        c.threads_per_learner, loopback=loopback,
                                        actor_options=placement.options("critic")))
    except BaseException:
        for pool in reversed(started):
            pool.shutdown()
        placement.remove()
        raise
    critic = started[3] if cfg.critic.enabled else None
    return Roles(started[1], started[0], started[2], placement, critic)
