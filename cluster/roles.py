"""Start the run's Ray roles (rollout, reward, learners) from the config, and check inputs first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.config import Config, ConfigError
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

    def shutdown(self) -> None:
        self.learners.shutdown()
        self.rollout.shutdown()
        self.reward.shutdown()


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


def learner_options(cfg: Config) -> LearnerOptions:
    t = cfg.trainer
    rows = cfg.controller.prompts_per_step * cfg.algorithm.group_size
    if rows % (t.updates_per_batch * t.num_learners):
        raise ConfigError(f"{rows} samples per step (controller.prompts_per_step x algorithm.group_size) do not "
                          f"split into trainer.updates_per_batch={t.updates_per_batch} x "
                          f"trainer.num_learners={t.num_learners} equal parts")
    per_rank = rows // (t.updates_per_batch * t.num_learners)
    micro = min(t.micro_batch_size, per_rank)
    if per_rank % micro:
        raise ConfigError(f"trainer.micro_batch_size={t.micro_batch_size} does not divide the {per_rank} "
                          f"rows each learner gets per update")
    return LearnerOptions(
        zero_stage=t.zero_stage, lr=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        micro_batch_size=micro, grad_accum_steps=per_rank // micro, dtype=cfg.model.dtype,
        use_reference=cfg.algorithm.kl_coef > 0, seed=cfg.run.seed,
    )


def cpus_needed(cfg: Config) -> int:
    return (cfg.rollout.num_workers * cfg.rollout.threads_per_worker
            + cfg.trainer.num_learners * cfg.trainer.threads_per_learner)


def start_roles(cfg: Config, loopback: bool) -> Roles:
    opts = learner_options(cfg)
    r = cfg.reward
    reward = RewardPool(r.num_workers, r.verifier, r.format_weight, r.timeout_s, r.fallback_score)
    rollout = RolloutPool(cfg.model.path, cfg.rollout.num_workers, cfg.rollout.engine, cfg.model.dtype,
                          cfg.rollout.threads_per_worker, cfg.rollout.batch_size)
    learners = LearnerGroup(cfg.model.path, cfg.trainer.num_learners, opts, cfg.trainer.threads_per_learner,
                            loopback=loopback)
    return Roles(rollout, reward, learners)
