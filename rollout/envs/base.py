"""What an environment is, the environment and tool registries, and the spec a worker builds
its episodes from.

An `Env` is made per trajectory from its prompt row (the request's prompt text and answer)
by a factory registered in ENVS: `factory(prompt, answer, **options) -> Env`. `reset()` gives
the first observation ("" when the prompt itself is all the model sees first); `step(action)`
takes the text of the model's turn and returns a `Step`: the next observation, the turn's
reward and whether the episode is over. Tools are functions registered in TOOLS:
`tool(arguments: str, **options) -> str`; they run under the environment's time limit, and a
tool that raises or overruns becomes an observation (tool_use.py), never a crash.

Users add environments and tools in modules named by `rollout.env_plugins`, imported when
the config is checked and again in every rollout worker (as reward.plugins are for verifiers;
rollout/envs/spec.py).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from rollout.registry import Registry


@dataclass(frozen=True)
class Step:
    """What one model turn led to."""

    observation: str = ""  # appended after the model's turn (ignored when done)
    reward: float = 0.0  # this turn's reward (summed into Rollout.env_reward)
    done: bool = False
    role: str = "user"  # with a chat template: the role the observation is rendered as (user / tool)
    tool_calls: int = 0  # tools this turn called ...
    tool_failures: int = 0  # ... of which raised or overran (their error is the observation)
    tool_seconds: float = 0.0  # ... and the time they took


class ToolError(Exception):
    """A tool's own failure (bad arguments, a program that failed): the model sees its message."""


class Env(Protocol):
    def reset(self) -> str: ...

    def step(self, action: str) -> Step: ...


@dataclass(frozen=True)
class EnvTraits:
    """What an environment entry may carry: a check of its options and the plugin modules named
    (rollout.env_plugins), run when the config is checked (before anything starts), for what
    the keyword names alone cannot tell."""

    check: Optional[Callable[[dict[str, Any], tuple[str, ...]], None]] = None


ENVS: Registry[Callable[..., Env]] = Registry("environment")
TOOLS: Registry[Callable[..., str]] = Registry("tool")


def import_plugins(modules: list[str], where: str = "rollout.env_plugins") -> None:
    """Import each module (it registers environments or tools); a clear error naming the entry."""
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ValueError(f"{where}[{i}] '{module}' cannot be imported: {type(exc).__name__}: {exc}") from exc


def check_options(name: str, options: dict[str, Any], where: str = "rollout.env_options") -> None:
    """Every option is a keyword the factory takes (after prompt and answer)."""
    params = inspect.signature(ENVS.get(name)).parameters
    takes = [p for p in list(params)[2:] if params[p].kind != inspect.Parameter.VAR_KEYWORD]
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in takes:
            raise ValueError(f"{where}.{key}: environment '{name}' takes {', '.join(takes) or 'no options'}")
