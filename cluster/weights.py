"""Weight sync from the learner role to the rollout role, over the carrier that
`rollout.weight_transfer` names (rollout/transfer/):

  object_store  learner rank 0 puts each bucket in Ray's object store; each engine fetches it
  collective    learner rank 0 broadcasts the buckets through a torch.distributed group of its
                own with the engines (gloo on CPU, NCCL on GPUs); an `hf` engine's rollout
                worker joins it, a `vllm` engine's own worker process does (rollout/vllm_worker.py)

  ipc           colocated on GPUs: learner rank k hands the engine on its GPU CUDA IPC handles
                on its packed buckets (GPU only, untested on CPU)

All move the same fingerprinted buckets in the training dtype (rollout/transfer/buckets.py),
ZeRO-3 ranks gathering one bucket at a time.

Either way an update is version = previous + 1, verified by every engine before the swap, and
a failed check leaves the old weights in place and fails the sync.
"""

from __future__ import annotations

import ray

from cluster.config import Config, ConfigError
from trainer.group import LearnerGroup, gather
from rollout.pool import RolloutPool


def resolve_weight_transfer(cfg: Config) -> str:
    """The carrier this recipe uses; one that cannot run here is a ConfigError naming the field."""
    r, c = cfg.rollout, cfg.cluster
    learner_gpu, engine_gpu = c.gpus_per_learner > 0, c.gpus_per_engine > 0
    if r.weight_transfer == "auto":
        if not (learner_gpu and engine_gpu and c.gpus_per_engine == 1) or (cfg.model.lora and r.engine == "vllm"):
            return "object_store"
        if c.placement == "disaggregated":
            return "collective"
        return "ipc" if _ipc_problem(cfg) is None else "object_store"
    if r.weight_transfer == "ipc":
        problem = _ipc_problem(cfg)
        if problem:
            raise ConfigError(f"rollout.weight_transfer 'ipc' {problem}; use rollout.weight_transfer=object_store"
                              + (" or collective" if c.placement == "disaggregated" else ""))
    if r.weight_transfer == "collective":
        if r.engine == "vllm" and c.gpus_per_engine > 1:
            raise ConfigError(f"rollout.weight_transfer 'collective' into a tensor-parallel vllm engine "
                              f"(cluster.gpus_per_engine={c.gpus_per_engine}) is not built yet: each shard would "
                              f"have to join the group; use rollout.weight_transfer=object_store")
        if learner_gpu and c.placement == "colocated":
            raise ConfigError("rollout.weight_transfer 'collective' with colocated GPUs: NCCL cannot join two "
                              "processes on one GPU; use rollout.weight_transfer=ipc (or auto)")
        if learner_gpu != engine_gpu:
            raise ConfigError(f"rollout.weight_transfer 'collective' needs the learners and the engines on the same "
                              f"kind of device (cluster.gpus_per_learner={c.gpus_per_learner}, "
                              f"cluster.gpus_per_engine={c.gpus_per_engine}): NCCL joins GPUs, gloo CPUs; use "
                              f"rollout.weight_transfer=object_store")
    return r.weight_transfer


def _ipc_problem(cfg: Config):
    """Why CUDA IPC cannot carry this recipe's updates (None: it can)."""
    r, c, t = cfg.rollout, cfg.cluster, cfg.trainer
    if c.placement != "colocated" or not (c.gpus_per_learner and c.gpus_per_engine):
        return "needs learners and engines on shared GPUs (cluster.placement 'colocated' with GPUs)"
    if r.engine != "hf":
        return "into the vllm engine is not built yet"
    if c.gpus_per_engine > 1 or r.num_workers > t.num_learners:
        return (f"needs a learner rank on every engine's GPU (rollout.num_workers={r.num_workers}, "
                f"trainer.num_learners={t.num_learners}, cluster.gpus_per_engine={c.gpus_per_engine})")
    return None


class WeightSync:
    """Publishes each new policy version from the learners to every engine."""

    def __init__(self, cfg: Config, learners: LearnerGroup, rollout: RolloutPool, loopback: bool):
        self.kind = resolve_weight_transfer(cfg)
        self.learners, self.rollout = learners, rollout
        r = cfg.rollout
        self.layout = learners.transfer_layout(r.weight_bucket_mb * 2**20)
        self.full_model_bytes = learners.model_bytes()  # what a full update would move (LoRA moves the adapter)
        rollout.set_layout(self.layout)
        # A restarted engine gets the run's current weights through the object store, whatever
        # the carrier; with `collective` the transfer group then forms again, the new engine in it.
        if self.kind == "collective" and r.engine == "vllm":
            rollout.refill_problem = ("a vllm engine on rollout.weight_transfer 'collective' cannot take its first "
                                      "weights from the object store yet; object_store can")
        else:
            rollout.refill = lambda version: learners.export_weights(version, self.layout)
        if self.kind == "collective":
            self.loopback, self.timeout_s = loopback, r.weight_transfer_timeout_s
            self.backend = "nccl" if cfg.cluster.gpus_per_learner > 0 else "gloo"
            self.form_group()
            rollout.rejoin = self.form_group

    def form_group(self) -> None:
        """Learner rank 0 and every engine (re)join one transfer group, on a fresh port."""
        ip, port = ray.get(self.learners.actors[0].address.remote())
        host = "127.0.0.1" if self.loopback else ip
        world = len(self.rollout.workers) + 1
        gather(self.learners.open_transfer(host, port, world, self.backend, self.timeout_s)
               + self.rollout.open_transfer(host, port, self.backend, self.timeout_s, self.layout))

    def sync(self, version: int) -> None:
        """Publish `version`; raises WeightSyncError (old weights kept) when a check fails."""
        if self.kind == "object_store":
            self.rollout.update_weights(self.learners.export_weights(version, self.layout))
        elif self.kind == "ipc":
            handles = self.learners.export_ipc(version, self.layout)
            try:
                self.rollout.receive_ipc(version, handles)
            finally:
                self.learners.release_ipc()
        else:
            gather(self.learners.send_weights(version, self.layout) + self.rollout.receive_weights(version))
        self.rollout.version = version

    @property
    def bytes_per_update(self) -> int:
        """Payload bytes one update moves: the model's parameters (with LoRA, the adapter's) in
        their training dtype."""
        return self.layout.total_bytes
