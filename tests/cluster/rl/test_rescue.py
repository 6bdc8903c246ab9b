"""Zero-signal rescue (cluster/rl/rescue.py) on constructed groups: which groups are taken, the
hinted retry's request, and the retry's samples as they train (the hint as the response's start,
behaviour logprob 0, in the hint-free context)."""

from dataclasses import replace

import pytest

from cluster.rl.rescue import RETRY_ID, Rescue
from rollout.data import Prompt
from tests.cluster.rl.test_experience import group
from tests.cluster.rl.test_scheduler import score, scheduler

PROMPTS = [Prompt(1, "12+35=", "47", ids=(0, 5, 6), hint="4", hint_ids=(9,)),
           Prompt(2, "1+2=", "3", ids=(0, 7))]  # a one-digit sum: no hint


def failed(gid: int, prompt_id: int, rewards=(0.0, 0.0, 0.0)):
    g = group(gid, list(rewards), [2] * len(rewards))
    return replace(g, rollouts=tuple(replace(r, prompt_id=prompt_id) for r in g.rollouts))


def test_only_a_group_that_failed_everywhere_with_a_hint_is_rescued_once():
    rescue = Rescue(PROMPTS)
    assert not rescue.wants(failed(10, 1, (0.0, 1.0, 0.0)))  # one right answer: it has signal
    assert not rescue.wants(failed(11, 2))  # no hint for that prompt
    assert rescue.wants(failed(12, 1)) and list(rescue.queue) == [(1, 12)]
    [req] = rescue.requests(4, size=3)
    # its id (so its seeds) from the failed group's, whatever order failures arrived in
    assert (req.group_id, req.prompt_id, req.prompt, req.prompt_ids, req.num_samples) == (RETRY_ID + 12, 1, "12+35=4",
                                                                                           (0, 5, 6, 9), 3)
    retry = failed(RETRY_ID + 12, 1)
    assert not rescue.queue and not rescue.wants(retry)  # the retry failed too: not rescued again
    assert rescue.take_row([retry]) == {"rescued_groups": 1, "hinted_groups": 1, "hinted_accuracy": 0.0}
    assert rescue.take_row([]) == {"rescued_groups": 0, "hinted_groups": 0}


def test_a_retry_trains_in_the_hint_free_context_with_the_hint_as_its_start():
    rescue = Rescue(PROMPTS)
    rescue.wants(failed(12, 1))
    rescue.requests(1, size=3)
    generated = [replace(r, group_id=RETRY_ID + 12, prompt="12+35=4", prompt_ids=(0, 5, 6, 9), response_ids=(7, 2),
                         response_text="7", logprobs=(-0.2, -0.1), versions=(3, 3)) for r in failed(40, 1).rollouts]
    trained = rescue.unhint(generated)
    assert [(r.prompt, r.prompt_ids, r.response_ids, r.response_text) for r in trained] == \
        [("12+35=", (0, 5, 6), (9, 7, 2), "47")] * 3
    assert trained[0].logprobs == (0.0, -0.2, -0.1) and trained[0].versions == (3, 3, 3)  # the guide chose the hint
    others = failed(41, 2).rollouts
    assert rescue.unhint(list(others)) == list(others)  # not a retry: as generated


def test_the_scheduler_ends_a_rescued_group_and_owes_its_retry():
    rescue = Rescue(PROMPTS)
    s = scheduler(0, per_step=2, size=2, rescue=rescue.wants)
    s.steps_to_start(0)
    s.expect(1)
    s.expect(2)
    g = failed(1, 1, (0.0, 0.0))
    for k in range(2):
        s.scored(g.rollouts[k], g.rewards[k])
    assert s.ledger[1].value == "filtered:rescued" and s.rescued == 1 and s.take_owed() == 1
    assert score(s, 2, [0], [1.0, 0.0]) is not None and s.take(0) is None  # one group of two: the retry is owed
    s.expect(3)
    score(s, 3, [0], [0.0, 1.0])
    assert len(s.take(0)) == 2 and s.filtered_for_last_take == 1  # the rescued group spent rollouts, no signal


def test_the_rescue_queue_survives_a_checkpoint():
    rescue = Rescue(PROMPTS)
    rescue.wants(failed(12, 1))
    again = Rescue(PROMPTS)
    again.restore(rescue.state())
    assert list(again.queue) == [(1, 12)]
    with pytest.raises(KeyError):
        Rescue(PROMPTS).wants(failed(13, 99))  # a group of a prompt not in the training set: a bug
