"""Start the run's Ray roles (rollout, reward, learners, critic) in their placement bundles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cluster.config import Config
from cluster.placement import Placement, actor_nodes, build_plan, place
from cluster.shapes import critic_options, learner_options, lora_spec
from cluster.weights import resolve_weight_transfer
from reward.pool import RewardPool
from rollout.config import EngineSetup
from rollout.pool import RolloutPool
from trainer.group import LearnerGroup


@dataclass
class Roles:
    rollout: RolloutPool
    reward: RewardPool
    learners: LearnerGroup
    placement: Optional[Placement] = None  # the reserved placement groups, freed on shutdown
    critic: Optional[LearnerGroup] = None  # the value model (PPO with GAE)

    def shutdown(self, graceful: bool = True) -> None:
        """graceful=False: a learner rank died, its peers may hang in a collective: no goodbye."""
        try:
            if self.critic is not None:
                self.critic.shutdown(graceful)
            self.learners.shutdown(graceful)
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


def start_roles(cfg: Config, loopback: bool, checkpoint: Optional[Path] = None, version: int = 0) -> Roles:
    """Reserve the placement plan's bundles (a plan the cluster cannot hold fails here, before
    any actor starts), then start each role's actors in their bundles. `checkpoint` (resume):
    the engines load its weights as policy `version`, the learners and the critic its state."""
    opts = learner_options(cfg)
    placement = place(build_plan(cfg), cfg.cluster.placement_timeout_s)
    started = []
    try:
        r = cfg.reward
        restarts = cfg.cluster.max_actor_restarts
        started.append(RewardPool(r, actor_options=placement.options("reward"),
                                  model_options=placement.options("reward_model"), max_restarts=restarts))
        # With LoRA the engines load the base model and the adapter (a checkpoint's, on resume).
        lora = lora_spec(cfg)
        setup = EngineSetup(tensor_parallel_size=max(1, cfg.cluster.gpus_per_engine), seed=cfg.run.seed,
                            sleep_mode=cfg.cluster.placement == "colocated",
                            collective=resolve_weight_transfer(cfg) == "collective", version=version, lora=lora,
                            asynchronous=cfg.controller.max_staleness > 0, cpu_linear=cfg.model.cpu_linear,
                            adapter=str(checkpoint) if lora is not None and checkpoint is not None else None)
        engine_path = cfg.model.path if lora is not None else str(checkpoint or cfg.model.path)
        # The engines load while the learners start (their start-ups overlap), then are waited for.
        started.append(RolloutPool(engine_path, cfg.rollout, cfg.model.dtype, setup,
                                   actor_options=placement.options("rollout"), max_restarts=restarts, wait=False))
        started.append(LearnerGroup(cfg.model.path, cfg.trainer.num_learners, opts, cfg.trainer.threads_per_learner,
                                    loopback=loopback, actor_options=placement.options("learner")))
        if cfg.critic.enabled:
            c = cfg.critic
            started.append(LearnerGroup(c.path or cfg.model.path, c.num_learners, critic_options(cfg),
                                        c.threads_per_learner, loopback=loopback,
                                        actor_options=placement.options("critic"), role="critic"))
        started[1].ready()
    except BaseException:
        for pool in reversed(started):
            pool.shutdown()
        placement.remove()
        raise
    critic = started[3] if cfg.critic.enabled else None
    roles = Roles(started[1], started[0], started[2], placement, critic)
    if checkpoint is not None:
        try:
            roles.learners.load_state(str(checkpoint / "policy"))
            if critic is not None:
                critic.load_state(str(checkpoint / "critic"))
        except BaseException:
            roles.shutdown()
            raise
    return roles
