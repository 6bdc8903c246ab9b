"""RL prompts are rendered to token ids before any actor starts: by the policy tokenizer's chat
template (a user turn and the generation prompt) when it has one, else as plain text with its
special tokens; the engines generate after exactly those ids."""

import json
import shutil

import pytest

from cluster.config import load_config
from cluster.run import prepare_inputs
from rollout.data import DataError

# A tiny ChatML-like template; the char tokenizer maps '<', 'u', 'a', '>' to <unk>.
TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}#{% endfor %}"
            "{% if add_generation_prompt %}<a>{% endif %}")
UNK3 = "<unk><unk><unk>"


def recipe(tmp_path, model, *overrides):
    rows = [{"prompt": "12+34=", "answer": "46"}, {"prompt": "5+5=", "answer": "10"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {{path: {model}}}\ndata: {{train_path: {data}, eval_path: {data}}}\n")
    return load_config(path, list(overrides))


@pytest.fixture()
def chat_model(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    path = tmp_path / "chat-model"
    shutil.copytree(tiny_model, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    return path, tok


def test_prompts_use_the_chat_template_when_the_tokenizer_has_one(tmp_path, chat_model):
    path, tok = chat_model
    train, evals = prepare_inputs(recipe(tmp_path, path))
    assert tok.decode(train[0].ids) == f"{UNK3}12+34=#{UNK3}"  # user turn, then the assistant's header
    assert [p.text for p in evals] == ["12+34=", "5+5="]  # the reward side still reads the text
    plain, _ = prepare_inputs(recipe(tmp_path, path, "data.chat_template=false"))
    assert tok.decode(plain[1].ids) == "<s>5+5=" and plain[1].ids[0] == tok.bos_token_id


def test_plain_tokenizer_renders_text_with_its_specials_and_refuses_a_required_template(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    train, _ = prepare_inputs(recipe(tmp_path, tiny_model))
    assert list(train[0].ids) == tok("12+34=")["input_ids"]  # <s> then the characters
    with pytest.raises(DataError, match="data.chat_template is true but the tokenizer has no chat template"):
        prepare_inputs(recipe(tmp_path, tiny_model, "data.chat_template=true"))


def test_chat_prompts_and_the_system_prompt_render_through_the_template(tmp_path, chat_model):
    """A verl-style parquet (chat prompts, nested answers) with data.system_prompt: the system turn
    comes first unless the row brings its own; the reward side reads the last user message."""
    import datasets

    path, tok = chat_model
    rows = [{"prompt": [{"role": "user", "content": "1+2="}], "reward_model": {"ground_truth": "3"}},
            {"prompt": [{"role": "system", "content": "7"}, {"role": "user", "content": "2+2="}],
             "reward_model": {"ground_truth": "4"}}]
    data = tmp_path / "gsm.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(data))
    cfg = recipe(tmp_path, path, f"data.train_path={data}", f"data.eval_path={data}",
                 "data.answer_key=reward_model.ground_truth", "data.system_prompt='9=9'")
    train, _ = prepare_inputs(cfg)
    # <s> (the system tag: the char tokenizer reads it as its BOS token), <u>ser, <a>ssistant
    assert tok.decode(train[0].ids) == f"<s>9=9#{UNK3}1+2=#{UNK3}"
    assert tok.decode(train[1].ids) == f"<s>7#{UNK3}2+2=#{UNK3}"
    assert [(p.text, p.answer) for p in train] == [("1+2=", "3"), ("2+2=", "4")]


def test_plain_text_system_prompt_and_a_chat_prompt_without_a_template(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    train, _ = prepare_inputs(recipe(tmp_path, tiny_model, "data.system_prompt=1+1=2"))
    assert list(train[0].ids) == tok("1+1=2\n\n12+34=")["input_ids"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1="}], "answer": "2"}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl: row 1: the prompt is a message list but the tokenizer has no "
                                        r"chat template"):
        prepare_inputs(recipe(tmp_path, tiny_model, f"data.train_path={chat}"))


def test_the_gsm8k_recipe_reads_gsm8k_as_published(tmp_path, chat_model):
    """openai/gsm8k's columns and full solutions, saved with save_to_disk, through the GSM8K
    recipe's data section: the question is the prompt, and the verifier scores against the
    number after the solution's '####'."""
    import datasets

    from reward.verifiers import VERIFIERS

    path, tok = chat_model
    rows = [{"question": "12+34?", "answer": "12+34 = <<12+34=46>>46\n#### 46"},
            {"question": "5+5?", "answer": "5+5 = <<5+5=10>>10\n#### 10"}]
    ds = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "gsm8k"))
    cfg = load_config("recipes/gsm8k_grpo_qwen2.5.yaml", [
        f"model.path={path}", f"data.train_path={tmp_path}/gsm8k/train", f"data.eval_path={tmp_path}/gsm8k/test"])
    train, evals = prepare_inputs(cfg)
    assert [p.text for p in evals] == ["12+34?", "5+5?"]
    text = tok.decode(train[0].ids)
    assert text.startswith("<s>") and text.endswith(f"#{UNK3}12+34<unk>#{UNK3}")  # "?" is not in the char vocabulary
    score = VERIFIERS.get(cfg.reward.verifier)
    assert [score("so #### 46.", p.answer) for p in train] == [1.0, 0.0]
