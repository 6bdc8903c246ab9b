"""Zero-signal rescue: a prompt whose every sample failed is generated again after a hint, and
the new samples train as answers to the prompt without it (`algorithm.hint_rescue`).

A hint is a partial solution from the data (data.hint_key), e.g. the first digits of the
answer. The rescue group is generated after prompt ids + hint ids, then trains in the hint-free
context with the hint as the start of its response: the tokens after the hint were sampled
by the policy in exactly the context they train in (the prompt then the hint tokens), so their
behaviour logprobs are on-policy; the hint tokens were chosen by the data, a guide with
probability 1, so their behaviour logprob is 0 and the importance ratio pi(hint | prompt) / 1
is the off-policy correction (Nath et al. 2025, Adaptive Guidance: guided samples trained with
the policy's ratio to the guide; Zhang et al. 2025, Scaf-GRPO: hints given only where every
sample failed). Under ppo_clip a ratio below 1 - clip_eps keeps the gradient for a positive
advantage (it pulls the policy towards a hint that led to a right answer) and drops it for a
negative one; the off-policy losses (tis, decoupled_ppo) truncate it at is_cap.

A hint token's logprob_diff is the policy's surprise at the hint (the guard's
logprob_diff_max applies to it too). Rescue groups are not attempts at the prompt for
PromptStats (their success is the hint's), and a rescue group is never rescued again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from cluster.rl.gate import Group
from rollout.data import Prompt
from rollout.types import GenerationRequest, Rollout

# A retry's group id: the failed group's plus this (above any id the controller deals), so its
# samples' seeds do not depend on the order in which failures arrived (timing).
RETRY_ID = 1 << 40


class Rescue:
    def __init__(self, prompts: list[Prompt]):
        self.by_id = {p.id: p for p in prompts}
        self.queue: deque[tuple[int, int]] = deque()  # (prompt id, failed group id) owed a hinted retry
        self.hinted: dict[int, Prompt] = {}  # group id -> its prompt, for groups generated after a hint
        self.rescued = 0  # groups taken for rescue since the last take_row

    def wants(self, group: Group) -> bool:
        """The scheduler's hook: True (and a retry queued) when every sample failed and the prompt
        has a hint; a rescue group itself is never taken."""
        if group.group_id in self.hinted or any(r.correct for r in group.rewards):
            return False
        prompt = self.by_id[group.rollouts[0].prompt_id]
        if not prompt.hint_ids:
            return False
        self.queue.append((prompt.id, group.group_id))
        self.rescued += 1
        return True

    def requests(self, n: int, size: int) -> list[GenerationRequest]:
        """Up to n hinted retries from the queue, each of `size` samples."""
        out = []
        while self.queue and len(out) < n:
            prompt_id, failed = self.queue.popleft()
            prompt, gid = self.by_id[prompt_id], RETRY_ID + failed
            self.hinted[gid] = prompt
            out.append(GenerationRequest(group_id=gid, prompt_id=prompt.id, prompt=prompt.text + prompt.hint,
                                         prompt_ids=prompt.ids + prompt.hint_ids, answer=prompt.answer,
                                         num_samples=size))
        return out

    def unhint(self, rollouts: list[Rollout]) -> list[Rollout]:
        """A generated group, as it trains: a rescue group's samples answer the hint-free prompt,
        their responses starting with the hint (behaviour logprob 0: module doc)."""
        prompt = self.hinted.get(rollouts[0].group_id) if rollouts else None
        if prompt is None:
            return rollouts
        n = len(prompt.hint_ids)
        return [replace(r, prompt=prompt.text, prompt_ids=prompt.ids, response_ids=prompt.hint_ids + r.response_ids,
                        response_text=prompt.hint + r.response_text, logprobs=(0.0,) * n + r.logprobs,
                        versions=r.versions[:1] * n + r.versions) for r in rollouts]

    def is_hinted(self, group: Group) -> bool:
        return group.group_id in self.hinted

    def take_row(self, groups: list[Group]) -> dict:
        """The step's figures: groups taken for rescue since the last row; the step's rescue groups
        trained (they leave the books) and the accuracy of their samples."""
        hinted = [g for g in groups if self.hinted.pop(g.group_id, None) is not None]
        row = {"rescued_groups": self.rescued, "hinted_groups": len(hinted)}
        if hinted:
            row["hinted_accuracy"] = sum(r.correct for g in hinted for r in g.rewards) / sum(len(g.rewards) for g in hinted)
        self.rescued = 0
        return row

    def state(self) -> dict:
        return {"queue": [list(q) for q in self.queue]}

    def restore(self, state: dict) -> None:
        self.queue = deque(tuple(q) for q in state.get("queue", []))
