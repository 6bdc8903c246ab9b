"""Preference / SFT datasets: jsonl, parquet and dataset directories through `datasets`, chat
templates from the tokenizer, and errors that name the file and row."""

import json

import pytest

from rollout.data import DataError
from trainer.bootstrap import arithmetic_pairs
from rollout.render import Renderer
from trainer.data import Keys, load_pairs, load_sft, read_rows

ROWS = [{"prompt": "12+34=", "chosen": "46", "rejected": "4"}, {"prompt": "1+2=", "chosen": "3", "rejected": "35"}]
# A tiny ChatML-like template; the char tokenizer maps letters to <unk>, which is fine for spans.
TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}#{% endfor %}"
            "{% if add_generation_prompt %}<a>{% endif %}")


@pytest.fixture()
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_parquet_and_dataset_dir_read_alike(tmp_path, tok):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "dir"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    sources = [write_jsonl(tmp_path / "p.jsonl", ROWS), tmp_path / "p.parquet", tmp_path / "dir", tmp_path / "dict"]
    loaded = [load_pairs(p, Renderer(tok))[0] for p in sources]
    assert all(pairs == loaded[0] for pairs in loaded)
    pair = loaded[0][0]
    assert tok.decode(pair.prompt_ids, skip_special_tokens=True) == "12+34="
    assert pair.prompt_ids[0] == tok.bos_token_id
    assert list(pair.chosen_ids) == tok("46", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert list(pair.rejected_ids) == tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # Reward-model rows are scored like the reward worker scores them: no EOS.
    rm = load_pairs(sources[0], Renderer(tok, append_eos=False))[0][0]
    assert list(rm.chosen_ids) == tok("46", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "1+1=", "chosen": "2"', r"bad.jsonl:2: not valid JSON"),
    ('["a"]', r"bad.jsonl:2: expected a JSON object"),
    ('{"prompt": "1+1=", "chosen": "2"}', r"bad.jsonl:2: no column 'rejected' \(columns: chosen, prompt\)"),
    ('{"prompt": "1+1=", "chosen": 2, "rejected": {"x": 1}}', r"bad.jsonl:2: 'rejected' must be a string"),
    ('{"chosen": "2", "rejected": "3"}', r"bad.jsonl:2: no column 'prompt'"),
    ('{"prompt": "1+1=", "chosen": [{"role": "user"}], "rejected": "3"}', r"bad.jsonl:2: 'chosen'\[0\] must be"),
])
def test_malformed_rows_name_file_and_line(tmp_path, tok, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        load_pairs(path, Renderer(tok))


def test_malformed_parquet_row_names_file_and_row(tmp_path, tok):
    import datasets

    datasets.Dataset.from_list([{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": None}]
                               ).to_parquet(str(tmp_path / "s.parquet"))
    with pytest.raises(DataError, match=r"s.parquet: row 2: 'completion' is null"):
        load_sft(tmp_path / "s.parquet", Renderer(tok))


def test_missing_and_unknown_files(tmp_path, tok):
    with pytest.raises(DataError, match="dataset not found"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x.txt: unknown dataset format \(use .jsonl, .parquet, .csv or a dataset"):
        read_rows(tmp_path / "x.txt")


def test_chat_template_renders_prompt_and_trains_only_assistant_turns(tmp_path, tok):
    tok.chat_template = TEMPLATE
    rows = [{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
                          {"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]}]
    (example,), _ = load_sft(write_jsonl(tmp_path / "chat.jsonl", rows), Renderer(tok))
    trained = tok.decode([i for i, t in zip(example.ids, example.trains) if t])
    assert trained == "2#4#"  # each answer with its end-of-turn, nothing of the user turns
    tag = "<unk>" * 3  # '<u>' / '<a>': three characters outside the char vocabulary
    assert tok.decode(example.ids) == f"{tag}1+1=#{tag}2#{tag}2+2=#{tag}4#"
    # A plain-string prompt is wrapped as a user turn when the tokenizer has a template.
    pairs, _ = load_pairs(write_jsonl(tmp_path / "p.jsonl", ROWS), Renderer(tok))
    assert tok.decode(pairs[0].chosen_ids) == "46#"
    # UltraFeedback style: chosen/rejected are conversations and the prompt comes from them.
    uf = [{"chosen": [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}],
           "rejected": [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "4"}]}]
    (pair,), _ = load_pairs(write_jsonl(tmp_path / "uf.jsonl", uf), Renderer(tok))
    assert tok.decode(pair.prompt_ids) == f"{tag}1+2=#{tag}" and tok.decode(pair.rejected_ids) == "4#"
    with pytest.raises(DataError, match="no chat template"):
        Renderer(tok.__class__.from_pretrained(tok.name_or_path), chat_template=True)


def test_messages_need_a_template(tmp_path, tok):
    rows = [{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}]
    with pytest.raises(DataError, match=r"chat.jsonl:1: a 'messages' row needs a tokenizer with a chat template"):
        load_sft(write_jsonl(tmp_path / "chat.jsonl", rows), Renderer(tok))


def test_margins_and_length_limits(tmp_path, tok):
    rows = [dict(ROWS[0], margin=2.5), {"prompt": "1" * 40 + "=", "chosen": "1", "rejected": "2", "margin": 1},
            dict(ROWS[1], margin="big")]
    path = write_jsonl(tmp_path / "m.jsonl", rows[:2])
    pairs, dropped = load_pairs(path, Renderer(tok, max_length=20), Keys(margin="margin"))
    assert [p.margin for p in pairs] == [2.5] and dropped == 1  # the 42-token prompt does not fit
    with pytest.raises(DataError, match=r"m2.jsonl:2: 'margin' must be a number"):
        load_pairs(write_jsonl(tmp_path / "m2.jsonl", [rows[0], rows[2]]), Renderer(tok), Keys(margin="margin"))


def test_arithmetic_pairs_prefer_the_right_sum():
    pairs = arithmetic_pairs([{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)], 0)
    assert all(p["chosen"] == str(eval(p["prompt"][:-1])) != p["rejected"] for p in pairs)
    assert all(abs(len(p["rejected"]) - len(p["chosen"])) == 1 for p in pairs)
