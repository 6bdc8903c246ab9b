"""Checkpoints are written atomically: complete ones only are found, an interrupted save is
ignored and cleaned up by the next save of that step, and only the newest N are kept."""

import json
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.rundir import COMPLETE, RunDir

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


def write(tag):
    def fill(path):
        (path / "weights.bin").write_text(tag)
    return fill


def test_only_complete_checkpoints_count_and_the_newest_are_kept(tmp_path):
    run = RunDir(tmp_path)
    assert run.latest_checkpoint() is None
    for step in (2, 4, 6):
        assert run.save_checkpoint(step, write(f"v{step}"), keep=2) == run.checkpoint_dir(step)
    assert [p.name for p in run.checkpoints()] == ["step_000004", "step_000006"]  # step 2 deleted
    assert (run.latest_checkpoint() / "weights.bin").read_text() == "v6"
    assert (run.latest_checkpoint() / COMPLETE).read_text().strip() == '{"step": 6}'


def test_a_save_interrupted_midway_leaves_the_last_good_checkpoint_as_the_latest(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint(2, write("good"), keep=0)

    def crash(path):
        (path / "weights.bin").write_text("half")
        raise KeyboardInterrupt("killed while saving")

    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint(4, crash, keep=0)
    assert (tmp_path / "checkpoints" / "step_000004.tmp").is_dir()  # the partial write, under its temporary name
    assert not run.checkpoint_dir(4).exists()
    assert run.latest_checkpoint() == run.checkpoint_dir(2)
    # A directory with the final name but no marker (e.g. copied by hand, half-way) is not complete either.
    run.checkpoint_dir(6).mkdir()
    assert run.latest_checkpoint() == run.checkpoint_dir(2)
    run.save_checkpoint(4, write("again"), keep=0)  # the retry replaces the partial one
    assert not (tmp_path / "checkpoints" / "step_000004.tmp").exists()
    assert (run.latest_checkpoint() / "weights.bin").read_text() == "again"


def test_resume_refuses_a_changed_recipe_or_a_run_without_checkpoints(tmp_path):
    def cfg(*extra):
        return load_config(QUICKSTART, [f"run.output_dir={tmp_path}", "run.name=mine", *extra])

    with pytest.raises(ConfigError, match="no run directory"):
        RunDir.resume(cfg())
    run = RunDir.create(cfg())
    with pytest.raises(ConfigError, match="has no complete checkpoint"):
        RunDir.resume(cfg())
    run.save_checkpoint(2, lambda path: None, keep=0)
    with pytest.raises(ConfigError, match=r"differs from the one .* ran in algorithm.clip_eps, trainer.lr; .*only "
                                          r"controller.steps may change"):
        RunDir.resume(cfg("trainer.lr=1e-3", "algorithm.clip_eps=0.3"))
    for step in (1, 2, 3):
        run.log_metrics({"step": step})
    run.log_metrics({"step": 3, "final": True})
    resumed, checkpoint = RunDir.resume(cfg("controller.steps=800"))  # a longer run is the same run
    assert checkpoint == run.checkpoint_dir(2) and resumed.path == run.path
    assert [json.loads(line) for line in run.metrics_path.read_text().splitlines()] == [{"step": 1}, {"step": 2}]
    assert load_config(run.path / "config.yaml").controller.steps == 800


def test_a_run_stopped_from_outside_is_marked_interrupted_with_how_to_resume(tmp_path):
    import os
    import signal
    import time

    from cluster import cli
    from cluster.run import failed_summary

    run = RunDir.create(load_config(QUICKSTART, [f"run.output_dir={tmp_path}"]))
    run.write_summary({"status": "running", "steps": 3})
    before = signal.signal(signal.SIGTERM, cli._interrupt)  # what `tandem run` installs
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 15"), failed_summary(run):
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stopping the job
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, before)
    summary = run.read_summary()
    assert summary["status"] == "interrupted" and summary["steps"] == 3 and "--resume" in summary["resume"]
    with pytest.raises(ValueError), failed_summary(run):
        raise ValueError("boom")
    assert run.read_summary()["status"] == "failed" and run.read_summary()["error"] == "ValueError: boom"
