"""Reward-model worker: a Hugging Face sequence-classification checkpoint (local path),
scoring prompt + response in batches on CPU or GPU.

A reward model scores what it was trained on: the prompt and the response are rendered to ids
the way its training rendered them (rollout/render.py: the chat template, a user turn and the
assistant's answer, when its training used one, as recorded beside a Tandem export; the
tokenizer's own template otherwise), then right-padded as the learners padded them."""

from __future__ import annotations

import os
import time

import numpy as np

from reward.config import RewardConfig
from rollout.render import Renderer, load_rendering
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
        trained = load_rendering(path)
        self.renderer = Renderer(self.tokenizer, trained.get("chat_template"), trained.get("max_length", max_length),
                                 append_eos=False, system_prompt=trained.get("system_prompt"))

    def ids(self, prompt: str, response: str) -> list[int]:
        """prompt + response as the reward model's training rendered them (truncated the same way)."""
        p = self.renderer.prompt_ids(prompt, "reward-model input")
        return (p + self.renderer.completion_ids(prompt, response))[: self.renderer.max_length]

    def score_texts(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Scalar reward of each prompt+response, `batch_size` sequences per forward."""
        torch, out = self.torch, []
        for i in range(0, len(prompts), self.batch_size):
            rows = [self.ids(p, r) for p, r in zip(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):  # right padding, as the learners' batches
                ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out


def combine(scores: list[list[float]], rule: str = "mean", std_coef: float = 1.0) -> list[float]:
    """scores[member][sample] -> one score per sample: the members' mean, or (`mean_minus_std`)
    mean - std_coef x std, the std over members with ddof 0 (the ensemble's own spread)."""
    a = np.asarray(scores, dtype=np.float64)
    if rule == "mean":
        return a.mean(axis=0).tolist()
    if rule == "mean_minus_std":
        return (a.mean(axis=0) - std_coef * a.std(axis=0)).tolist()
    raise ValueError(f"reward.reward_model_combine must be 'mean' or 'mean_minus_std', got {rule!r}")


class RewardModelEnsemble:
    """reward_model_path and the reward_model_ensemble checkpoints, each scoring every sample,
    combined per sample (one member: its own scores)."""

    def __init__(self, spec: RewardConfig, device: str = "cpu"):
        paths = (spec.reward_model_path, *spec.reward_model_ensemble)
        self.members = [RewardModelScorer(p, spec.reward_model_batch_size, device) for p in paths]
        self.rule, self.std_coef = spec.reward_model_combine, spec.reward_model_std_coef

    def score_texts(self, prompts: list[str], responses: list[str]) -> list[float]:
        return combine([m.score_texts(prompts, responses) for m in self.members], self.rule, self.std_coef)


class RewardModelWorker:
    """Ray actor body: one per pool; the batch of a pool call is scored in one go."""

    def __init__(self, spec: RewardConfig):
        from rollout.devices import actor_device

        device = actor_device("reward-model worker")
        if device != spec.reward_model_device:
            raise RuntimeError(f"reward.reward_model_device is '{spec.reward_model_device}' but Ray gave the "
                               f"reward-model worker {'a GPU' if device == 'cuda' else 'no GPU'}")
        self.scorer = RewardModelEnsemble(spec, device)

    def score(self, rollouts: list[Rollout]) -> WorkerReply:
        t0 = time.perf_counter()
        try:
            values = self.scorer.score_texts([r.prompt for r in rollouts], [r.response_text for r in rollouts])
        except Exception as exc:  # recorded per sample; the run goes on with the fallback
            reason = f"error: {NAME}: {type(exc).__name__}: {exc}"[:500]
            return WorkerReply([(ComponentScore(NAME, None, reason),) for _ in rollouts], False, os.getpid())
        each = (time.perf_counter() - t0) / max(len(rollouts), 1)
        return WorkerReply([(ComponentScore(NAME, v, None, each),) for v in values], False, os.getpid())
