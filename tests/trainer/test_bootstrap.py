import json
from pathlib import Path

import pytest

from cluster.config import BootstrapConfig, load_config
from tests.conftest import TINY
from trainer.bootstrap import SPEC_FILE, arithmetic_pairs, ensure_tiny_model, make_task, write_arithmetic_pairs

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


def test_checkpoint_is_a_normal_hf_checkpoint(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = tok("12+34=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 7
    assert tok.decode(tok("579", add_special_tokens=False)["input_ids"]) == "579"
    assert model.config.vocab_size == len(tok)
    assert model.config.hidden_size // model.config.num_attention_heads >= 32  # vLLM's CPU kernels need >= 32


def test_task_splits_are_disjoint():
    spec = BootstrapConfig(num_train_prompts=300, num_eval_prompts=200, sft_val_prompts=100)
    train, evals, val = make_task(spec, seed=1)
    keys = [{r["prompt"] for r in part} for part in (train, evals, val)]
    assert [len(k) for k in keys] == [300, 200, 100]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and not (keys[0] & keys[2])
    assert all(int(r["answer"]) == sum(map(int, r["prompt"][:-1].split("+"))) for r in evals)
    assert make_task(spec, seed=1) == (train, evals, val)


def _problems_and_twins(rows: list[dict]) -> set[str]:
    """Every prompt "a+b=" of rows and its commuted twin "b+a=" (same answer)."""
    out = set()
    for row in rows:
        a, b = row["prompt"][:-1].split("+")
        out |= {f"{a}+{b}=", f"{b}+{a}="}
    return out


def _quickstart_spec():
    cfg = load_config(QUICKSTART)
    return cfg.model.bootstrap_spec, cfg.run.seed


@pytest.mark.parametrize("which", ["quickstart", "conftest TINY"])
def test_held_out_splits_share_no_problem_nor_its_commuted_twin(which):
    """a+b and b+a have one answer: a held-out prompt whose twin trains is not held out."""
    spec, seed = _quickstart_spec() if which == "quickstart" else (TINY, 0)
    train, evals, val = make_task(spec, seed)
    assert (len(train), len(evals), len(val)) == (spec.num_train_prompts, spec.num_eval_prompts,
                                                   spec.sft_val_prompts)
    assert len({r["prompt"] for r in train + evals + val}) == len(train) + len(evals) + len(val)
    trained = {r["prompt"] for r in train}
    assert [r["prompt"] for r in evals if _problems_and_twins([r]) & trained] == []
    assert [r["prompt"] for r in val if _problems_and_twins([r]) & trained] == []
    validated = {r["prompt"] for r in val}
    assert [r["prompt"] for r in evals if _problems_and_twins([r]) & validated] == []


def test_task_refuses_more_problems_than_exist():
    with pytest.raises(ValueError, match="has only 100"):
        make_task(BootstrapConfig(max_digits=1, num_train_prompts=90, num_eval_prompts=20), seed=0)


def test_reused_while_spec_unchanged_and_rebuilt_when_changed(tmp_path):
    spec = BootstrapConfig(hidden_size=64, num_heads=2, sft_max_steps=3, sft_check_every=2, sft_batch_size=8,
                           num_train_prompts=64, num_eval_prompts=16, sft_val_prompts=16)
    first = ensure_tiny_model(tmp_path / "m", spec, seed=0, log=lambda *_: None)
    stamp = (tmp_path / "m" / "model.safetensors").stat().st_mtime_ns
    again = ensure_tiny_model(tmp_path / "m", spec, seed=0, log=lambda *_: None)
    assert again == first and (tmp_path / "m" / "model.safetensors").stat().st_mtime_ns == stamp
    data = tmp_path / "m" / "data"
    write_arithmetic_pairs(data, seed=0)
    assert [json.loads(line) for line in (data / "pairs_eval.jsonl").read_text().splitlines()] == \
        arithmetic_pairs([json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()], 1)
    changed = spec.model_copy(update={"sft_max_steps": 4})
    rebuilt = ensure_tiny_model(tmp_path / "m", changed, seed=0, log=lambda *_: None)
    assert rebuilt["spec_hash"] != first["spec_hash"]
    assert json.loads((tmp_path / "m" / SPEC_FILE).read_text()) == rebuilt
    assert not list(data.glob("pairs_*.jsonl"))  # derived from the old split: written again on demand


def test_quickstart_warm_up_leaves_room_to_learn(tmp_path):
    """The demo's own bootstrap spec: RL must start between 10% and 50% held-out accuracy."""
    cfg = load_config(QUICKSTART)
    record = ensure_tiny_model(tmp_path / "q", cfg.model.bootstrap_spec, seed=cfg.run.seed, log=lambda *_: None)
    assert 0.10 <= record["sft_eval_accuracy"] <= 0.50, record
    assert record["sft_val_accuracy"] >= cfg.model.bootstrap_spec.sft_target_accuracy
