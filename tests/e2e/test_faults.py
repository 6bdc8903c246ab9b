"""Chaos on CPU with local Ray: a rollout worker, a reward worker and a learner rank are SIGKILLed
at seeded random points of short runs. Each run finishes; a dead worker is replaced once and its
unfinished work generated or scored again, a dead learner restarts the run from its last
checkpoint; the ledger shows every group trained once, nothing lost or duplicated; and, the
samples being seeded per sample, a synchronous run ends on the same weights as the run nothing
happened to. The numerics guard is tested end to end here too."""

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


def chaos_run(tmp_path, plan, *extra):
    """The same run (plus `extra` overrides) with the plan's processes SIGKILLed; its record
    and run directory."""
    run_dir = tmp_path / "runs" / "chaos"
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_chaos, args=(run_dir / "metrics.jsonl", plan, killed, stop))
    killer.start()
    try:
        record = run(config(tmp_path, *COMMON, "run.name=chaos", *extra), log=lambda *_: None).record
    finally:
        stop.set()
        killer.join()
    assert len(killed) == len(plan), f"the chaos plan {plan} did not run to its end: killed {killed}"
    assert record["status"] == "completed" and record["steps"] == STEPS, record
    assert json.loads((run_dir / "summary.json").read_text())["faults"] == record["faults"]
    return record, run_dir


def _steps_logged(metrics) -> int:
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _find(title: str, started: float) -> psutil.Process:
    """One process of this test's own Ray (its workers descend from us) running `title`, started
    after `started` (not a leftover of an earlier test)."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if f"ray::{title}" in " ".join(proc.cmdline()) and proc.create_time() >= started - 1:
                return proc
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no {title} process to kill")


def _when_busy(proc: psutil.Process, stop, timeout_s: float = 30.0) -> None:
    """Return once `proc` is seen using CPU (its CPU time grows by a clock tick): after a step's
    row, the rollout worker's next work is the next step's generation, so a kill then lands in a
    generation call however loaded the machine is (a fixed delay after the row once missed it)."""
    base, deadline = sum(proc.cpu_times()[:2]), time.time() + timeout_s
    while sum(proc.cpu_times()[:2]) == base and time.time() < deadline and not stop.wait(0.001):
        pass


def _chaos(metrics, plan, killed, stop) -> None:
    """plan: (actor class, kill once this many steps are logged, then after this many seconds,
    or None: as soon as the process is busy). The process is found while the steps run and the
    row is watched every 2 ms, so a kill "as soon as it is busy" meets the call that follows the
    row: scanning the process tree after the row once took long enough for a short generation
    call to end unseen, and the kill then hit the weight update, with nothing to generate again."""
    started = time.time()
    for title, after_steps, delay in plan:
        proc = None
        while _steps_logged(metrics) < after_steps:
            if proc is None:
                try:
                    proc = _find(title, started)
                except AssertionError:  # not started yet
                    pass
            if stop.wait(0.002):
                return
        proc = proc if proc is not None and proc.is_running() else _find(title, started)
        _when_busy(proc, stop) if delay is None else time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        killed.append(proc.pid)


@pytest.mark.parametrize("seed", [0])
def test_killed_workers_are_replaced_a_killed_learner_restarts_from_a_checkpoint_and_nothing_is_lost(
        calm, tmp_path, seed):
    """One run, three deaths. The rollout worker is killed as soon as it works after a step's row:
    in the next generation call (its missing samples are generated again on a replacement); the
    reward worker dies before it scores that step (its samples go to a fresh worker). Then a
    learner rank dies during step 4 (checkpoints at steps 2 and 4): every role restarts from
    step_2 and steps 3-6 run again, as a --resume would."""
    rng = random.Random(seed)
    rollout_after, _ = rng.randint(1, 2), rng.uniform(0.0, 0.01)  # the draws the reward worker's follow
    plan = [("RolloutWorker", rollout_after, None),
            ("RewardWorker", rng.randint(1, 2), rng.uniform(0.0, 0.01)), ("Learner", 3, 0.0)]
    record, run_dir = chaos_run(tmp_path, plan)
    faults, (calm_record, calm_final) = record["faults"], calm
    assert faults["restarts"] == {"rollout": 1, "reward": 1, "learner": 1, "critic": 0}, faults
    assert faults["reissued"]["rollout"] > 0 and faults["reissued"]["reward"] > 0, faults
    assert faults["lost"] == 0 and faults["duplicated"] == 0, faults
    assert record["groups"] == calm_record["groups"] and record["groups"]["trained"] == STEPS * 8
    assert record["groups"]["issued"] == STEPS * 8  # each group issued once: re-issues are of samples, not groups
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) + [STEPS]  # each step once in the end
    # The same samples (seeded per sample), the same rewards, the same updates: bitwise when the
    # dead worker's calls were redone whole (a kill before a call starts, as the plan aims); a kill
    # mid-call redoes only the missing samples, in a smaller batch, whose logprobs can differ by
    # fp32 rounding (tests/rollout/test_engine_sync.py), and so the weights by as little.
    whole = faults["reissued"]["rollout"] % (8 * 4) == 0  # one worker: a call is 8 groups of 4
    final = run_dir / "final"
    assert same_weights(final, calm_final) if whole else max_weight_diff(final, calm_final) < 1e-5
    assert record["eval"] == calm_record["eval"] or not whole


def test_a_killed_rollout_worker_in_an_asynchronous_run_keeps_the_staleness_bound(ray_session, tmp_path):
    """k = 1: the next step's generation runs while a step trains, so the kill lands on work in
    flight; its samples are generated again (on newer weights, if a sync came between) and go
    through the same gate: nothing older than k trains, every group ends once, none is lost."""
    record, _ = chaos_run(tmp_path, [("RolloutWorker", 2, 0.0)], "controller.max_staleness=1")
    faults, groups = record["faults"], record["groups"]
    assert faults["restarts"]["rollout"] == 1 and faults["reissued"]["rollout"] > 0, faults
    assert faults["lost"] == 0 and faults["duplicated"] == 0, faults
    assert record["staleness"]["max_allowed"] == 1 and record["staleness"]["max_seen"] <= 1
    assert groups["trained"] == STEPS * 8 and groups["open"] == 0
    assert groups["issued"] == sum(n for outcome, n in groups.items() if outcome not in ("issued", "open"))


def test_a_killed_rollout_worker_rejoins_the_collective_transfer_group(calm, tmp_path):
    """rollout.weight_transfer=collective (gloo here, NCCL on GPUs): the replacement takes the
    current weights from the object store, the group forms again with it, and the later updates
    travel over the new group; the run ends on the calm (object-store) run's weights, as the
    collective carrier always does (tests/e2e/test_weight_transfer.py)."""
    record, run_dir = chaos_run(tmp_path, [("RolloutWorker", 1, 0.0)], "rollout.weight_transfer=collective")
    assert record["weight_sync"]["transfer"] == "collective"
    assert record["faults"]["restarts"]["rollout"] == 1 and record["faults"]["lost"] == 0
    assert record["weight_sync"]["count"] == STEPS and record["weight_sync"]["checksum_failures"] == 0
    whole = record["faults"]["reissued"]["rollout"] % (8 * 4) == 0
    final, calm_final = run_dir / "final", calm[1]
    assert same_weights(final, calm_final) if whole else max_weight_diff(final, calm_final) < 1e-5


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
