"""The `hf` engine: batched sampling with KV cache from a transformers causal LM.

Reference engine for CPU (and one GPU). Returns per-token logprobs of the
temperature-scaled sampling distribution, computed in fp32 from the raw logits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from rollout.types import GenerationRequest, Rollout, SamplingParams


class EngineError(RuntimeError):
    pass


def load_causal_lm(path: str | Path, dtype: str = "float32"):
    """Model + tokenizer from a local HF checkpoint; a clear error when it is not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise EngineError(f"model.path '{path}' is not a Hugging Face checkpoint (no config.json there)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    return model, tokenizer


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32"):
        self.model, self.tokenizer = load_causal_lm(model_path, dtype)
        self.eos_id = self.tokenizer.eos_token_id

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int,
                 batch_size: int = 256) -> list[Rollout]:
        flat = [(req, k) for req in requests for k in range(req.num_samples)]
        torch.manual_seed(params.seed)
        out: list[Rollout] = []
        for start in range(0, len(flat), batch_size):
            out.extend(self._generate_batch(flat[start : start + batch_size], params, version))
        return out

    def _generate_batch(self, flat, params: SamplingParams, version: int) -> list[Rollout]:
        enc = self.tokenizer([req.prompt for req, _ in flat], return_tensors="pt", padding=True)
        greedy = params.temperature == 0
        sampling = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": None}
        gen = self.model.generate(
            **enc, do_sample=not greedy, max_new_tokens=params.max_new_tokens, output_logits=True,
            return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_id, **sampling,
        )
        width = enc["input_ids"].shape[1]
        new = gen.sequences[:, width:]  # [B, R]
        temp = 1.0 if greedy else params.temperature
        logits = torch.stack(gen.logits, dim=1).float() / temp  # [B, R, V]
        logps = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        rollouts = []
        for i, (req, k) in enumerate(flat):
            ids = new[i].tolist()
            stop = ids.index(self.eos_id) + 1 if self.eos_id in ids else len(ids)
            prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
            rollouts.append(Rollout(
                group_id=req.group_id, prompt_id=req.prompt_id, sample_index=k, prompt=req.prompt, answer=req.answer,
                prompt_ids=tuple(prompt_ids), response_ids=tuple(ids[:stop]),
                response_text=self.tokenizer.decode(ids[:stop], skip_special_tokens=True),
                logprobs=tuple(float(x) for x in logps[i, :stop]), versions=(version,) * stop,
                finish_reason="stop" if self.eos_id in ids else "length",
            ))
        return rollouts

    def load_weights(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy every named parameter; the name sets must match exactly."""
        params = dict(self.model.named_parameters())
        missing, extra = set(params) - set(arrays), set(arrays) - set(params)
        if missing or extra:
            raise EngineError(f"weight names differ from the engine's model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(extra)[:5]}")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # object-store arrays are read-only; we only read them
            for name, p in params.items():
                p.copy_(torch.from_numpy(arrays[name]))
