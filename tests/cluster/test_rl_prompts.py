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
