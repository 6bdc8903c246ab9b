import pytest

from rollout.data import DataError, PromptSource, load_prompts


def test_loads_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2=", "answer": 4}\n')
    rows = load_prompts(f)
    assert [(r.id, r.text, r.answer) for r in rows] == [(0, "1+1=", "2"), (1, "2+2=", "4")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "1+1=", "answer": "2"', "not valid JSON"),
    ('["1+1=", "2"]', "expected a JSON object"),
    ('{"prompt": "1+1="}', "missing key 'answer'"),
    ('{"prompt": ["x"], "answer": "2"}', "'prompt' must be a string"),
])
def test_malformed_row_names_file_and_line(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "1+1=", "answer": "2"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{message}"):
        load_prompts(f)


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
