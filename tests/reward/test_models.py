"""Reward-model worker (a tiny local checkpoint) and the LLM judge (a local server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reward.judge import JudgeClient, JudgeError
from reward.pool import RewardPool
from reward.reward_model import RewardModelScorer, combine
from rollout.types import Rollout


def _tiny_rm(path, seed: int) -> str:
    """A tiny reward model (random weights from `seed`) saved at `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from trainer.bootstrap import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> str:
    return _tiny_rm(tmp_path_factory.mktemp("rm") / "tiny-rm", seed=0)


def test_reward_model_batches_equal_single_sequences(reward_model_dir):
    import torch

    scorer = RewardModelScorer(reward_model_dir, batch_size=3)
    prompts, responses = ["1+1=", "12+30=", "7+8=", "99+1=", "5+5="], ["2", "42", "15", "100", "1"]
    batched = scorer.score_texts(prompts, responses)
    for p, r, got in zip(prompts, responses, batched):  # unpadded, one at a time
        ids = scorer.tokenizer(p + r, return_tensors="pt")
        with torch.inference_mode():
            want = scorer.model(**ids).logits[0, 0].item()
        assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(x, 6) for x in batched)) == 5  # a real model: different inputs, different scores


def test_ensemble_rules_on_known_scores():
    scores = [[1.0, 3.0], [3.0, 3.0], [2.0, 6.0]]  # 3 members x 2 samples
    assert combine(scores, "mean") == pytest.approx([2.0, 4.0])
    # std over members, ddof 0: sqrt(2/3) and sqrt(2)
    assert combine(scores, "mean_minus_std", 0.5) == pytest.approx([2 - 0.5 * (2 / 3) ** 0.5, 4 - 0.5 * 2 ** 0.5])
    assert combine([[0.7, -1.0]], "mean_minus_std", 2.0) == pytest.approx([0.7, -1.0])  # one member: no spread
    with pytest.raises(ValueError, match="reward_model_combine"):
        combine(scores, "median")


def test_an_ensemble_scores_with_every_member_and_combines_per_sample(tmp_path, reward_model_dir):
    from reward.config import RewardConfig
    from reward.reward_model import RewardModelEnsemble

    other = _tiny_rm(tmp_path / "rm-1", seed=1)
    prompts, responses = ["1+1=", "12+30=", "7+8="], ["2", "42", "1"]
    each = [RewardModelScorer(p).score_texts(prompts, responses) for p in (reward_model_dir, other)]
    assert max(abs(a - b) for a, b in zip(*each)) > 1e-3  # two different models
    spec = RewardConfig(components={"reward_model": 1.0}, reward_model_path=reward_model_dir,
                        reward_model_ensemble=(other,), reward_model_combine="mean_minus_std", reward_model_std_coef=1.0)
    got = RewardModelEnsemble(spec).score_texts(prompts, responses)
    want = [(a + b) / 2 - abs(a - b) / 2 for a, b in zip(*each)]  # two members: std = |a - b| / 2, so the min
    assert got == pytest.approx(want, abs=1e-6)
    assert got == pytest.approx([min(a, b) for a, b in zip(*each)], abs=1e-6)


def test_an_uncertainty_reward_without_an_ensemble_is_refused(reward_model_dir):
    from reward.config import RewardConfig

    with pytest.raises(ValueError, match="mean_minus_std' needs an ensemble"):
        RewardConfig(components={"reward_model": 1.0}, reward_model_path=reward_model_dir,
                     reward_model_combine="mean_minus_std")


def test_reward_model_needs_a_scalar_head(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward_model_path"):
        RewardModelScorer(str(tmp_path / "missing"))


def rollouts(texts):
    return [Rollout(group_id=0, prompt_id=i, sample_index=i, prompt="5+7=", answer="12", prompt_ids=(1,), response_ids=(3,), response_text=t, logprobs=(-0.1,), versions=(0,), finish_reason="stop") for i, t in enumerate(texts)]


def test_pool_composes_reward_model_scores(ray_session, reward_model_dir):
    pool = RewardPool(components={"reward_model": 0.5}, reward_model_path=reward_model_dir)
    try:
        res = pool.score(rollouts(["12", "13"]))
    finally:
        pool.shutdown()
    rm = RewardModelScorer(reward_model_dir).score_texts(["5+7=", "5+7="], ["12", "13"])
    assert [r.raw_reward for r in res] == pytest.approx([1.1 + 0.5 * rm[0], 0.1 + 0.5 * rm[1]], abs=1e-5)
    assert dict(res[0].components)["reward_model"] == pytest.approx(rm[0], abs=1e-5)


def test_reward_model_scores_what_its_training_rendered(reward_model_dir, tmp_path):
    """With a chat template, reward-model training renders a pair as the template's user turn and
    assistant answer (trainer/data.py load_pairs); the worker renders what it scores the same way
    (recorded beside a Tandem export), not as raw prompt + response text."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    from rollout.render import Renderer, save_rendering
    from trainer.data import load_pairs

    path = tmp_path / "chat-rm"
    shutil.copytree(reward_model_dir, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}#{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    tok.save_pretrained(path)
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"prompt": "12+30=", "chosen": "42", "rejected": "41"}) + "\n")
    trained = Renderer(tok, None, 64, append_eos=False)
    (pair,), _ = load_pairs(rows, trained)
    save_rendering(trained, path)

    scorer = RewardModelScorer(str(path))
    assert scorer.ids("12+30=", "42") == list(pair.prompt_ids + pair.chosen_ids)
    assert scorer.ids("12+30=", "42") != tok("12+30=42")["input_ids"]  # raw text is not what it learned
    with torch.inference_mode():
        want = scorer.model(input_ids=torch.tensor([pair.prompt_ids + pair.rejected_ids])).logits[0, 0].item()
    assert scorer.score_texts(["12+30="], ["41"]) == pytest.approx([want], abs=1e-6)
    # Trained without the template (data.chat_template: false), it is scored without it too.
    save_rendering(Renderer(tok, False, 64, append_eos=False), path)
    plain = RewardModelScorer(str(path))
    assert plain.ids("12+30=", "42") == tok("12+30=")["input_ids"] + tok("42", add_special_tokens=False)["input_ids"]
    # Trained with a system prompt (data.system_prompt), it scores with that system turn first.
    system = Renderer(tok, None, 64, append_eos=False, system_prompt="1=1")
    (pair,), _ = load_pairs(rows, system)
    save_rendering(system, path)
    assert RewardModelScorer(str(path)).ids("12+30=", "42") == list(pair.prompt_ids + pair.chosen_ids)
    assert tok.decode(pair.prompt_ids).startswith("<s>1=1#")  # '<s' of '<s>ystem' reads as the BOS token


class Judge(BaseHTTPRequestHandler):
    """OpenAI-style chat completions: 'Score: 10' when the response contains the reference,
    else 'Score: 3'; the first `fail_first` requests get HTTP 503."""

    fail_first = 0
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Judge.seen.append((time.monotonic(), body))
        if len(Judge.seen) <= Judge.fail_first:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        user = body["messages"][-1]["content"]
        answer = user.split("Reference answer:\n")[1].split("\n")[0]
        response = user.split("Response:\n")[1]
        text = "Score: 10" if answer in response else "Reasoning... Score: 3"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    Judge.fail_first, Judge.seen = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)  # loopback only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_scores_and_retries(judge_url):
    Judge.fail_first = 2
    client = JudgeClient(judge_url, "tiny-judge", requests_per_s=100, max_retries=3)
    assert client.score("5+7=", "it is 12", "12") == 1.0
    assert client.requests == 3 and len(Judge.seen) == 3  # two 503s, then an answer
    assert client.score("5+7=", "it is 13", "12") == pytest.approx(0.3)
    assert Judge.seen[-1][1]["model"] == "tiny-judge" and Judge.seen[-1][1]["temperature"] == 0.0


def test_judge_gives_up_after_bounded_retries(judge_url):
    Judge.fail_first = 100
    client = JudgeClient(judge_url, "j", requests_per_s=100, max_retries=2)
    with pytest.raises(JudgeError, match="after 3 attempts: HTTP 503"):
        client.score("q", "r", "a")
    assert len(Judge.seen) == 3


def test_judge_rate_limit(judge_url):
    client = JudgeClient(judge_url, "j", requests_per_s=20, burst=1)
    t0 = time.monotonic()
    for _ in range(6):
        client.score("q", "a", "a")
    # A lower bound only (it cannot be beaten however fast the machine): 5 waits of 1/20 s.
    assert time.monotonic() - t0 >= 5 / 20 - 0.01
    stamps = [t for t, _ in Judge.seen]
    assert stamps[-1] - stamps[0] >= 5 / 20 - 0.01


def test_pool_with_judge_records_failures(ray_session, judge_url):
    pool = RewardPool(components={"judge": 1.0}, judge_url=judge_url, judge_requests_per_s=50, fallback_score=-1.0,
                      judge_max_retries=0)
    try:
        res = pool.score(rollouts(["12", "13"]))
        assert [r.raw_reward for r in res] == pytest.approx([1.1 + 1.0, 0.1 + 0.3])
        Judge.fail_first = 10 ** 6  # the endpoint goes down: recorded failures, fallback scores
        down = pool.score(rollouts(["14"]))[0]
        assert down.reward == -1.0 and "judge" in down.failure and "503" in down.failure
    finally:
        pool.shutdown()


def test_an_ensemble_member_that_is_not_a_checkpoint_is_named(tmp_path, reward_model_dir):
    from reward.config import RewardConfig
    from reward.pool import check_paths

    spec = RewardConfig(components={"reward_model": 1.0}, reward_model_path=reward_model_dir,
                        reward_model_ensemble=(reward_model_dir, str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match=r"reward.reward_model_ensemble\[1\] '.*nothing' is not a Hugging Face checkpoint"):
        check_paths(spec)
