"""Resume: a synchronous run killed with SIGKILL mid-way and resumed with --resume ends on
bitwise the same weights, with the same per-step metrics, as the run that was never stopped
(its cosine learning-rate schedule included: it goes on from where the checkpoint left it)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.config import config_to_yaml
from cluster.run import run
from tests.e2e.checkpoints import same_weights
from tests.e2e.test_grpo_local import config
from trainer.schedules import Schedule

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
KEYS = ("reward_mean", "loss", "grad_norm", "entropy", "clip_frac", "response_len", "version", "staleness_max", "lr")


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process and everything it started (its Ray), nothing else."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def test_a_run_killed_mid_way_resumes_to_the_same_weights_and_metrics(ray_session, tmp_path):
    common = (f"controller.steps={STEPS}", "controller.checkpoint_every=2", "controller.keep_checkpoints=2",
              "controller.eval_every=4", "trainer.lr_schedule=cosine", "trainer.lr_warmup_steps=2")
    straight = run(config(tmp_path, *common, "run.name=straight"), log=lambda *_: None).record
    lr = config(tmp_path).trainer.lr
    logged = [r["lr"] for r in rows(tmp_path / "runs" / "straight")[:STEPS]]
    assert logged == pytest.approx([lr * Schedule("cosine", STEPS, 2)(i) for i in range(STEPS)], rel=1e-12)
    assert logged[:3] == pytest.approx([lr / 2, lr, lr]) and logged[-1] < 0.1 * lr  # warm-up, then the decay

    cfg = config(tmp_path, *common, "run.name=killed")
    recipe = tmp_path / "killed.yaml"
    recipe.write_text(config_to_yaml(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", str(recipe)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "killed"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # kill once step 3 is logged: a checkpoint exists, the run is not over
            if (run_dir / "metrics.jsonl").is_file() and any(r["step"] >= 3 for r in rows(run_dir)):
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the run logged no third step within 240 s")
    finally:
        kill_tree(proc)
    logged = [r["step"] for r in rows(run_dir)]
    assert max(logged) < STEPS and (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"  # killed: no word from it
    resumed_from = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.endswith(".tmp"))[-1]

    resumed = run(cfg, log=lambda *_: None, resume=True).record
    assert resumed["status"] == "completed" and resumed["steps"] == STEPS
    got, want = rows(run_dir), rows(tmp_path / "runs" / "straight")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1)) + [STEPS]  # each step once, then the final row
    for g, w in zip(got, want, strict=True):
        for key in KEYS:
            assert g.get(key) == w.get(key), (g["step"], key)  # bitwise: floats round-trip through JSON
        assert g.get("eval_accuracy") == w.get("eval_accuracy")
    assert same_weights(run_dir / "final", tmp_path / "runs" / "straight" / "final")
    assert resumed["eval"] == straight["eval"] and resumed["groups"] == straight["groups"]
    assert resumed["staleness"] == straight["staleness"]
    assert int(resumed_from.removeprefix("step_")) in (2, 4, 6)  # it did resume from a checkpoint mid-run
    # Per-prompt statistics go on from the checkpoint's: at step 6 the same as the straight run's.
    def prompt_stats(name):
        path = tmp_path / "runs" / name / "checkpoints" / "step_000006" / "controller.json"
        return json.loads(path.read_text())["prompt_stats"]

    assert prompt_stats("killed") == prompt_stats("straight")
    assert sum(v[0] for v in prompt_stats("straight").values()) == 6 * 8 * 4  # every sample of steps 1-6


def test_an_asynchronous_run_resumes_within_its_staleness_bound_and_loses_no_group(ray_session, tmp_path):
    """k = 1: at step 2's checkpoint the groups of step 3 are in flight. Extended from 4 to 6
    steps, the run resumes there: those groups end as dropped:interrupted (their samples were not
    kept) and are replaced by new ones; every group ends exactly once, none is trained twice."""
    common = ("controller.max_staleness=1", "algorithm.loss=decoupled_ppo", "controller.checkpoint_every=2",
              "controller.eval_every=0", "run.name=async")
    run(config(tmp_path, "controller.steps=4", *common), log=lambda *_: None)
    run_dir = tmp_path / "runs" / "async"
    loop = json.loads((run_dir / "checkpoints" / "step_000002" / "controller.json").read_text())
    open_at_checkpoint = len(loop["scheduler"]["open"])
    assert open_at_checkpoint > 0  # generation had run ahead into step 3

    summary = run(config(tmp_path, "controller.steps=6", *common), log=lambda *_: None, resume=True).record
    g = summary["groups"]
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert g["trained"] == 6 * 8 and g["dropped:interrupted"] == open_at_checkpoint and g["open"] == 0
    assert g["issued"] == sum(v for k, v in g.items() if k not in ("issued", "open"))  # each group ended once
    assert summary["staleness"]["max_seen"] <= 1 and summary["samples"] == 6 * 32
    assert [r["step"] for r in rows(run_dir) if not r.get("final")] == [1, 2, 3, 4, 5, 6]
