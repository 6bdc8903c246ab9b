"""Chaos on CPU with local Ray: worker processes are SIGKILLed at seeded random points of short
synchronous runs. Each run finishes; the dead worker is replaced once; its unfinished work is
generated or scored again; the ledger shows every group trained once, nothing lost or
duplicated; and, the samples being seeded per sample, training ends on the same weights as
the run nothing happened to."""

import json
import os
import random
import signal
import threading
import time

import psutil
import pytest

from cluster.rl.guard import GuardError
from cluster.run import run
from tests.e2e.checkpoints import max_weight_diff, same_weights
from tests.e2e.test_grpo_local import config

STEPS = 6
COMMON = (f"controller.steps={STEPS}", "controller.eval_every=0", "reward.num_workers=2",
          "controller.checkpoint_every=2")


@pytest.fixture(scope="module")
def calm(ray_session, tmp_path_factory):
    """The run nothing happens to: its record and its final weights."""
    tmp = tmp_path_factory.mktemp("calm")
    return run(config(tmp, *COMMON, "run.name=calm"), log=lambda *_: None).record, tmp / "runs" / "calm" / "final"


def chaos_run(tmp_path, plan):
    """The same run with the plan's processes SIGKILLed; its record and run directory."""
    run_dir = tmp_path / "runs" / "chaos"
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_chaos, args=(run_dir / "metrics.jsonl", plan, killed, stop))
    killer.start()
    try:
        record = run(config(tmp_path, *COMMON, "run.name=chaos"), log=lambda *_: None).record
    finally:
        stop.set()
        killer.join()
    assert len(killed) == len(plan), f"the chaos plan {plan} did not run to its end: killed {killed}"
    assert record["status"] == "completed" and record["steps"] == STEPS, record
    assert json.loads((run_dir / "summary.json").read_text())["faults"] == record["faults"]
    return record, run_dir


def _steps_logged(metrics) -> int:
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _kill(title: str, started: float) -> int:
    """SIGKILL one process of this test's own Ray (its workers descend from us) running `title`,
    started after `started` (not a leftover of an earlier test). Returns its pid."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if f"ray::{title}" in " ".join(proc.cmdline()) and proc.create_time() >= started - 1:
                os.kill(proc.pid, signal.SIGKILL)
                return proc.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no {title} process to kill")


def _chaos(metrics, plan, killed, stop) -> None:
    """plan: (actor class, kill once this many steps are logged, then after this many seconds)."""
    started = time.time()
    for title, after_steps, delay in plan:
        while _steps_logged(metrics) < after_steps:
            if stop.wait(0.01):
                return
        time.sleep(delay)
        killed.append(_kill(title, started))


@pytest.mark.parametrize("seed", [0])
def test_killed_rollout_and_reward_workers_are_replaced_and_nothing_is_lost(calm, tmp_path, seed):
    # A step takes ~0.15 s here, generation ~0.03 s of it and it starts as a step's row is
    # written: killing within 10 ms of a row lands in or just before a generation call (the
    # streaming path: its samples are generated again), and the reward worker dies before it
    # scores that step (its samples go to a fresh worker).
    rng = random.Random(seed)
    plan = [("RolloutWorker", rng.randint(1, STEPS - 3), rng.uniform(0.0, 0.01)),
            ("RewardWorker", rng.randint(1, STEPS - 3), rng.uniform(0.0, 0.01))]
    record, run_dir = chaos_run(tmp_path, plan)
    faults, (calm_record, calm_final) = record["faults"], calm
    assert faults["restarts"] == {"rollout": 1, "reward": 1, "learner": 0, "critic": 0}, faults
    assert faults["reissued"]["rollout"] > 0 and faults["reissued"]["reward"] > 0, faults
    assert faults["lost"] == 0 and faults["duplicated"] == 0, faults
    assert record["groups"] == calm_record["groups"] and record["groups"]["trained"] == STEPS * 8
    assert record["groups"]["issued"] == STEPS * 8  # each group issued once: re-issues are of samples, not groups
    # The same samples (seeded per sample), the same rewards, the same updates: bitwise when the
    # dead worker's calls were redone whole (a kill before a call starts, as the plan aims); a kill
    # mid-call redoes only the missing samples, in a smaller batch, whose logprobs can differ by
    # fp32 rounding (tests/rollout/test_engine_sync.py), and so the weights by as little.
    whole = faults["reissued"]["rollout"] % (8 * 4) == 0  # one worker: a call is 8 groups of 4
    final = run_dir / "final"
    assert same_weights(final, calm_final) if whole else max_weight_diff(final, calm_final) < 1e-5
    assert record["eval"] == calm_record["eval"] or not whole


def test_a_killed_learner_rank_restarts_the_run_from_its_last_checkpoint(calm, tmp_path):
    """Killed during step 4 (checkpoints at steps 2 and 4): every role restarts from step_2,
    steps 3-6 run again, and the run ends as the calm one did, bitwise (as a --resume would)."""
    record, run_dir = chaos_run(tmp_path, [("Learner", 3, 0.0)])
    calm_record, calm_final = calm
    assert record["faults"]["restarts"] == {"rollout": 0, "reward": 0, "learner": 1, "critic": 0}, record["faults"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) + [STEPS]  # each step once in the end
    assert same_weights(run_dir / "final", calm_final) and record["eval"] == calm_record["eval"]
    assert record["groups"] == calm_record["groups"]


def test_a_metric_past_its_guard_stops_the_run_with_a_diagnosis(ray_session, tmp_path):
    """A limit every healthy step exceeds (the quickstart's gradient norm is 0.7-5): two steps
    past it, with patience 2, stop the run after step 2's row, naming the metric, the steps, the
    values and the likely cause."""
    cfg = config(tmp_path, *COMMON, "run.name=guarded", "controller.guard.grad_norm=0.001",
                 "controller.guard.patience=2")
    with pytest.raises(GuardError, match=r"^grad_norm: 2 steps in a row past controller.guard.grad_norm=0.001 "
                                         r"\(step 1: .*, step 2: .*\). Likely cause: .*trainer.lr"):
        run(cfg, log=lambda *_: None)
    run_dir = tmp_path / "runs" / "guarded"
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "failed" and summary["error"].startswith("GuardError: grad_norm: 2 steps")
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0.001 for r in rows)
