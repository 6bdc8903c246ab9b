"""Colocated placement time-slices the devices (cluster/rl/timeslice.py): every step runs its
phases in order, and handing the device over changes nothing the run computes."""

import json

from cluster.run import run
from tests.e2e.checkpoints import same_weights
from tests.e2e.test_grpo_local import config

PHASES = ["generate", "engine_sleep", "learner_reload", "train", "learner_offload", "engine_wake", "sync",
          "learner_offload_params"]


def rows(tmp_path, name):
    lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "final" not in line]


def test_colocated_time_slicing_reproduces_the_disaggregated_run_bitwise(ray_session, tmp_path):
    """Level 2: the engine drops its weights at every training phase and each step's sync refills
    them; the learners offload their ZeRO-2 states and reload them. A checkpoint mid-run reads
    the learners' parameters while they are offloaded between steps."""
    steps = 3
    common = (f"controller.steps={steps}", "controller.eval_every=2", "controller.checkpoint_every=2")
    apart = run(config(tmp_path, *common, "run.name=apart"), log=lambda *_: None).record
    shared = run(config(tmp_path, *common, "run.name=shared", "cluster.placement=colocated", "rollout.sleep_level=2"),
                 log=lambda *_: None).record
    for a, s in zip(rows(tmp_path, "apart"), rows(tmp_path, "shared"), strict=True):
        for key in ("reward_mean", "loss", "grad_norm", "entropy", "clip_frac", "response_len"):
            assert a[key] == s[key], (a["step"], key)  # bitwise: floats round-trip through JSON
        assert "phases" not in a and a["switch_s"] == 0
        assert s["phases"] == PHASES and s["switch_s"] > 0
        # The tiny model's weights left the engine; the learners are on the CPU, which they never leave.
        assert s["engine_released_mb"] * 2**20 == shared["weight_sync"]["bytes_per_update"]
        assert s["learner_offloaded_mb"] == 0 and s["learner_reloaded_mb"] == 0
    assert rows(tmp_path, "shared")[1]["eval_accuracy"] == rows(tmp_path, "apart")[1]["eval_accuracy"]
    assert apart["eval"] == shared["eval"] and shared["weight_sync"]["count"] == steps
    for sub in ("checkpoints/step_000002", "final"):
        assert same_weights(tmp_path / "runs" / "apart" / sub, tmp_path / "runs" / "shared" / sub), sub
