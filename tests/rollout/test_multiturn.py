"""Multi-turn rollouts on the hf engine (rollout/envs/): trajectories are the sampled ids with
the observations' ids between them (token-in / token-out), only the model's tokens train, the
learner's logprobs equal the engine's on every model token, tools fail as observations, user
environments come in as plugins, Gymnasium-style environments run unchanged, and a trajectory
that spans a weight swap keeps each token's version."""

import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from rollout.envs.base import ENVS, TOOLS, Step
from rollout.envs.spec import EnvSpec
from rollout.envs.episode import Observations
from rollout.envs.tool_use import calculator, tool_use
from rollout.hf_engine import HFEngine
from rollout.types import SamplingParams
from tests.rollout.requests import request
from tests.rollout.test_partial_rollouts import moved_weights
from trainer.batches import build_batch
from trainer.logprobs import token_logprobs

TEMP = 1.0
PLUGIN = '''
from rollout.envs.base import ENVS, Step

class Countdown:
    """Never done: after each turn the observation says how many turns have passed, as '#=N+'."""
    def __init__(self, start):
        self.n = start
    def reset(self):
        return "="
    def step(self, action):
        self.n += 1
        return Step(observation=f"#={self.n}+", reward=0.5)

@ENVS.register("countdown_plugin", "a test plugin: never done, observations of changing length")
def countdown(prompt, answer, start=7):
    return Countdown(start)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """A user's environment module, found on sys.path and named in rollout.env_plugins."""
    where = tmp_path_factory.mktemp("plugin")
    (where / "my_envs.py").write_text(textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(where))
    yield EnvSpec("countdown_plugin", {"start": 8}, max_turns=3, plugins=("my_envs",))
    sys.path.remove(str(where))
    ENVS.unregister("countdown_plugin")


@pytest.fixture(scope="module")
def three_turns(tiny_model, plugin):
    engine = HFEngine(tiny_model, env=plugin)
    reqs = [request(g, f"{g}+{g + 5}=", str(2 * g + 5), 4) for g in range(4)]
    rollouts = engine.generate(reqs, SamplingParams(temperature=TEMP, max_new_tokens=5, seed=3), version=0,
                               batch_size=6)
    return engine, rollouts


def segments(r):
    """The trajectory as runs of (trains, ids)."""
    out = []
    for t, i in zip(r.trains, r.response_ids):
        if out and out[-1][0] == t:
            out[-1][1].append(i)
        else:
            out.append((t, [i]))
    return out


def test_a_trajectory_is_the_sampled_ids_with_each_observation_encoded_once(three_turns):
    engine, rollouts = three_turns
    tok = engine.tokenizer
    assert len(rollouts) == 16
    for r in rollouts:
        assert r.episode.turns == 3 and r.episode.truncated and r.finish_reason == "length"
        assert r.episode.reward == pytest.approx(1.5)  # 0.5 per turn
        parts = segments(r)
        # reset's "=" first, then model turn / observation / model turn / observation / model turn.
        assert [t for t, _ in parts] == [0, 1, 0, 1, 0, 1]
        assert [ids for t, ids in parts if t == 0] == [tok("=", add_special_tokens=False)["input_ids"]] + [
            tok(f"#={n}+", add_special_tokens=False)["input_ids"] for n in (9, 10)]
        for _, ids in (p for p in parts if p[0] == 1):  # each turn: up to max_new_tokens, ends at EOS or there
            assert len(ids) <= 5 and (len(ids) == 5 or ids[-1] == engine.eos_id)
        assert r.response_text == tok.decode(parts[-1][1], skip_special_tokens=True)  # the last turn


def test_learner_logprobs_equal_the_engines_on_every_model_token(tiny_model, three_turns):
    engine, rollouts = three_turns
    batch = build_batch(rollouts, pad_id=engine.pad_id)
    with torch.no_grad():
        learner = token_logprobs(engine.model, torch.tensor(batch.input_ids), torch.tensor(batch.attention_mask),
                                 TEMP)[0].numpy()
    model_tokens = batch.loss_mask == 1
    assert model_tokens.sum() == sum(sum(r.trains) for r in rollouts) > 3 * len(rollouts)
    gap = np.abs(learner - batch.behaviour_logprobs)[model_tokens]
    assert gap.max() < 1e-5, gap.max()


def test_observation_tokens_never_train(three_turns):
    _, rollouts = three_turns
    batch = build_batch(rollouts, pad_id=0)
    for i, r in enumerate(rollouts):
        p = len(r.prompt_ids)
        assert list(batch.loss_mask[i, p: p + len(r.response_ids)]) == [float(t) for t in r.trains]
        assert 0 in r.trains  # observations are there, and masked
        assert all(r.logprobs[j] == 0.0 for j, t in enumerate(r.trains) if not t)


def test_naive_decode_and_reencode_would_change_the_trained_ids(three_turns):
    """What the peers' users hit: rebuilding the conversation from text gives other ids. Ours are
    the sampled ones (the logprob test above), and here the naive ones differ."""
    engine, rollouts = three_turns
    tok = engine.tokenizer
    changed = 0
    for r in rollouts:
        text = r.prompt + "".join(tok.decode(ids, skip_special_tokens=True) for _, ids in segments(r))
        naive = tok(text)["input_ids"]
        changed += naive != list(r.prompt_ids + r.response_ids)
    assert changed > 0, "no trajectory sampled a token that decoding drops; the test would prove nothing"


def test_observations_carry_the_chat_templates_turn_separators():
    """With a template, prompt + model turns + observation ids == the rendered conversation."""
    from trainer.bootstrap import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}={{ m['content'] }}</s> "
                         "{% else %}#{{ m['content'] }}+{% endif %}{% endfor %}{% if add_generation_prompt %}="
                         "{% endif %}")
    obs = Observations(tok)
    turns = ["12", "345", "6"]
    ids = list(tok.apply_chat_template([{"role": "user", "content": "1+2"}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"])
    messages = [{"role": "user", "content": "1+2"}]
    for i, turn in enumerate(turns):
        ids += tok(turn, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # what a model samples
        messages.append({"role": "assistant", "content": turn})
        if i < len(turns) - 1:
            ids += obs.ids(f"{i}0")
            messages.append({"role": "user", "content": f"{i}0"})
    rendered = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    # The rendering writes a space after each assistant turn's end; the last one is not generated.
    assert ids == list(rendered)[:-1] and rendered[-1] == tok(" ", add_special_tokens=False)["input_ids"][0]


def test_a_failing_or_slow_tool_is_an_observation_not_a_crash():
    @TOOLS.register("boom", "raises")
    def boom(arguments):
        raise RuntimeError("no such thing")

    @TOOLS.register("slow", "overruns")
    def slow(arguments):
        time.sleep(2.0)
        return "late"

    try:
        env = tool_use("1+2=", "3", tools=["boom", "slow"], call_format="json", tool_timeout_s=0.2)
        failed = env.step('<tool_call>{"name": "boom", "arguments": {"x": "1"}}</tool_call>')
        assert (failed.done, failed.tool_calls, failed.tool_failures) == (False, 1, 1)
        assert failed.observation == "error: RuntimeError: no such thing"
        late = env.step('<tool_call>{"name": "slow", "arguments": {"x": "1"}}</tool_call>')
        assert late.tool_failures == 1 and late.observation == "error: slow timed out after 0.2 s"
        assert 0.2 <= late.tool_seconds < 1.0
        unknown = env.step('<tool_call>{"name": "rm", "arguments": {}}</tool_call>')
        assert unknown.tool_failures == 1 and "unknown tool 'rm'" in unknown.observation
        bad = env.step("<tool_call>{not json</tool_call>")
        assert bad.tool_failures == 1 and "malformed tool call" in bad.observation
        assert env.step("the answer is 3").done
    finally:
        TOOLS.unregister("boom")
        TOOLS.unregister("slow")


def test_the_calculator_in_the_hash_format():
    env = tool_use("1234+5678=", "6912")
    call = env.step("#1234+5678")
    assert (call.observation, call.done, call.tool_calls, call.tool_failures) == ("6912=", False, 1, 0)
    assert env.step("#12++").observation == "#=" and env.step("#2**99").tool_failures == 1
    assert env.step("6912").done and calculator("(2+3)*-4") == "-20"


class GymStyleWalk:
    """A Gymnasium-style text environment (its API, no Tandem import): walk from the seed's
    start to the prompt's goal by answering '+' or '-'."""

    def reset(self, seed=None, options=None):
        self.goal = int(options["answer"])
        self.at = seed % 3
        self.steps = 0
        return f"{self.at}=", {}

    def step(self, action):
        self.steps += 1
        self.at += 1 if action.strip().startswith("+") else -1
        terminated = self.at == self.goal
        return f"{self.at}=", float(terminated), terminated, self.steps >= 5, {}


def test_a_gymnasium_style_environment_runs_unchanged(tiny_model):
    spec = EnvSpec("gym", {"entry_point": f"{__name__}:GymStyleWalk"}, max_turns=8)
    engine = HFEngine(tiny_model, env=spec)
    rollouts = engine.generate([request(1, "2+2=", "4", 4)], SamplingParams(temperature=TEMP, max_new_tokens=3, seed=1),
                               version=0)
    for r in rollouts:
        # Gymnasium's truncation after 5 steps ends the episode before rollout.max_turns does.
        assert 1 <= r.episode.turns <= 5 and not r.episode.truncated
        walked = [t for t in r.trains]
        assert walked[0] == 0 and r.episode.reward in (0.0, 1.0)
        assert r.episode.reward == 1.0 or r.episode.turns == 5


def test_a_trajectory_across_a_weight_swap_keeps_each_tokens_version(tiny_model, plugin):
    engine, old = HFEngine(tiny_model, env=plugin), HFEngine(tiny_model)
    new = moved_weights(engine.model)
    calls = {"n": 0}

    def safe_point():
        calls["n"] += 1
        if calls["n"] == 9:  # in the middle of the episodes' second turns
            engine.load_weights(new)
        return 0 if calls["n"] < 9 else 1

    reqs = [request(g, f"{g}+3=", str(g + 3), 2) for g in range(3)]
    rollouts = [r for part in engine.stream(reqs, SamplingParams(temperature=TEMP, max_new_tokens=5, seed=2),
                                            safe_point, 6) for r in part]
    batch = build_batch(rollouts, pad_id=engine.pad_id)
    ids, attn = torch.tensor(batch.input_ids), torch.tensor(batch.attention_mask)
    with torch.no_grad():
        by_old = token_logprobs(old.model, ids, attn, TEMP)[0].numpy()
        by_new = token_logprobs(engine.model, ids, attn, TEMP)[0].numpy()
    spanning = 0
    for i, r in enumerate(rollouts):
        assert list(r.versions) == sorted(r.versions)  # never back to the old weights
        spanning += len(set(v for v, t in zip(r.versions, r.trains) if t)) == 2
        p = len(r.prompt_ids)
        for j, (v, t) in enumerate(zip(r.versions, r.trains)):
            if t:  # each model token's behaviour logprob is its own version's
                want = (by_old if v == 0 else by_new)[i, p + j]
                assert abs(r.logprobs[j] - want) < 1e-5, (i, j, v)
    assert spanning > 0, "no trajectory had model tokens on both sides of the swap"


def test_guess_number_answers_higher_or_lower_and_charges_wrong_guesses():
    from rollout.envs.guess import guess_number

    env = guess_number("#=", "7", turn_penalty=0.1)
    assert env.step("3") == Step(observation="+", reward=-0.1)
    assert env.step("9").observation == "-" and env.step("--3").observation == "#"
    assert env.step("7") == Step(done=True)


def test_the_token_budget_bounds_every_episode(tiny_model, plugin):
    spec = EnvSpec(plugin.name, plugin.options, max_turns=10, max_episode_tokens=14, plugins=plugin.plugins)
    engine = HFEngine(tiny_model, env=spec)
    rollouts = engine.generate([request(g, f"{g}+1=", str(g + 1), 4) for g in range(3)],
                               SamplingParams(temperature=TEMP, max_new_tokens=5, seed=4), version=0)
    for r in rollouts:  # the countdown never ends: the budget does, before max_turns
        assert len(r.response_ids) <= 14 and r.episode.truncated and r.episode.turns < 10
        assert r.trains[-1] == 1  # an episode ends after a model turn, never on an observation


@pytest.mark.parametrize("options, plugins, error", [
    ({"tools": ["nope"]}, [], "unknown tool 'nope'; valid names: calculator"),
    ({"tools": ["python"]}, [], "'python' is registered by the module reward.tools: add it to rollout.env_plugins"),
    ({"call_format": "xml"}, [], "call_format 'xml' is not a format"),
    ({"tools": ["python"], "tool_options": {"python": {"timeout": 1}}}, ["reward.tools"],
     "tool_options.python.timeout: python takes timeout_s, memory_mb, allow_unisolated"),
    ({"turns": 3}, [], "rollout.env_options.turns: environment 'tool_use' takes tools, call_format"),
])
def test_bad_environment_options_are_refused_when_the_config_is_checked(options, plugins, error):
    from pydantic import ValidationError

    from rollout.config import RolloutConfig

    with pytest.raises(ValidationError, match=error.replace("(", r"\(")):
        RolloutConfig(env="tool_use", env_options=options, env_plugins=plugins)


def test_each_turns_reward_sits_on_its_last_token(three_turns):
    from trainer.batches import turn_rewards

    _, rollouts = three_turns
    batch = build_batch(rollouts, pad_id=0)
    rewards = turn_rewards(rollouts, batch.loss_mask.shape[1])
    for i, r in enumerate(rollouts):
        p = len(r.prompt_ids)
        ends = [p + j for j in range(len(r.trains)) if r.trains[j] and (j + 1 == len(r.trains) or not r.trains[j + 1])]
        assert list(np.nonzero(rewards[i])[0]) == ends and np.allclose(rewards[i, ends], 0.5)  # 0.5 every turn


class SlowEcho:
    """Answers after a random pause (its own clock, not the run's seed), noting when it ran."""

    spans: list = []

    def __init__(self):
        self.turns = 0

    def reset(self):
        return ""

    def step(self, action):
        import random

        start = time.perf_counter()
        time.sleep(random.uniform(0.01, 0.08))
        SlowEcho.spans.append((start, time.perf_counter()))
        self.turns += 1
        return Step(observation="=", done=self.turns == 2)


def test_environments_answer_together_and_never_change_what_is_sampled(tiny_model):
    """The rows whose turns end at one decode step wait for their environments at once, and how
    long those take never changes the rollouts (the same seed gives the same ids)."""
    ENVS.register("slow_echo", "a test environment: a random pause per turn")(lambda prompt, answer: SlowEcho())
    try:
        engine = HFEngine(tiny_model, env=EnvSpec("slow_echo", max_turns=2))
        reqs = [request(g, f"{g}+2=", str(g + 2), 4) for g in range(3)]
        runs = []
        for _ in range(2):
            SlowEcho.spans = []
            rollouts = engine.generate(reqs, SamplingParams(temperature=TEMP, max_new_tokens=3, seed=6), version=0)
            runs.append([(r.group_id, r.sample_index, r.response_ids, r.logprobs) for r in rollouts])
        assert runs[0] == runs[1]
        starts = sorted(s for s, _ in SlowEcho.spans)
        # Some environment started before another one (started earlier) had answered.
        assert any(b < e for (s, e) in SlowEcho.spans for b in starts if b > s), "no two environments overlapped"
    finally:
        ENVS.unregister("slow_echo")


def test_a_first_observation_under_a_chat_template_is_refused():
    """The prompt ends in the assistant's header there: a first observation has no place."""
    from rollout.envs.episode import Episode, Observations
    from rollout.types import EngineError
    from trainer.bootstrap import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}#{{ m['content'] }}{% endfor %}"
    spec = EnvSpec("gym", {"entry_point": f"{__name__}:GymStyleWalk"}).load()
    with pytest.raises(EngineError, match="put it in the prompt row"):
        Episode(spec.make("2+2=", "4"), spec, Observations(tok)).first()
