"""The environment settings a rollout worker receives, and loading what they name: the
built-in environments and tools (which register on import) and the user's plugins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rollout.envs.base import ENVS, Env, EnvTraits, check_options, import_plugins


def load_builtins() -> None:
    """The environments and tools that ship with Tandem register on import."""
    import rollout.envs.guess  # noqa: F401
    import rollout.envs.gym  # noqa: F401
    import rollout.envs.tool_use  # noqa: F401


@dataclass(frozen=True)
class EnvSpec:
    """The rollout section's environment settings, as a rollout worker receives them."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 4  # model turns per episode; an episode still going then ends truncated
    max_episode_tokens: Optional[int] = None  # tokens after the prompt (model's and observations'); None: no bound
    plugins: tuple[str, ...] = ()

    def make(self, prompt: str, answer: str) -> Env:
        return ENVS.get(self.name)(prompt, answer, **self.options)

    def load(self) -> "EnvSpec":
        """Register the built-ins and the plugins, and check the name and options (in the worker too)."""
        load_builtins()
        import_plugins(list(self.plugins))
        traits = ENVS.entry(self.name).traits
        check_options(self.name, self.options)
        if isinstance(traits, EnvTraits) and traits.check is not None:
            traits.check(self.options, self.plugins)
        return self
