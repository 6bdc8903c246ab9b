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
