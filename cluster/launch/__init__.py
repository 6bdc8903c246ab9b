"""Launchers: run a recipe somewhere else than this process.

- `ray_job`: submit to a running Ray cluster's job API (`ray job submit`), status/logs/stop.
- `slurm`: write (and optionally sbatch) a script that starts a Ray cluster over the job's
  nodes and runs the recipe on it.
- `kuberay`: write a KubeRay `RayJob` manifest (plus the recipe as a ConfigMap).

Every backend runs the same thing in the end: `python -m cluster.cli run RECIPE OVERRIDES
cluster.address=...`, i.e. the very code path `tandem run` takes on a laptop.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from cluster.config import Config, load_config

# The source tree that holds cluster/, rollout/, ...: what a Ray job uploads as working dir.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(RuntimeError):
    """A submission that cannot go ahead; the message says why and what to change."""


@dataclass(frozen=True)
class Job:
    """What to run: a recipe plus overrides, validated here before anything is submitted."""

    recipe: Path
    overrides: tuple[str, ...]
    cfg: Config

    @classmethod
    def load(cls, recipe: str | Path, overrides: list[str] | None = None) -> "Job":
        from cluster.placement import build_plan
        from cluster.shapes import learner_options

        cfg = load_config(recipe, overrides)
        learner_options(cfg)  # batch-shape errors are caught on the laptop, not on the cluster
        build_plan(cfg)
        return cls(Path(recipe), tuple(overrides or ()), cfg)


def run_args(recipe: str, overrides: tuple[str, ...] | list[str]) -> str:
    """`-m cluster.cli run RECIPE OVERRIDES`, shell-quoted: each backend puts its python in front
    and `cluster.address=...` behind. Runs the shipped code via `-m` (not whatever `tandem`
    happens to be installed on the cluster)."""
    return " ".join(shlex.quote(a) for a in ["-m", "cluster.cli", "run", recipe, *overrides])
