"""Verifiers with controlled misbehaviour, imported by pool workers through `plugins`."""

import os
import time
from pathlib import Path

from reward.verifiers import VERIFIERS


@VERIFIERS.register("test_hang", "hangs (sleeps) when the response is 'hang'; else 1.0")
def hang(response: str, answer: str) -> float:
    if response == "hang":
        time.sleep(60)
    return 1.0


@VERIFIERS.register("test_slow_first", "hangs on the first call per marker file, answers 1.0 after")
def slow_first(response: str, answer: str, marker: str = "") -> float:
    if not Path(marker).exists():
        Path(marker).write_text("seen")
        time.sleep(60)
    return 1.0


@VERIFIERS.register("test_crash", "kills its worker process when the response is 'die'")
def crash(response: str, answer: str) -> float:
    if response == "die":
        os._exit(1)
    return 1.0


@VERIFIERS.register("test_sleep", "sleeps 50 ms, returns 1.0 (load for autoscaling)")
def sleep50(response: str, answer: str) -> float:
    time.sleep(0.05)
    return 1.0


@VERIFIERS.register("test_pid", "returns this worker's process id (to count distinct workers)")
def pid(response: str, answer: str) -> float:
    return float(os.getpid())
