import json

import pytest

from rollout.data import DataError, PromptSource, load_prompts

# GSM8K as verl's preprocessing writes it: a chat prompt, the answer nested under reward_model.
VERL_ROWS = [
    {"data_source": "gsm8k", "prompt": [{"role": "user", "content": "Natalia sold 48 clips ..."}],
     "reward_model": {"style": "rule", "ground_truth": "72"}, "extra_info": {"index": 0}},
    {"data_source": "gsm8k", "prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": "5+5?"}],
     "reward_model": {"style": "rule", "ground_truth": "10"}, "extra_info": {"index": 1}},
]


def test_loads_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2=", "answer": 4}\n')
    rows = load_prompts(f)
    assert [(r.id, r.text, r.answer) for r in rows] == [(0, "1+1=", "2"), (1, "2+2=", "4")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "1+1=", "answer": "2"', "not valid JSON"),
    ('["1+1=", "2"]', "expected a JSON object"),
    ('{"prompt": "1+1="}', r"no column 'answer' \(columns: prompt\)"),
    ('{"prompt": ["x"], "answer": "2"}', r"'prompt'\[0\] must be a \{role, content\} message"),
    ('{"prompt": {"x": 1}, "answer": "2"}', "'prompt' must be a string or a message list, got dict"),
    ('{"prompt": "1+1=", "answer": [2]}', "'answer' must be a string or a number, got list"),
    ('{"prompt": "1+1=", "answer": null}', "'answer' is null"),
])
def test_malformed_row_names_file_and_line(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "1+1=", "answer": "2"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{message}"):
        load_prompts(f)


def test_hints_load_and_render_as_a_continuation_of_the_prompt(tmp_path):
    from rollout.data import render_prompts

    f = tmp_path / "h.jsonl"
    f.write_text('{"prompt": "12+35=", "answer": "47", "hint": "4"}\n{"prompt": "1+2=", "answer": "3", "hint": ""}\n')
    prompts = render_prompts(load_prompts(f, hint_key="hint"), lambda text, where: [1] + [ord(c) for c in text], f,
                             lambda text: [ord(c) for c in text])
    assert [(p.hint, p.ids, p.hint_ids) for p in prompts] == [("4", (1, *map(ord, "12+35=")), (ord("4"),)),
                                                             ("", (1, *map(ord, "1+2=")), ())]
    assert load_prompts(f)[0].hint == ""  # without hint_key the column is not read
    f.write_text('{"prompt": "1+2=", "answer": "3"}\n{"prompt": "1+2=", "answer": "3", "hint": 3}\n')
    with pytest.raises(DataError, match=r"h.jsonl:1: no column 'hint'"):
        load_prompts(f, hint_key="hint")
    f.write_text('{"prompt": "1+2=", "answer": "3", "hint": 3}\n')
    with pytest.raises(DataError, match=r"h.jsonl:1: 'hint' must be a string"):
        load_prompts(f, hint_key="hint")


def write_formats(tmp_path, rows) -> dict:
    """The same rows as jsonl, parquet, a save_to_disk directory and a DatasetDict's directory."""
    import datasets

    paths = {"jsonl": tmp_path / "d.jsonl", "parquet": tmp_path / "d.parquet", "dir": tmp_path / "ds",
             "dict": tmp_path / "dd"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(paths["parquet"]))
    ds.save_to_disk(str(paths["dir"]))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(paths["dict"]))
    return paths


def test_every_format_gives_the_same_prompts_with_nested_columns_and_chats(tmp_path):
    paths = write_formats(tmp_path, VERL_ROWS)
    loaded = {fmt: load_prompts(p, "prompt", "reward_model.ground_truth") for fmt, p in paths.items()}
    for fmt, prompts in loaded.items():
        assert prompts == loaded["jsonl"], fmt
    first, second = loaded["jsonl"]
    assert (first.text, first.answer, first.messages) == (
        "Natalia sold 48 clips ...", "72", ({"role": "user", "content": "Natalia sold 48 clips ..."},))
    assert second.text == "5+5?" and [m["role"] for m in second.messages] == ["system", "user"]
    with pytest.raises(DataError, match=r"d.parquet: row 1: no column 'reward_model.answer' \(columns: data_source, "
                                        r"extra_info, prompt, reward_model\)"):
        load_prompts(paths["parquet"], "prompt", "reward_model.answer")


def test_csv_rows_with_mapped_columns_and_errors_naming_the_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('question,solution\n"What is 6 x 7,\nexactly?","... #### 42"\n1+1=,2\n')
    prompts = load_prompts(f, "question", "solution")
    assert [(p.text, p.answer) for p in prompts] == [("What is 6 x 7,\nexactly?", "... #### 42"), ("1+1=", "2")]
    with pytest.raises(DataError, match=r"d.csv:3: no column 'answer' \(columns: question, solution\)"):
        load_prompts(f, "question", "answer")
    (tmp_path / "bad.csv").write_text("question,solution\n1+1=,2,3\n")
    with pytest.raises(DataError, match=r"bad.csv:2: 3 fields; the header names 2"):
        load_prompts(tmp_path / "bad.csv", "question", "solution")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "none.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_prompts(tmp_path / "e.jsonl")


def test_prompt_source_covers_each_epoch_once(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(f'{{"prompt": "{i}", "answer": "{i}"}}\n' for i in range(10)))
    src = PromptSource(load_prompts(f), seed=3)
    first = [p.id for p in src.next_batch(10)]
    assert sorted(first) == list(range(10)) and src.epoch == 1
    again = PromptSource(load_prompts(f), seed=3)
    assert [p.id for p in again.next_batch(10)] == first  # reproducible from the seed


def test_a_restored_prompt_source_deals_what_the_original_would():
    import json

    from rollout.data import DataError, Prompt, PromptSource

    prompts = [Prompt(id=i, text=str(i), answer=str(i)) for i in range(7)]
    a = PromptSource(prompts, seed=3)
    a.next_batch(5)  # part of the first pass
    state = json.loads(json.dumps(a.state()))
    b = PromptSource(prompts, seed=99)  # another seed: everything comes from the state
    b.restore(state)
    assert [p.id for p in b.next_batch(20)] == [p.id for p in a.next_batch(20)]  # across two more passes
    assert b.epoch == a.epoch == 4
    with pytest.raises(DataError, match="dealt from 7 prompts; the dataset now has 6"):
        PromptSource(prompts[:6], seed=3).restore(state)
