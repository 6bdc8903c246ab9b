"""LoRA adapters (PEFT), the same on both sides of the weight sync.

The learners train only the adapter (and, for a critic or a reward model, its new head); the
engines wrap their copy of the base model with the same adapter layout, so an update carries
the adapter's tensors alone, under the same names, and the engine's policy is base + adapter
exactly as the learner's is. The adapter starts as a no-op (PEFT initialises B = 0), so the
engines need no update before the first step. Lives on the ground floor: the engines (rollout)
and the learners (trainer) both build from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

# What kind of model the adapter wraps -> PEFT's task type (a head it trains whole for the last two).
TASKS = {"policy": "CAUSAL_LM", "value": "TOKEN_CLS", "reward": "SEQ_CLS"}


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    dropout: float = 0.0
    target_modules: Union[str, tuple[str, ...]] = "all-linear"  # PEFT: every linear layer but the output head

    def peft_config(self, kind: str = "policy"):
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        # A critic's or reward model's head is new: it trains whole (PEFT's modules_to_save for
        # these task types), so no adapter goes on it.
        heads = ["score", "classifier"] if kind != "policy" else None
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          exclude_modules=heads, task_type=TASKS[kind])

    def wrap(self, model, kind: str = "policy", adapter: Optional[str] = None):
        """`model` with this adapter: fresh (a no-op until trained), or loaded from `adapter` (a
        directory PEFT's save_pretrained wrote: a checkpoint's policy)."""
        from peft import PeftModel, get_peft_model

        if adapter is not None:
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)  # trainable: adapter_names finds it
        return get_peft_model(model, self.peft_config(kind))


def adapter_names(model) -> list[str]:
    """The parameters an adapter update carries: those that train (the adapter, a new head)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank choices


class AdapterFiles:
    """Each policy version's adapter as PEFT files, for the vllm engine, whose LoRA requests load
    adapters from disk: version v lives in root/v<v> (adapter_config.json and
    adapter_model.safetensors) while a request may still use it; the newest `keep` are kept."""

    def __init__(self, spec: LoraSpec, keep: int, parent: Optional[str] = None):
        import tempfile

        self.spec, self.keep = spec, keep
        self.root = tempfile.mkdtemp(prefix="tandem-lora-", dir=parent)
        self.written: list[int] = []

    def write(self, version: int, tensors: dict) -> str:
        """The adapter of `version` from its update (the learners' parameter names); returns its directory."""
        import json
        import os
        import shutil

        from safetensors.torch import save_file

        path = os.path.join(self.root, f"v{version}")
        os.makedirs(path, exist_ok=True)
        # PEFT's files name tensors without the adapter's name ("lora_A.weight", not "lora_A.default.weight").
        save_file({name.replace(".default.", "."): t.contiguous() for name, t in tensors.items()},
                  os.path.join(path, "adapter_model.safetensors"))
        config = self.spec.peft_config("policy").to_dict()
        # The modules it holds, by name (vLLM reads names, not "all-linear").
        config["target_modules"] = sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n in tensors if ".lora_" in n})
        config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
        with open(os.path.join(path, "adapter_config.json"), "w") as fh:
            json.dump(config, fh, default=str)
        self.written.append(version)
        for old in self.written[:-self.keep]:
            shutil.rmtree(os.path.join(self.root, f"v{old}"), ignore_errors=True)
        self.written = self.written[-self.keep:]
        return path

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def vllm_rank(r: int) -> int:
    """vLLM's smallest max_lora_rank that holds rank r."""
    return next(v for v in VLLM_RANKS if v >= r)
