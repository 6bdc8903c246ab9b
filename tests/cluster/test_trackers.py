"""Trackers beside metrics.jsonl: TensorBoard event files and an offline W&B run hold the logged
values, samples.jsonl the sample generations; a resumed run drops what came after its checkpoint;
a tracker that cannot run stops the run before it starts."""

import json
import re
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.rundir import COMPLETE, RunDir
from cluster.trackers import check_trackers

ROWS = [{"step": 1, "reward_mean": 0.25, "lr": 1e-3, "nonfinite": 0.0, "checkpointed": True},
        {"step": 2, "reward_mean": 0.5, "lr": 5e-4, "eval_accuracy": 0.125},
        {"step": 3, "reward_mean": 0.75, "lr": 2.5e-4}]
SAMPLE = {"prompt": "1+2=", "response": "3", "answer": "3", "reward": 1.0, "correct": True,
          "finish_reason": "stop", "policy_version": 0, "min_version": 0, "max_version": 0}


def config(tmp_path, *overrides):
    return load_config("recipes/quickstart.yaml", [f"run.output_dir={tmp_path}/runs", *overrides])


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=True)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_history(run_dir: Path) -> list[tuple[str, str]]:
    """(key, JSON value) of every history item in the offline run's .wandb log: a HistoryItem is
    field 2 (key) then field 16 (value_json), both length-prefixed strings (W&B's protobuf)."""
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, items = log.read_bytes(), []
    for m in re.finditer(rb"\x12([\x01-\x7f])", data):
        key_end = m.end() + m.group(1)[0]
        key = data[m.end():key_end]
        if data[key_end:key_end + 2] == b"\x82\x01" and re.fullmatch(rb"[A-Za-z_][\w/]*", key):
            size = data[key_end + 2]
            items.append((key.decode(), data[key_end + 3:key_end + 3 + size].decode(errors="replace")))
    return items


def test_tensorboard_and_offline_wandb_hold_the_logged_rows_and_samples(tmp_path):
    cfg = config(tmp_path, "logging.tensorboard=true", "logging.wandb.project=tandem-test",
                 "logging.wandb.mode=offline")
    check_trackers(cfg)
    run = RunDir.create(cfg)
    run.open_trackers(cfg)
    try:
        for row in ROWS:
            run.log_metrics(row)
        run.log_samples([{"step": 2, **SAMPLE}])
    finally:
        run.close_trackers()
    scalars = tensorboard_scalars(run.path)
    assert scalars["reward_mean"] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert scalars["eval_accuracy"] == [(2, 0.125)] and "checkpointed" not in scalars  # flags are not plotted
    history = wandb_history(run.path)
    assert ("reward_mean", "0.75") in history and ("lr", "0.00025") in history and ("eval_accuracy", "0.125") in history
    assert ("_step", "3") in history
    samples = [json.loads(line) for line in (run.path / "samples.jsonl").read_text().splitlines()]
    assert samples == [{"step": 2, **SAMPLE}]
    assert (run.path / "wandb_run_id").read_text().strip() in str(next((run.path / "wandb").glob("offline-run-*")))


def test_a_resumed_run_drops_what_came_after_its_checkpoint(tmp_path):
    cfg = config(tmp_path, "logging.tensorboard=true")
    run = RunDir.create(cfg)
    run.open_trackers(cfg)
    for row in ROWS:
        run.log_metrics(row)
        run.log_samples([{**SAMPLE, "step": row["step"]}])
    run.close_trackers()  # killed after step 3; the checkpoint is step 1's
    checkpoint = run.checkpoint_dir(1)
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE).write_text(json.dumps({"step": 1}))
    resumed, found = RunDir.resume(cfg)
    assert found == checkpoint
    resumed.open_trackers(cfg, found)
    try:
        resumed.log_metrics({"step": 2, "reward_mean": 0.375})
    finally:
        resumed.close_trackers()
    assert tensorboard_scalars(run.path)["reward_mean"] == [(1, 0.25), (2, 0.375)]
    assert [json.loads(line)["step"] for line in (run.path / "samples.jsonl").read_text().splitlines()] == [1]


def test_a_tracker_that_cannot_run_stops_the_run_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with pytest.raises(ConfigError, match=r"logging.wandb.mode 'online' needs W&B credentials \(WANDB_API_KEY"):
        check_trackers(config(tmp_path, "logging.wandb.project=p"))
    with pytest.raises(ConfigError, match=r"missing required key 'logging.wandb.project'"):
        config(tmp_path, "logging.wandb.mode=offline")
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"logging.tensorboard needs the 'tensorboard' package"):
        check_trackers(config(tmp_path, "logging.tensorboard=true"))
