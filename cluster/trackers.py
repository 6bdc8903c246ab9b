"""Where a run's metrics go besides metrics.jsonl: TensorBoard event files, a Weights & Biases
run, and sample generations (samples.jsonl, and a W&B table).

metrics.jsonl stays the record (cluster/rundir.py); the trackers receive the same rows. Each is
checked before anything starts (check_trackers): a tracker that cannot run says so and the run
does not start, rather than training for hours without the logs that were asked for.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Optional

from cluster.config import Config, ConfigError

SAMPLE_COLUMNS = ("step", "prompt", "response", "answer", "reward", "correct", "finish_reason", "policy_version",
                  "min_version", "max_version")


def check_trackers(cfg: Config) -> None:
    """The trackers the recipe asks for can run here: their packages import, and an online W&B
    run has credentials (it would otherwise wait for a login prompt)."""
    log = cfg.logging
    if log.tensorboard:
        _require("tensorboard", "logging.tensorboard", "tensorboard")
    if log.wandb is not None:
        wandb = _require("wandb", "logging.wandb", "wandb")
        if log.wandb.mode == "online" and not (os.environ.get("WANDB_API_KEY") or _wandb_logged_in(wandb)):
            raise ConfigError("logging.wandb.mode 'online' needs W&B credentials (WANDB_API_KEY, or `wandb login` "
                              "on this machine); use logging.wandb.mode=offline to write the run locally "
                              "(`wandb sync` uploads it later)")


def _require(module: str, field: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{field} needs the '{package}' package ({exc}); pip install {package}") from None


def _wandb_logged_in(wandb) -> bool:
    try:
        return bool(wandb.Api().api_key)
    except Exception:  # noqa: BLE001 - no settings file, no key: not logged in
        return False


def _scalars(row: dict) -> dict[str, float]:
    """The row's numbers (not the step, not flags); NaN and inf stay (the trackers plot gaps)."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The run's trackers; `resume_step`: a resumed run continues from this step (TensorBoard
    drops what the killed run logged after it; W&B continues the same run id)."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: Optional[int] = None):
        self.run_dir = run_dir
        self.samples_path = run_dir / "samples.jsonl"
        self.tb = None
        self.wandb = None
        log = cfg.logging
        if log.tensorboard:
            self._open_tensorboard(resume_step)
        if log.wandb is not None:
            self.wandb = self._start_wandb(cfg, resume_step is not None)
        if resume_step is not None:
            self._cut_samples(resume_step)

    def _open_tensorboard(self, resume_step: Optional[int]) -> None:
        """Event files under <run dir>/tensorboard; after `resume_step`, events the earlier run
        logged later than it are dropped (purge_step)."""
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)

    def _start_wandb(self, cfg: Config, resuming: bool):
        import wandb

        w = cfg.logging.wandb
        id_file = self.run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if resuming and id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        return wandb.init(project=w.project, entity=w.entity, name=w.name or cfg.run.name, mode=w.mode,
                          dir=str(self.run_dir), id=run_id, resume="allow",
                          config=cfg.model_dump(mode="json"), tags=list(w.tags))

    def log(self, row: dict) -> None:
        step = int(row.get("step", 0))
        scalars = _scalars(row)
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, global_step=step)
            self.tb.flush()
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=step)

    def samples(self, rows: list[dict]) -> None:
        """Sample generations: appended to samples.jsonl, and a table in W&B."""
        with self.samples_path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        if self.wandb is not None and rows:
            import wandb

            table = wandb.Table(columns=list(SAMPLE_COLUMNS), data=[[r.get(c) for c in SAMPLE_COLUMNS] for r in rows])
            self.wandb.log({"samples": table}, step=int(rows[0]["step"]))
        if self.tb is not None and rows:
            text = "\n\n".join(f"**reward {r['reward']}** `{r['prompt']}` → `{r['response']}`" for r in rows)
            self.tb.add_text("samples", text, global_step=int(rows[0]["step"]))

    def rewind(self, step: int) -> None:
        """Back to `step` (the run restarted from that checkpoint): TensorBoard drops the later
        events, samples.jsonl the later samples; W&B ignores steps it already has."""
        if self.tb is not None:
            self.tb.close()
            self._open_tensorboard(step)
        self._cut_samples(step)

    def _cut_samples(self, step: int) -> None:
        if self.samples_path.is_file():
            kept = [line for line in self.samples_path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.samples_path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.teardown()  # its service process ends with the run, not at interpreter exit
            self.wandb = None


def sample_rows(step: int, policy_version: int, groups: list, n: int) -> list[dict]:
    """Up to `n` samples of a step, one per group (its first), for reading what the policy writes."""
    rows = []
    for group in groups[:n]:
        rollout, reward = group.rollouts[0], group.rewards[0]
        versions = rollout.versions or (-1,)
        rows.append({"step": step, "prompt": rollout.prompt, "response": rollout.response_text,
                     "answer": rollout.answer, "reward": _finite(reward.reward), "correct": bool(reward.correct),
                     "finish_reason": rollout.finish_reason, "policy_version": policy_version,
                     "min_version": min(versions), "max_version": max(versions),
                     "components": dict(reward.components)})
    return rows


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None
