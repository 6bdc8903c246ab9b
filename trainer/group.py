"""LearnerGroup: N learner actors forming one DeepSpeed data-parallel group."""

from __future__ import annotations

import numpy as np
import ray

from rollout.transfer.object_store import StoredUpdate
from trainer.learner import Learner, LearnerOptions
from trainer.types import LossSpec, StepStats, TrainBatch


class LearnerFault(RuntimeError):
    """A learner (or critic) rank died; its group cannot go on (cluster/rl/controller.py
    restarts the run's roles from the last complete checkpoint, or stops naming the rank)."""

    def __init__(self, role: str, rank: int, cause: str, advice: str = ""):
        self.role, self.rank, self.cause = role, rank, cause
        super().__init__(f"{role} rank {rank} died ({cause})" + (f"; {advice}" if advice else ""))


def gather(futures: list, role: str | None = None) -> list:
    """ray.get that fails as soon as any rank fails (a dead rank must not leave us
    waiting on its peers, which may be blocked in a collective). `role`: the futures are
    that group's ranks in order, and a dead rank is raised as LearnerFault naming it."""
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done)  # raises this rank's error, if any
        except ray.exceptions.RayError as err:
            if role is not None:
                _name_the_dead(futures, role, done[0], err)
            raise
    return ray.get(futures)


def _name_the_dead(futures: list, role: str, failed, err: Exception) -> None:
    """Raise LearnerFault for the rank that died: the one whose call failed, or, when a live
    rank's collective broke first because a peer died, the peer Ray reports dead within 5 s."""
    if not isinstance(err, ray.exceptions.RayActorError):
        ray.wait(futures, num_returns=len(futures), timeout=5)
    for rank, future in sorted(enumerate(futures), key=lambda rf: rf[1] != failed):
        try:
            ray.get(future, timeout=0)
        except ray.exceptions.RayActorError as dead:
            raise LearnerFault(role, rank, type(dead).__name__) from err
        except Exception:  # alive: its own error, or still running
            continue


