"""SFT, then offline and online DPO from its checkpoint, end to end on local Ray with
DeepSpeed learner ranks (gloo). DPO starts from a supervised model, as it does in practice:
from the random tiny model, 96 DPO steps left the held-out margin at noise level."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cluster.config import load_config
from cluster.run import run
from trainer.schedules import Schedule

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sft_run(ray_session, tiny_model, tmp_path_factory) -> dict:
    """SFT of the random tiny model on the addition answers, packed rows, on 2 learner ranks."""
    out = tmp_path_factory.mktemp("sft")
    cfg = load_config(os.path.join(ROOT, "recipes", "sft_tiny.yaml"), [
        f"model.path={tiny_model}", "model.bootstrap=false", f"data.train_path={tiny_model}/data/train.jsonl",
        f"data.eval_path={tiny_model}/data/eval.jsonl", f"run.output_dir={out}/runs", "offline.epochs=40",
        "offline.max_steps=60", "offline.eval_every=20", "trainer.lr=2e-3",
    ])
    summary = run(cfg, log=print).record
    # The DPO runs read the tiny task's data next to the model, as the tiny recipes do.
    shutil.copytree(Path(tiny_model) / "data", Path(summary["final_dir"]) / "data")
    return summary


def test_sft_on_learners_lowers_held_out_nll(sft_run):
    initial, final = sft_run["eval"]["initial"], sft_run["eval"]["final"]
    print("SFT held-out NLL per answer token", initial, "->", final)
    assert sft_run["status"] == "completed" and sft_run["data"]["train"] == 512
    assert final["nll"] < 0.6 * initial["nll"]


def test_offline_dpo_raises_held_out_margin(sft_run, tmp_path):
    from trainer.bootstrap import write_arithmetic_pairs

    model = sft_run["final_dir"]
    data = Path(model) / "data"
    write_arithmetic_pairs(data, seed=0)
    cfg = load_config(os.path.join(ROOT, "recipes", "dpo_tiny.yaml"), [
        f"model.path={model}", "model.bootstrap=false", f"data.train_path={data}/pairs_train.jsonl",
        f"data.eval_path={data}/pairs_eval.jsonl", f"run.output_dir={tmp_path}/runs",
        "trainer.lr=1e-3", "offline.max_steps=48", "offline.epochs=2", "offline.eval_every=16",
        "trainer.lr_schedule=cosine", "trainer.lr_warmup_steps=4", "trainer.min_lr_ratio=0.5",
    ])
    summary = run(cfg, log=print).record
    initial, final = summary["eval"]["initial"], summary["eval"]["final"]
    print("offline DPO held-out implicit reward", initial, "->", final)
    assert summary["status"] == "completed" and summary["steps"] == 48
    # Before any step the policy is its own reference: every implicit reward is exactly 0.
    assert abs(initial["margin"]) < 1e-6 and initial["accuracy"] == 0.0
    assert final["margin"] > 0.5 and final["accuracy"] >= 0.8
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    # The first step's loss is log 2 (zero margins); training rows report the DPO metrics.
    assert abs(train[0]["loss"] - np.log(2)) < 1e-4 and abs(train[0]["reward_margin"]) < 1e-5
    assert np.mean([r["reward_accuracy"] for r in train[-8:]]) > 0.8
    # The learning rate followed its schedule over the run's 48 optimizer steps (offline.max_steps).
    want = [1e-3 * Schedule("cosine", 48, 4, 0.5)(i) for i in range(48)]
    assert [r["lr"] for r in train] == pytest.approx(want, rel=1e-12)
    assert train[0]["lr"] == pytest.approx(2.5e-4) and train[-1]["lr"] == pytest.approx(5e-4, rel=0.01)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(summary["final_dir"])


def test_online_dpo_in_the_controller_loop(sft_run, tmp_path):
    """The policy samples 4 answers per prompt, the verifier ranks them, best vs worst trains."""
    model = sft_run["final_dir"]
    cfg = load_config(os.path.join(ROOT, "recipes", "online_dpo_tiny.yaml"), [
        f"model.path={model}", "model.bootstrap=false", f"data.train_path={model}/data/train.jsonl",
        f"data.eval_path={model}/data/eval.jsonl", f"run.output_dir={tmp_path}/runs",
        "controller.steps=8", "controller.prompts_per_step=32", "controller.eval_prompts=16",
        "controller.eval_every=0", "controller.progress=false", "trainer.micro_batch_size=16",
        "trainer.lr=3e-4", "algorithm.group_size=8", "rollout.threads_per_worker=1",
    ])
    summary = run(cfg, log=lambda *_: None).record
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert summary["staleness"]["max_seen"] == 0 and summary["staleness"]["dropped"] == 0
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert all(r["pairs"] > 0 for r in steps)
    assert summary["weight_sync"]["count"] == sum(1 for r in steps if "loss" in r) >= 6
    # Step 1: the policy is its own reference, so its implicit rewards are 0 and the loss is log 2.
    assert abs(steps[0]["reward_margin"]) < 1e-5 and abs(steps[0]["loss"] - np.log(2)) < 1e-4
    # Each step's pairs are fresh samples on unseen prompts, scored before that step's update, so
    # the implicit reward ranking them as the verifier does would be a held-out win rate. Here it is
    # at chance (steps 2-8: 0.25 .. 0.75 per step, 50% pooled, 2026-12-06; an earlier seed order gave
    # 59%): the tiny model gets no sum right, so pairs differ by the format reward only, about 10 a
    # step. It is printed, not asserted: a learning claim for online DPO needs the warm model
    # (tests/e2e/test_learning.py's harness), which is still to be written.
    print("online DPO (step, pairs, margin, accuracy, reward)",
          [(r["step"], r["pairs"], round(r["reward_margin"], 4), round(r["reward_accuracy"], 3),
            round(r["reward_mean"], 4)) for r in steps])
    # The update moves the policy off its reference: margins are exactly 0 only at step 1.
    assert all(abs(r["reward_margin"]) > 1e-4 for r in steps[1:])
