"""Token-in / token-out episodes: what an engine keeps per trajectory of a multi-turn rollout.

A trajectory is the prompt's ids, then the exact ids the engine sampled for each model turn,
each followed by the ids of the environment's observation. The model's ids are never decoded
and encoded again: the environment reads a decoded copy of the turn, and only the observation
text is encoded, once, with the chat template's turn separators around it. So the ids the
learner trains on are the ids that were sampled (decoding and re-encoding a conversation can
change them: a special token dropped, two pieces merged into one).
"""

from __future__ import annotations

from typing import Optional

from rollout.envs.base import Env
from rollout.envs.spec import EnvSpec
from rollout.types import EngineError, EpisodeStats

MARK = "\x00OBSERVATION\x00"  # stands for an observation while the template's separators are read off


class Observations:
    """Observation text -> ids. Without a chat template the text as it is; with one, wrapped as
    the template renders a message of that role after an assistant turn (the rest of the
    assistant's turn after its end-of-turn token, the role's header, the text, the assistant's
    header), so that the next model turn starts exactly where a rendered conversation would."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        self._wraps: dict[str, tuple[str, str]] = {}

    def ids(self, text: str, role: str = "user") -> list[int]:
        if self.templated:
            before, after = self._wrap(role)
            text = before + text + after
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _wrap(self, role: str) -> tuple[str, str]:
        if role not in self._wraps:
            turn = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]
            head = self.tok.apply_chat_template(turn, tokenize=False)
            full = self.tok.apply_chat_template([*turn, {"role": role, "content": MARK}], tokenize=False,
                                                add_generation_prompt=True)
            if not full.startswith(head) or full.count(MARK) != 1:
                raise EngineError(f"the tokenizer's chat template does not render a '{role}' message after an "
                                  "assistant turn as an append: observations cannot be encoded on their own")
            eos = self.tok.eos_token or ""
            rest = head[head.rindex(eos) + len(eos):] if eos and eos in head else ""
            before, after = full[len(head):].split(MARK)
            self._wraps[role] = (rest + before, after)
        return self._wraps[role]


class Episode:
    """One trajectory's environment and counts. The engine calls `first()` before the first
    turn and `step(turn_ids, used)` after each model turn; `None` from step ends the episode."""

    def __init__(self, env: Env, spec: EnvSpec, observations: Observations):
        self.env, self.spec, self.obs = env, spec, observations
        self.turns = self.tool_calls = self.tool_failures = 0
        self.tool_seconds = self.reward = 0.0
        self.final_text = ""  # the last model turn's text: what the outcome verifier reads
        self.truncated = False  # ended by max_turns or the token budget, not by the environment
        self.turn_rewards: list[tuple[int, float]] = []  # (the turn's last token, its reward)

    def stats(self) -> EpisodeStats:
        return EpisodeStats(self.turns, self.tool_calls, self.tool_failures, self.tool_seconds, self.reward,
                            self.truncated, tuple(self.turn_rewards))

    def first(self) -> list[int]:
        """reset()'s observation's ids, before the first turn. With a chat template the prompt
        already ends in the assistant's header, so a first observation has no place there: it
        belongs in the prompt row, and a non-empty one is an error."""
        text = self.env.reset()
        if text and self.obs.templated:
            raise EngineError(f"environment '{self.spec.name}' gave a first observation ({text[:60]!r}) but the "
                              "tokenizer has a chat template: put it in the prompt row (reset() returns '')")
        return self.obs.ids(text) if text else []

    def room(self, used: int) -> Optional[int]:
        """Tokens the episode may still take after `used` (None: no budget)."""
        budget = self.spec.max_episode_tokens
        return None if budget is None else budget - used

    def step(self, turn_ids: list[int], used: int) -> Optional[list[int]]:
        """The model's turn ended (`used`: tokens after the prompt so far): the observation's ids
        to append, or None when the episode is over (done, or out of turns or tokens)."""
        text = self.obs.tok.decode(turn_ids, skip_special_tokens=True)
        self.turns += 1
        self.final_text = text
        try:
            result = self.env.step(text)
        except Exception as exc:  # the environment's own bug: the run stops, saying where
            raise EngineError(f"environment '{self.spec.name}' raised on model turn {self.turns} "
                              f"(action {text[:80]!r}): {type(exc).__name__}: {exc}") from exc
        self.reward += result.reward
        if result.reward:
            self.turn_rewards.append((used - 1, float(result.reward)))
        self.tool_calls += result.tool_calls
        self.tool_failures += result.tool_failures
        self.tool_seconds += result.tool_seconds
        if result.done:
            return None
        ids = self.obs.ids(result.observation, result.role)
        room = self.room(used + len(ids))
        if self.turns >= self.spec.max_turns or (room is not None and room < 1):
            self.truncated = True  # no model token would fit after the observation
            return None
        return ids


class Episodes:
    """A rollout worker's episode factory: the spec (loaded: built-ins and plugins registered)
    and the tokenizer's observation encoder."""

    def __init__(self, spec: EnvSpec, tokenizer):
        self.spec = spec.load()
        self.observations = Observations(tokenizer)

    def start(self, prompt: str, answer: str) -> Episode:
        return Episode(self.spec.make(prompt, answer), self.spec, self.observations)


def episode_metrics(rollouts: list) -> dict[str, float]:
    """A step's multi-turn figures (none for one-turn rollouts): model turns per episode, the
    environment's rewards per episode, tool calls per episode, the fraction of episodes that called a tool, failed calls, the tools' time
    (seconds, summed) and the fraction of episodes cut by max_turns or the token budget."""
    stats = [r.episode for r in rollouts if r.episode is not None]
    if not stats:
        return {}
    n = len(stats)
    return {"turns": sum(s.turns for s in stats) / n, "env_reward": sum(s.reward for s in stats) / n,
            "tool_calls": sum(s.tool_calls for s in stats) / n,
            "tool_call_rate": sum(s.tool_calls > 0 for s in stats) / n,
            "tool_failures": sum(s.tool_failures for s in stats), "tool_s": sum(s.tool_seconds for s in stats),
            "truncated_episodes": sum(s.truncated for s in stats) / n}
