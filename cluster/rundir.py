"""The run directory: resolved config, metrics.jsonl, summary.json, checkpoints, and the
trackers' files (samples.jsonl, tensorboard/, wandb/; cluster/trackers.py).

Written append-only and flushed per step, so a failing run keeps everything
it wrote; an existing directory is never reused (a numbered sibling is made).
A checkpoint is written into a temporary sibling and renamed into place once complete,
so a crash mid-save never leaves a partial checkpoint where a complete one is expected.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from cluster.config import Config, ConfigError, config_to_yaml, load_config


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (metrics.jsonl stays standard JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


COMPLETE = "COMPLETE"  # the marker of a checkpoint written to the end


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass(frozen=True)
class RunSummary:
    """What a finished run returns (and the CLI prints): `record` is what summary.json holds."""

    status: str  # "completed" (a failed run raises; its summary.json says "failed")
    mode: str  # run.mode
    run_dir: str
    headline: str  # one line: what was trained and the held-out result before -> after
    record: dict


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        self.summary_path = path / "summary.json"
        self.trackers = None  # cluster/trackers.py Trackers, once open_trackers() ran

    def open_trackers(self, cfg: Config, checkpoint: Optional[Path] = None) -> None:
        """TensorBoard / W&B / samples.jsonl as cfg.logging asks; `checkpoint`: the run resumes there."""
        from cluster.trackers import Trackers

        step = None if checkpoint is None else json.loads((checkpoint / COMPLETE).read_text())["step"]
        self.trackers = Trackers(cfg, self.path, step)

    def close_trackers(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None

    @classmethod
    def create(cls, cfg: Config) -> "RunDir":
        root = Path(cfg.run.output_dir)
        root.mkdir(parents=True, exist_ok=True)
        path, n = root / cfg.run.name, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                path, n = root / f"{cfg.run.name}-{n}", n + 1
        run = cls(path)
        (path / "config.yaml").write_text(config_to_yaml(cfg))
        return run

    @classmethod
    def resume(cls, cfg: Config) -> tuple["RunDir", Path]:
        """The existing run directory of `cfg` and its latest complete checkpoint, after checking
        that the recipe is the one it ran (controller.steps may change: a run can be extended).
        metrics.jsonl is cut back to the checkpoint's step: the steps after it run again."""
        path = Path(cfg.run.output_dir) / cfg.run.name
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume: no run directory at {path} (run.output_dir / run.name)")
        run = cls(path)
        checkpoint = run.latest_checkpoint()
        if checkpoint is None:
            raise ConfigError(f"--resume: {path} has no complete checkpoint (set controller.checkpoint_every)")
        before = _flatten(load_config(path / "config.yaml").model_dump(mode="json"))
        now = _flatten(cfg.model_dump(mode="json"))
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k) and k != "controller.steps")
        if changed:
            raise ConfigError(f"--resume: the recipe differs from the one {path} ran in {', '.join(changed)}; resuming "
                              "would not continue that run (only controller.steps may change)")
        run.rewind(checkpoint)
        (path / "config.yaml").write_text(config_to_yaml(cfg))
        return run, checkpoint

    def rewind(self, checkpoint: Path) -> None:
        """metrics.jsonl cut back to `checkpoint`'s step: the steps after it run again."""
        step = json.loads((checkpoint / COMPLETE).read_text())["step"]
        if self.metrics_path.is_file():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if (row := json.loads(line))["step"] <= step and not row.get("final")]
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.metrics_path)
        if self.trackers is not None:
            self.trackers.rewind(step)

    def log_metrics(self, row: dict) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(_clean(row)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.trackers is not None:
            self.trackers.log(row)

    def log_samples(self, rows: list[dict]) -> None:
        """Sample generations (samples.jsonl, and the trackers'); needs open_trackers()."""
        self.trackers.samples([_clean(r) for r in rows])

    def write_summary(self, summary: dict) -> None:
        tmp = self.summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_clean(summary), indent=2) + "\n")
        tmp.replace(self.summary_path)

    def read_summary(self) -> Optional[dict]:
        """The summary last written, or None before the first."""
        if not self.summary_path.is_file():
            return None
        return json.loads(self.summary_path.read_text())

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step:06d}"

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int) -> Path:
        """Step `step`'s checkpoint: `write(directory)` fills a temporary directory, a marker
        (COMPLETE) is added, then it is renamed into place. A crash mid-save leaves at most a
        `.tmp` directory, which latest_checkpoint() ignores and the next save of that step
        removes. Keeps the newest `keep` complete checkpoints (0: all)."""
        final = self.checkpoint_dir(step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        with (tmp / COMPLETE).open("w") as fh:
            fh.write(json.dumps({"step": step}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old)
        return final

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        root = self.path / "checkpoints"
        found = root.glob("step_*") if root.is_dir() else []
        return sorted(p for p in found if p.suffix != ".tmp" and (p / COMPLETE).is_file())

    def latest_checkpoint(self) -> Optional[Path]:
        done = self.checkpoints()
        return done[-1] if done else None

    @property
    def final_dir(self) -> Path:
        return self.path / "final"
