"""Live progress: a rich bar (step, reward, accuracy, samples/s, ETA) on a terminal, plain lines otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn


class Progress:
    def __init__(self, enabled: bool, log=print):
        self.enabled = enabled
        self.log = log
        self.console = Console()
        self.bar = None
        self.eval_acc = float("nan")

    def start(self, total_steps: int, initial_accuracy: float) -> None:
        self.eval_acc = initial_accuracy
        self.every = max(1, total_steps // 20)  # plain-line mode: about 20 lines per run
        self.log(f"held-out accuracy before training: {initial_accuracy:.1%}")
        if not self.enabled or not self.console.is_terminal:
            return
        self.bar = RichProgress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
            TextColumn("reward {task.fields[reward]:.3f}  acc {task.fields[acc]:.1%}  "
                       "eval {task.fields[eval]:.1%}  {task.fields[sps]:.1f} samples/s"),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total_steps, reward=0.0, acc=0.0, eval=initial_accuracy, sps=0.0)

    def update(self, step: int, row: dict) -> None:
        self.eval_acc = row.get("eval_accuracy", self.eval_acc)
        if self.bar is not None:
            self.bar.update(self.task, completed=step, reward=row["reward_mean"], acc=row["accuracy"],
                            eval=self.eval_acc, sps=row["samples_per_s"])
        elif self.enabled and (step % self.every == 0 or "eval_accuracy" in row):
            evaluated = f" eval {row['eval_accuracy']:.1%}" if "eval_accuracy" in row else ""
            self.log(f"step {step:4d} reward {row['reward_mean']:.3f} acc {row['accuracy']:.1%}{evaluated} "
                     f"{row['samples_per_s']:.1f} samples/s ({row['step_s']:.2f} s)")

    def finish(self, final_accuracy: float) -> None:
        self.stop()
        self.log(f"held-out accuracy after training: {final_accuracy:.1%}")

    def stop(self) -> None:
        """End the live display (the run is over, or restarts with a new one)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
