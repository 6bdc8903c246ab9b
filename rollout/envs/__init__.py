"""Multi-turn environments and tools: the registries (base.py, spec.py), the token-in/token-out episode
an engine drives (episode.py), the built-in environments (tool_use.py, guess.py) and the
adapter for Gymnasium-style text environments (gym.py)."""
