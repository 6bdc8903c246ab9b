"""Reward-model worker: a Hugging Face sequence-classification checkpoint (local path),
scoring prompt + response in batches on CPU or GPU."""

from __future__ import annotations

import os
import time

from reward.config import RewardConfig
from reward.types import ComponentScore
from reward.types import WorkerReply
from rollout.types import Rollout

NAME = "reward_model"


class RewardModelScorer:
    """Plain object (usable without Ray); the pool wraps it in an actor."""

    def __init__(self, path: str, batch_size: int = 32, device: str = "cpu", max_length: int = 2048):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"reward.reward_model_path '{path}' is not a directory (a local HF checkpoint)")
        if device == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.torch, self.batch_size, self.device, self.max_length = torch, batch_size, device, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model at '{path}' has num_labels={self.model.config.num_labels}; "
                             f"a scalar reward head (num_labels=1) is required")
        # The classifier reads the last non-padding token; it must know which id pads.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def score_texts(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Scalar reward of each prompt+response, `batch_size` sequences per forward."""
        out: list[float] = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [p + r for p, r in zip(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])]
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with self.torch.inference_mode():
                logits = self.model(**enc).logits  # [B, 1]
            out.extend(logits[:, 0].float().cpu().tolist())
        return out


class RewardModelWorker:
    """Ray actor body: one per pool; the batch of a pool call is scored in one go."""

    def __init__(self, spec: RewardConfig):
        from rollout.devices import actor_device

        device = actor_device("reward-model worker")
        if device != spec.reward_model_device:
            raise RuntimeError(f"reward.reward_model_device is '{spec.reward_model_device}' but Ray gave the "
                               f"reward-model worker {'a GPU' if device == 'cuda' else 'no GPU'}")
        self.scorer = RewardModelScorer(spec.reward_model_path, spec.reward_model_batch_size, device)

    def score(self, rollouts: list[Rollout]) -> WorkerReply:
        t0 = time.perf_counter()
        try:
            values = self.scorer.score_texts([r.prompt for r in rollouts], [r.response_text for r in rollouts])
        except Exception as exc:  # recorded per sample; the run goes on with the fallback
            reason = f"error: {NAME}: {type(exc).__name__}: {exc}"[:500]
            return WorkerReply([(ComponentScore(NAME, None, reason),) for _ in rollouts], False, os.getpid())
        each = (time.perf_counter() - t0) / max(len(rollouts), 1)
        return WorkerReply([(ComponentScore(NAME, v, None, each),) for v in values], False, os.getpid())
