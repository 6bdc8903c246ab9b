"""Multi-turn rollouts end to end (real Ray actors, DeepSpeed learners, reward pool): the tool
quickstart's policy learns to call its calculator and the inverted twin does not, and a
multi-turn run trains asynchronously, its trajectories spanning weight versions.

Harness: recipes/tool_quickstart.yaml on its bootstrap model (seed 0: the warm-up teaches the
call format; the policy starts at 0% held out, calling the tool on 0% of the held-out prompts
when greedy), TOOL_STEPS steps at the recipe's own learning rate; reward gain: the mean training
reward of the last TOOL_WINDOW steps minus the first TOOL_WINDOW's.

Noise, measured with `.venv/bin/python bench/learning_noise.py --seeds 0 1 2 --cases tool
tool_flipped` (bench/results/learning_noise.md; 2-core AMD EPYC, 2026-12-07):
  tool:         held out +94.9 / +33.2 / +87.1 points (seeds 0 / 1 / 2), reward +0.56 / +0.13 / +0.56,
                held-out tool-call rate 0% -> 100% on every seed
  tool_flipped: held out +0.0 on every seed (it stays at 0%), reward -0.110 / -0.100 / -0.101
  seed 0 twice: the same gains to the last bit.
A learning run must gain more than TOOL_MARGIN held out (the issue's bar; the weakest seed clears
it 2.2x) and REWARD_MARGIN in reward (the weakest 2.7x), the flipped twin nothing at all. The
tests run seed 2. Floating-point results differ across CPUs: another machine gives other numbers.
"""

from __future__ import annotations

import json
import os

import pytest

from cluster.config import load_config
from cluster.run import run
from tests.e2e.test_learning import ROOT, flipped_estimators, learning_config, run_gains  # noqa: F401 (a fixture)

TOOL_STEPS, TOOL_WINDOW = 25, 5
TOOL = {"recipe": "tool_quickstart.yaml", "lr": 5.0e-4, "steps": TOOL_STEPS, "window": TOOL_WINDOW}
TOOL_MARGIN, REWARD_MARGIN = 0.15, 0.05  # what a learning run must gain at least (held out, reward)
SEED = 2


def tool_spec():
    return load_config(os.path.join(ROOT, "recipes", "tool_quickstart.yaml")).model.bootstrap_spec


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    from trainer.bootstrap import ensure_tiny_model

    path = tmp_path_factory.mktemp("multiturn") / "tiny-tools"
    ensure_tiny_model(path, tool_spec(), seed=0, log=lambda *_: None)
    return path


def tool_calls(run_dir) -> tuple[float, float]:
    """The held-out prompts' tool-call rate (greedy) before and after the run."""
    episodes = json.loads((run_dir / "summary.json").read_text())["eval"]["episodes"]
    return episodes["initial"]["tool_call_rate"], episodes["latest"]["tool_call_rate"]


def test_tool_use_is_learned(ray_session, tool_model, tmp_path):
    reward, accuracy = run_gains(tool_model, tmp_path, SEED, "tool", **TOOL)
    before, after = tool_calls(tmp_path / "tool")
    assert accuracy > TOOL_MARGIN and reward > REWARD_MARGIN, (reward, accuracy)
    assert after > before + 0.5, (before, after)  # it learned *to call* the calculator


def test_tool_use_with_flipped_advantages_is_not_learned(ray_session, tool_model, flipped_estimators, tmp_path):
    """(It may still learn to call the tool, and to call it wrong: seed 1 did, 0% -> 95%.)"""
    reward, accuracy = run_gains(tool_model, tmp_path, SEED, "flipped", "algorithm.advantage=grpo_flipped", **TOOL)
    assert accuracy <= 0.0 and reward < 0.0, (reward, accuracy)


def test_a_multi_turn_run_trains_asynchronously(ray_session, tool_model, tmp_path):
    """k = 1, generation started a step ahead (eager): trajectories of several turns train one
    version old, and none older (the gate reads a trajectory's oldest token)."""
    cfg = learning_config(tool_model, tmp_path, 3, "async", "controller.max_staleness=1",
                          "controller.lookahead=eager", "rollout.batch_size=16", recipe="tool_quickstart.yaml",
                          lr=5.0e-4, steps=6)
    record = run(cfg, log=lambda *_: None).record
    assert record["status"] == "completed" and record["steps"] == 6
    rows = [json.loads(line) for line in (tmp_path / "async" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if not r.get("final")]
    assert max(r["staleness_max"] for r in steps) == 1  # it ran ahead, and never past the bound
    assert max(int(k) for k in record["staleness"]["histogram"]) == 1
    assert max(r["turns"] for r in steps) > 1.0 and sum(r["tool_calls"] for r in steps) > 0