class LearnerGroup:
    def __init__(self, model_path: str, world_size: int, opts: LearnerOptions, threads: int = 1,
                 loopback: bool = True, actor_options: list[dict] | None = None, role: str = "learner"):
        env = {"OMP_NUM_THREADS": str(threads)}
        if loopback:
            env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's traffic on the loopback interface
        # actor_options: per-rank Ray options (placement group bundle, resources) from cluster/placement.py.
        extra = actor_options or [{} for _ in range(world_size)]
        base = dict(num_cpus=threads, runtime_env={"env_vars": env})
        actor = ray.remote(Learner)  # one class export; per-actor options below
        self.actors = [actor.options(**{**base, **extra[rank]}).remote(model_path, threads)
                       for rank in range(world_size)]
        self.world_size = world_size
        self.role = role  # "learner" or "critic": what a LearnerFault names
        ip, port = ray.get(self.actors[0].address.remote())
        master = "127.0.0.1" if loopback else ip
        gather([a.setup.remote(rank, world_size, master, port, opts) for rank, a in enumerate(self.actors)], role)

    def _shards(self, batch: TrainBatch) -> list[TrainBatch]:
        n = len(batch)
        if n % self.world_size:
            raise ValueError(f"batch of {n} rows does not split over {self.world_size} learners")
        per = n // self.world_size
        return [batch.rows(slice(r * per, (r + 1) * per)) for r in range(self.world_size)]

    def train_step(self, batch: TrainBatch, spec: LossSpec) -> dict[str, float]:
        """One optimizer step on `batch`; its loss_weights must cover exactly this step."""
        stats: list[StepStats] = gather(
            [a.train_step.remote(shard, spec) for a, shard in zip(self.actors, self._shards(batch))], self.role
        )
        tokens = max(sum(s.tokens for s in stats), 1)
        out = {"loss": sum(s.loss for s in stats)}
        for key in stats[0].sums:
            out[key] = sum(s.sums[key] for s in stats) / tokens
        rows = max(sum(s.rows for s in stats), 1)
        for key in stats[0].row_sums:  # per-sequence metrics: mean over the rows that trained
            out[key] = sum(s.row_sums[key] for s in stats) / rows
        for key in dict.fromkeys(k for s in stats for k in s.maxes):  # a rank with no response tokens has none
            out[f"{key}_max"] = max(s.maxes[key] for s in stats if key in s.maxes)
        out["grad_norm"] = stats[0].grad_norm  # global (all-rank) norm before clipping
        if len({s.skipped for s in stats}) > 1:
            raise RuntimeError(f"{self.role} ranks disagree on skipping a non-finite step: {[s.skipped for s in stats]}")
        out["nonfinite"] = float(stats[0].skipped)  # 1: the loss or gradient was not finite, nothing moved
        out["lr"] = stats[0].lr
        return out

    def logprobs(self, batch: TrainBatch, temperature: float) -> np.ndarray:
        return self._per_token("logprobs", batch, temperature)

    def reference_logprobs(self, batch: TrainBatch, temperature: float) -> np.ndarray:
        return self._per_token("reference_logprobs", batch, temperature)

    def values(self, batch: TrainBatch) -> np.ndarray:
        return self._per_token("values", batch)

    def scores(self, batch: TrainBatch) -> np.ndarray:
        """Reward model's scalar per row [B] (model_kind 'reward')."""
        return self._per_token("scores", batch)

    def _per_token(self, method: str, batch: TrainBatch, *args) -> np.ndarray:
        """A no-update forward on every rank's shard, concatenated back in row order."""
        shards = self._shards(batch)
        parts = gather([getattr(a, method).remote(s, *args) for a, s in zip(self.actors, shards)], self.role)
        return np.concatenate(parts, axis=0)

    def export_weights(self, version: int, layout) -> StoredUpdate:
        """Update `version` in the object store, bucket by bucket (rollout/transfer/object_store.py)."""
        return gather([a.export_weights.remote(version, layout) for a in self.actors], self.role)[0]

    def transfer_layout(self, bucket_bytes: int):
        return ray.get(self.actors[0].transfer_layout.remote(bucket_bytes))

    def open_transfer(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> list:
        """Futures: rank 0 joins the weight-transfer group (the engines join at the same time)."""
        return [self.actors[0].open_transfer.remote(host, port, world_size, backend, timeout_s)]

    def send_weights(self, version: int, layout) -> list:
        """Futures of every rank's send (collectives: the engines receive at the same time)."""
        return [a.send_weights.remote(version, layout) for a in self.actors]

    def offload(self, keep_params: bool = False) -> list:
        """Every rank's OffloadStats (colocated placement: the engine gets the device)."""
        return gather([a.offload.remote(keep_params) for a in self.actors], self.role)

    def reload(self) -> list:
        return gather([a.reload.remote() for a in self.actors], self.role)

    def export_ipc(self, version: int, layout) -> list[tuple]:
        """Every rank's CUDA IPC handles on its packed update (rollout/transfer/ipc.py), rank order."""
        return gather([a.export_ipc.remote(version, layout) for a in self.actors], self.role)

    def release_ipc(self) -> None:
        gather([a.release_ipc.remote() for a in self.actors], self.role)

    def save_state(self, path: str) -> None:
        """Every rank's full training state under `path` (trainer/learner.py save_state)."""
        gather([a.save_state.remote(path) for a in self.actors], self.role)

    def load_state(self, path: str) -> None:
        gather([a.load_state.remote(path) for a in self.actors], self.role)

    def save_hf(self, path: str, merge: bool = False) -> str:
        return gather([a.save_hf.remote(path, merge) for a in self.actors], self.role)[0]

    def model_bytes(self) -> int:
        return ray.get(self.actors[0].model_bytes.remote())

    def shutdown(self, graceful: bool = True) -> None:
        try:
            if graceful:
                ray.get([a.shutdown.remote() for a in self.actors], timeout=10)
        except Exception:
            pass  # a rank that already died or hangs is killed below
        finally:
            for a in self.actors:
                ray.kill(a)
