"""The `gym` environment: a Gymnasium-style text environment used unchanged.

`entry_point` names its class ('package.module:Class'), built with `kwargs`. Each episode calls
`reset(seed=..., options={"prompt": ..., "answer": ...})` (the seed is drawn from the prompt, so a
prompt always starts the same episode) and `step(action_text)`, which returns Gymnasium's
`(observation, reward, terminated, truncated, info)`; terminated or truncated ends the episode.
Observations must be text."""

from __future__ import annotations

import hashlib
import importlib
from typing import Any

from rollout.envs.base import ENVS, Step


class GymText:
    def __init__(self, env: Any, prompt: str, answer: str):
        self.env, self.prompt, self.answer = env, prompt, answer

    def reset(self) -> str:
        seed = int.from_bytes(hashlib.blake2b(self.prompt.encode(), digest_size=4).digest(), "little")
        observation, _info = self.env.reset(seed=seed, options={"prompt": self.prompt, "answer": self.answer})
        return _text(observation)

    def step(self, action: str) -> Step:
        observation, reward, terminated, truncated, _info = self.env.step(action)
        return Step(observation=_text(observation), reward=float(reward), done=bool(terminated or truncated))


def _text(observation: Any) -> str:
    if not isinstance(observation, str):
        raise TypeError(f"a gym environment's observation must be text, got {type(observation).__name__}")
    return observation


def load_class(entry_point: str):
    module, _, name = entry_point.partition(":")
    if not name:
        raise ValueError(f"rollout.env_options.entry_point '{entry_point}' is not 'package.module:Class'")
    return getattr(importlib.import_module(module), name)


@ENVS.register("gym", "a Gymnasium-style text environment (env_options: entry_point 'module:Class', kwargs)")
def gym(prompt: str, answer: str, entry_point: str = "", kwargs: dict[str, Any] = None) -> GymText:
    return GymText(load_class(entry_point)(**(kwargs or {})), prompt, answer)
