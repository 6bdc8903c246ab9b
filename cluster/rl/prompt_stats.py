"""What each training prompt has shown so far, and how much of a step's rollouts carried signal.

`PromptStats` keeps, per prompt id, every scored sample's outcome across epochs (attempts,
correct answers, summed reward, the step that last scored it), from every complete group:
trained, dropped by dynamic sampling (all rewards tied) or dropped stale alike, since each
is an attempt at the prompt. It is saved in each checkpoint's controller.json and restored
on resume. Budget allocation and curricula read it (cluster/rl/budget.py: a prompt's estimated
success rate).

`signal_row` is the step's share of groups that can teach anything: a group whose every
advantage is zero (all rewards tied) moves nothing, whether it trains or is filtered.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Optional

from cluster.rl.gate import Group


@dataclass
class PromptRecord:
    attempts: int = 0  # scored samples
    correct: int = 0  # of them, judged correct by the verifier
    reward_sum: float = 0.0
    last_step: int = 0  # the controller step during which its latest group was scored
    last_attempts: int = 0  # the latest group's size and correct answers (cluster/rl/budget.py's estimate)
    last_correct: int = 0


class PromptStats:
    def __init__(self):
        self.records: dict[int, PromptRecord] = {}

    def observe(self, group: Group, step: int) -> None:
        prompt_ids = {r.prompt_id for r in group.rollouts}
        if len(prompt_ids) != 1:
            raise ValueError(f"group {group.group_id} mixes prompts {sorted(prompt_ids)}")
        record = self.records.setdefault(prompt_ids.pop(), PromptRecord())
        correct = sum(bool(r.correct) for r in group.rewards)
        record.attempts += len(group.rewards)
        record.correct += correct
        record.reward_sum += sum(r.reward for r in group.rewards)
        record.last_step, record.last_attempts, record.last_correct = step, len(group.rewards), correct

    def get(self, prompt_id: int) -> Optional[PromptRecord]:
        return self.records.get(prompt_id)

    def state(self) -> dict:
        """JSON-able: prompt id -> [attempts, correct, reward_sum, last_step, last_attempts, last_correct]
        (a checkpoint written before the last two restores them as 0: the prompt counts as unseen)."""
        return {str(pid): list(astuple(r)) for pid, r in sorted(self.records.items())}

    def restore(self, state: dict) -> None:
        self.records = {int(pid): PromptRecord(*values) for pid, values in state.items()}


def signal_row(groups: list[Group], moving: Optional[list[bool]], filtered: int, group_size: int,
               downsampled: bool = False) -> dict:
    """effective_group_frac: groups with a non-zero advantage (`moving`, one flag per group) / the
    step's groups (trained, and `filtered`: ended untrained, tied or rescued, since the last step);
    effective_sample_frac: the same over the samples trained or filtered (groups differ in size
    under a rollout budget); rollouts_per_effective_group: the rollouts generated for those
    groups (`downsampled`: group_size each, of which fewer trained) per group that carried
    signal. `moving` None: an experience maker without group advantages (online DPO) reports none."""
    if moving is None:
        return {}
    if len(moving) != len(groups):
        raise ValueError(f"{len(moving)} flags for {len(groups)} groups")
    effective, total = sum(moving), len(groups) + filtered
    samples = sum(len(g.rollouts) for g in groups) + filtered * group_size
    row = {"effective_group_frac": effective / total if total else 0.0,
           "effective_sample_frac": sum(len(g.rollouts) for g, m in zip(groups, moving) if m) / samples if samples
           else 0.0}
    if effective:
        row["rollouts_per_effective_group"] = (total * group_size if downsampled else samples) / effective
    return row
