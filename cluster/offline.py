"""Offline training loop: SFT, reward-model training and offline DPO over a dataset.

No rollouts and no reward workers: the same DeepSpeed LearnerGroup as the RL loop is fed
step-shaped batches from a dataset. What differs per mode is a small Task (how a batch is
built and weighted, which registered loss trains it, how held-out data is evaluated):

  sft           padded or packed rows, `sft` loss (NLL) on completion tokens, token-mean
  reward_model  chosen/rejected rows, `bradley_terry` on a sequence classifier (model_kind
                "reward"); held-out pair accuracy; the checkpoint is what reward workers serve
  dpo           chosen/rejected rows, a preference loss (dpo, cdpo, ipo, simpo, orpo); the
                reference policy's sequence logprobs are computed once, before the first step,
                by the learners themselves (they hold the initial policy then) and cached
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.config import Config, ConfigError
from cluster.rundir import RunDir, RunSummary
from cluster.runtime import ray_session
from cluster.shapes import PAIRED_MODES, offline_learner_options
from rollout.render import Renderer, save_rendering
from trainer.data import Keys, load_pairs, load_sft
from trainer.group import LearnerGroup
from trainer.losses import AGGREGATIONS, loss_kind
from trainer.batches import pack, packed_batch, pad_pairs, pair_batch, padded_batch
from trainer.preference import implicit_reward_stats, pair_accuracy, pair_weights
from trainer.types import LossSpec, TrainBatch

def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def sequence_values(group: LearnerGroup, items: list, build, chunk: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """A no-update pass over any number of examples, `chunk` at a time (each chunk's rows padded
    to a multiple of the group size): per row, the reward model's score ('scores') or the sum of
    its masked token logprobs ('logprobs'), and its number of masked tokens."""
    values, tokens = [], []
    for part in _chunks(len(items), chunk):
        batch = build(items[part])
        n = len(batch)
        pad = (-n) % group.world_size
        padded = batch.rows(np.r_[np.arange(n), np.zeros(pad, dtype=int)]) if pad else batch
        if method == "scores":
            values.append(group.scores(padded)[:n])
        else:
            values.append((group.logprobs(padded, 1.0)[:n] * batch.loss_mask).sum(axis=1))
        tokens.append(batch.loss_mask.sum(axis=1))
    return np.concatenate(values), np.concatenate(tokens)


class Task:
    """One offline mode: its batches, its loss weights, its held-out evaluation."""

    def __init__(self, cfg: Config, group: LearnerGroup, train: list, evals: list, pad_id: int):
        self.cfg, self.group, self.train, self.evals, self.pad_id = cfg, group, train, evals, pad_id
        self.rows = cfg.offline.batch_size * (2 if cfg.run.mode in PAIRED_MODES else 1)
        a = cfg.algorithm
        self.spec = LossSpec(name=a.loss, beta=a.beta, label_smoothing=a.label_smoothing, simpo_gamma=a.simpo_gamma,
                             orpo_lambda=a.orpo_lambda)

    def prepare(self) -> None:
        """Work done once before training (the DPO reference pass)."""

    def epoch(self, rng: np.random.Generator):
        """Step-shaped batches (exactly self.rows rows, loss weights set) of one pass."""
        order = rng.permutation(len(self.train))
        for part in _chunks(len(order), self.cfg.offline.batch_size):
            yield self.weighted(self.batch([self.train[i] for i in order[part]], order[part]))

    @classmethod
    def steps_per_epoch(cls, cfg: Config, train: list) -> int:
        return math.ceil(len(train) / cfg.offline.batch_size)


class SFTTask(Task):
    def batch(self, examples: list, index: np.ndarray) -> TrainBatch:
        n = len(examples)
        batch = padded_batch(examples + examples[:1] * (self.rows - n), self.pad_id)
        if n < self.rows:  # the epoch's last, short step: filler rows that weigh nothing
            mask = batch.loss_mask.copy()
            mask[n:] = 0.0
            batch = batch.replace(loss_mask=mask)
        return batch

    def weighted(self, batch: TrainBatch) -> TrainBatch:
        return batch.replace(loss_weights=AGGREGATIONS.get("token-mean")(batch.loss_mask, 0))

    def epoch(self, rng: np.random.Generator):
        if not self.cfg.offline.packing:
            yield from super().epoch(rng)
            return
        # Packed: whole rows of data.max_length tokens, offline.batch_size rows per step.
        bins = pack([self.train[i] for i in rng.permutation(len(self.train))], self.cfg.data.max_length)
        bins = [bins[i] for i in rng.permutation(len(bins))]
        for part in _chunks(len(bins), self.rows):
            rows = bins[part]
            yield self.weighted(packed_batch(rows + [[]] * (self.rows - len(rows)), self.pad_id))

    @classmethod
    def steps_per_epoch(cls, cfg: Config, train: list) -> int:
        if not cfg.offline.packing:
            return super().steps_per_epoch(cfg, train)
        return math.ceil(len(pack(train, cfg.data.max_length)) / cfg.offline.batch_size)

    def evaluate(self) -> dict:
        """Held-out NLL per completion token (and its perplexity)."""
        logp, tokens = sequence_values(self.group, self.evals, lambda e: padded_batch(e, self.pad_id), 2 * self.rows,
                                       "logprobs")
        nll = float(-logp.sum() / max(tokens.sum(), 1))
        return {"nll": nll, "perplexity": math.exp(min(nll, 50.0))}


class RewardModelTask(Task):
    def batch(self, pairs: list, index: np.ndarray) -> TrainBatch:
        batch = pair_batch(pairs, self.pad_id)
        if self.cfg.data.margin_key is None:
            batch = batch.replace(margins=np.full(len(batch), self.cfg.algorithm.rm_margin, dtype=np.float32))
        return pad_pairs(batch, self.rows)

    def weighted(self, batch: TrainBatch) -> TrainBatch:
        return batch.replace(loss_weights=pair_weights(batch.loss_mask))

    def _pairs(self, pairs: list) -> TrainBatch:
        return pair_batch(pairs, self.pad_id)

    def evaluate(self) -> dict:
        """Held-out pair accuracy (chosen scored above rejected) and mean score margin."""
        scores, _ = sequence_values(self.group, self.evals, self._pairs, self.rows, "scores")
        return {"accuracy": pair_accuracy(scores), "margin": float((scores[0::2] - scores[1::2]).mean())}


class DPOTask(RewardModelTask):
    def prepare(self) -> None:
        """Reference sequence logprobs of every train and held-out row, once (the learners hold
        the initial policy now); each batch then carries them instead of a reference model."""
        self.ref_train = self._sequence_logprobs(self.train) if loss_kind(self.cfg.algorithm.loss).needs_reference else None
        self.ref_eval = self._sequence_logprobs(self.evals)

    def _sequence_logprobs(self, pairs: list) -> np.ndarray:
        return sequence_values(self.group, pairs, self._pairs, self.rows, "logprobs")[0]

    def batch(self, pairs: list, index: np.ndarray) -> TrainBatch:
        batch = pair_batch(pairs, self.pad_id)
        if self.ref_train is not None:
            # Only each row's masked sum of ref_logprobs enters the DPO losses: the cached sum
            # sits on the row's first answer token (sequence sums, not [B, T] arrays, are cached).
            rows = np.stack([2 * index, 2 * index + 1], axis=1).ravel()
            ref = np.zeros(batch.loss_mask.shape, dtype=np.float32)
            first = np.argmax(batch.loss_mask > 0, axis=1)
            ref[np.arange(len(batch)), first] = self.ref_train[rows]
            batch = batch.replace(ref_logprobs=ref)
        return pad_pairs(batch, self.rows)

    def evaluate(self) -> dict:
        """Held-out implicit reward beta * log pi/pi_ref: mean margin chosen - rejected and win rate."""
        policy = self._sequence_logprobs(self.evals)
        return implicit_reward_stats(policy, self.ref_eval, self.cfg.algorithm.beta)


TASKS = {"sft": SFTTask, "reward_model": RewardModelTask, "dpo": DPOTask}


@dataclass
class OfflineData:
    train: list
    evals: list
    dropped: int
    pad_id: int
    renderer: Renderer  # how the rows were rendered: a reward model's export records it


def load_offline_data(cfg: Config) -> OfflineData:
    """Tokenised train and held-out sets (held-out capped at offline.eval_size)."""
    from transformers import AutoTokenizer

    d = cfg.data
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    # Reward-model rows: prompt + response ids, no EOS; the export records this rendering and the
    # reward-model worker renders what it scores the same way (rollout/render.py).
    renderer = Renderer(tok, d.chat_template, d.max_length, append_eos=cfg.run.mode != "reward_model",
                        system_prompt=d.system_prompt)
    keys = Keys(d.prompt_key, d.completion_key, d.messages_key, d.chosen_key, d.rejected_key, d.margin_key)
    load = load_sft if cfg.run.mode == "sft" else load_pairs
    train, dropped = load(d.train_path, renderer, keys)
    evals, _ = load(d.eval_path, renderer, keys)
    if not train or not evals:
        raise ConfigError(f"no usable {'train' if not train else 'eval'} examples within data.max_length={d.max_length}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return OfflineData(train, evals[: cfg.offline.eval_size], dropped, pad, renderer)


def planned_steps(cfg: Config, train: list) -> int:
    """Optimizer steps of an offline run: `offline.epochs` passes, at most `offline.max_steps`."""
    o = cfg.offline
    total = o.epochs * TASKS[cfg.run.mode].steps_per_epoch(cfg, train)
    return min(total, o.max_steps) if o.max_steps else total


def train_offline(cfg: Config, task: Task, run_dir: RunDir, log) -> dict:
    """Epochs of optimizer steps, held-out evaluation before, every offline.eval_every steps and after."""
    o = cfg.offline
    total = planned_steps(cfg, task.train)
    t0, rng, step, train_s = time.perf_counter(), np.random.default_rng(cfg.run.seed), 0, 0.0
    task.prepare()
    initial = task.evaluate()
    log(f"{cfg.run.mode}: {len(task.train)} train / {len(task.evals)} held-out examples, {total} steps; "
        f"held-out before: {_fmt(initial)}")
    run_dir.log_metrics({"step": 0, **{f"eval_{k}": v for k, v in initial.items()}})
    for epoch in range(o.epochs):
        for batch in task.epoch(rng):
            if step == total:
                break
            t1 = time.perf_counter()
            stats = task.group.train_step(batch, task.spec)
            step += 1
            train_s += time.perf_counter() - t1
            row = {"step": step, "epoch": epoch, **stats, "train_s": time.perf_counter() - t1}
            if o.eval_every and step % o.eval_every == 0 and step < total:
                row.update({f"eval_{k}": v for k, v in task.evaluate().items()})
                log(f"step {step}/{total} loss {stats['loss']:.4f} held-out {_fmt(row, 'eval_')}")
            run_dir.log_metrics(row)
    final = task.evaluate()
    run_dir.log_metrics({"step": step, "final": True, **{f"eval_{k}": v for k, v in final.items()}})
    log(f"held-out after {step} steps: {_fmt(final)}")
    return {"steps": step, "eval": {"initial": initial, "final": final}, "wall_s": time.perf_counter() - t0,
            "train_s": train_s}


def _fmt(values: dict, prefix: str = "") -> str:
    return ", ".join(f"{k[len(prefix):]} {v:.4f}" for k, v in values.items() if k.startswith(prefix)
                     and isinstance(v, float))


def run_offline(cfg: Config, data: OfflineData, run_dir: RunDir, log=print) -> RunSummary:
    """Train an sft / reward_model / dpo recipe on its loaded data, in the given run directory."""
    record = {"status": "running", "mode": cfg.run.mode, "algorithm": cfg.algorithm.loss,
              "run_dir": str(run_dir.path), "data": {"train": len(data.train), "eval": len(data.evals),
                                                      "dropped": data.dropped}}
    run_dir.write_summary(record)
    t = cfg.trainer
    with ray_session(cfg.cluster, t.num_learners * t.threads_per_learner) as loopback:
        gpus = [{"num_gpus": cfg.cluster.gpus_per_learner}] * t.num_learners
        opts = offline_learner_options(cfg, planned_steps(cfg, data.train))
        group = LearnerGroup(cfg.model.path, t.num_learners, opts, t.threads_per_learner, loopback=loopback,
                             actor_options=gpus)
        try:
            task = TASKS[cfg.run.mode](cfg, group, data.train, data.evals, data.pad_id)
            record.update(train_offline(cfg, task, run_dir, log))
            if cfg.offline.save:
                merge = cfg.model.lora is not None and cfg.model.lora.merge_on_export
                record["final_dir"] = group.save_hf(str(run_dir.final_dir), merge)
                if cfg.run.mode == "reward_model":
                    for path in (Path(record["final_dir"]), Path(record["final_dir"]) / "merged"):
                        if path.is_dir():  # the adapter, and its merged export
                            save_rendering(data.renderer, path)
        finally:
            group.shutdown()
    record["status"] = "completed"
    headline = (f"{cfg.run.mode} ({cfg.algorithm.loss}), {record['steps']} steps: held-out "
                f"{_fmt(record['eval']['initial'])} -> {_fmt(record['eval']['final'])}")
    run_dir.write_summary(record)
    return RunSummary("completed", cfg.run.mode, record["run_dir"], headline, record)
