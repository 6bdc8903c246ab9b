"""The multi-turn recipes' tasks (trainer/env_tasks.py): their rows, and warm-up trajectories
that teach the format only, with observations made by the environment as in RL."""

import random

import pytest

from cluster.config import BootstrapConfig
from rollout.envs.episode import Observations
from trainer.bootstrap import build_tokenizer
from trainer.env_tasks import GUESS_TURNS, examples, guess_example, make_rows, tool_example


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_tool_rows_are_four_digit_sums_and_no_pair_crosses_splits():
    spec = BootstrapConfig(task="tool_addition", max_digits=4, num_train_prompts=3000, num_eval_prompts=300,
                           sft_val_prompts=300)
    splits = make_rows(spec, seed=5)
    pairs = []
    for rows in splits:
        ops = [tuple(map(int, r["prompt"].rstrip("=").split("+"))) for r in rows]
        assert all(1000 <= a <= 9999 and 1000 <= b <= 9999 for a, b in ops)
        assert all(int(r["answer"]) == a + b for r, (a, b) in zip(rows, ops))
        pairs.append({(min(a, b), max(a, b)) for a, b in ops})
    assert [len(p) for p in pairs] == [3000, 300, 300]  # no duplicate within a split either
    assert not (pairs[0] & pairs[1]) and not (pairs[0] & pairs[2]) and not (pairs[1] & pairs[2])


def test_a_tool_warm_up_trajectory_trains_the_model_turns_only(tok):
    row = {"prompt": "1234+5678=", "answer": "6912"}
    ids, trains = tool_example(tok, row, call=True)
    text = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = tok("1234+5678=")["input_ids"]
    call, obs, answer = text("#1234+5678") + [tok.eos_token_id], text("6912="), text("6912") + [tok.eos_token_id]
    assert ids == prompt + call + obs + answer
    assert trains == [0.0] * len(prompt) + [1.0] * len(call) + [0.0] * len(obs) + [1.0] * len(answer)
    assert obs == Observations(tok).ids("6912=")  # as an engine appends it
    direct_ids, direct_trains = tool_example(tok, row, call=False)
    assert direct_ids == prompt + answer and sum(direct_trains) == len(answer)


def test_the_tool_warm_up_calls_at_its_rate_whatever_the_problem(tok):
    spec = BootstrapConfig(task="tool_addition", max_digits=4, tool_rate=0.3)
    rows = make_rows(spec.model_copy(update={"num_train_prompts": 2000}), seed=1)[0]
    hash_id = tok("#", add_special_tokens=False)["input_ids"][0]
    calls = [hash_id in ids for ids, _ in examples(tok, rows, random.Random(0), spec)]
    assert abs(sum(calls) / len(calls) - 0.3) < 0.04  # 0.3 +- 4 sd of a binomial(2000, 0.3) mean is 0.041


def test_guess_warm_up_guesses_ignore_the_feedback_but_the_feedback_is_right(tok):
    rng = random.Random(3)
    secrets, found = "0123456789" * 20, 0
    plus, minus = tok("+", add_special_tokens=False)["input_ids"][0], tok("-", add_special_tokens=False)["input_ids"][0]
    prompt = len(tok("#=")["input_ids"])
    for secret in secrets:
        ids, trains = guess_example(tok, {"prompt": "#=", "answer": secret}, rng, GUESS_TURNS)
        turns, guesses, feedback = [], [], []
        for i in range(prompt, len(ids)):
            if trains[i] and ids[i] != tok.eos_token_id:
                guesses.append(int(tok.decode([ids[i]])))
            elif not trains[i]:
                feedback.append(ids[i])
        assert len(set(guesses)) == len(guesses) <= GUESS_TURNS  # no repeats
        assert feedback == [plus if int(secret) > g else minus for g in guesses[:len(feedback)]]
        found += guesses[-1] == int(secret)
        assert guesses[-1] == int(secret) or len(guesses) == GUESS_TURNS
    # Random guessing finds the digit in 4 tries 40% of the time: the warm-up shows no search.
    assert 0.3 < found / len(secrets) < 0.5
