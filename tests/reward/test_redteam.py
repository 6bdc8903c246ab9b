"""The code verifier against a red-team corpus (tests/reward/redteam/*.py): solutions that try to
score without solving, each naming its attack class and expected score on its first line.

Every attack must score 0 and leave nothing behind (no process of a sandbox uid, no SysV object
on the host); the honest solution must score 1. The reference's expected values are distinctive
(5555, 'token'), so an attack that found them anywhere it can reach would score.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from reward.sandbox import isolation_mode
from reward.verifiers import VERIFIERS
from tests.conftest import requires
from tests.reward.test_sandbox import sandbox_processes

CORPUS = sorted((Path(__file__).parent / "redteam").glob("*.py"))
REFERENCE = json.dumps({"asserts": ["assert add(1234, 4321) == 5555", "assert add('to', 'ken') == 'token'",
                                    "assert add(40, 2) == 42"], "timeout_s": 2})

needs_namespaces = requires(isolation_mode() == "namespaces",
                            "the red-team corpus needs the namespace sandbox (root + unshare); this host has only rlimits")


def expected_score(path: Path) -> float:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <score> (<attack>)'"
    return float(first.split(":", 1)[1].split()[0])


def sysv_objects() -> set[str]:
    """The host's SysV shared memory segments, semaphore sets and message queues (key and id)."""
    found = set()
    for kind in ("shm", "sem", "msg"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        found |= {f"{kind} {' '.join(line.split()[:2])}" for line in lines}
    return found


def test_corpus_has_attacks_and_an_honest_solution():
    scores = [expected_score(p) for p in CORPUS]
    assert scores.count(1.0) >= 1 and scores.count(0.0) >= 7


@pytest.fixture(scope="module")
def training_data_on_a_mount():
    """The training rows, answers included, in a folder at the filesystem's root (as a shared
    mount such as /data or /lustre would be): readable by anyone on the host."""
    folder = Path(f"/tandem-redteam-data-{os.getpid()}")
    folder.mkdir(mode=0o755)
    (folder / "train.jsonl").write_text(json.dumps({"prompt": "write add", "answer": REFERENCE}) + "\n")
    (folder / "train.jsonl").chmod(0o644)
    yield folder
    shutil.rmtree(folder)


@needs_namespaces
@pytest.mark.parametrize("solution", CORPUS, ids=[p.stem for p in CORPUS])
def test_attack_scores_nothing_and_leaves_nothing(solution: Path, training_data_on_a_mount):
    before = sysv_objects()
    score = VERIFIERS.get("code")(f"```python\n{solution.read_text()}\n```", REFERENCE)
    assert score == expected_score(solution), (solution.name, score)
    assert sandbox_processes() == []
    assert sysv_objects() - before == set()


SLEEPER = json.dumps({"asserts": ["assert add(1, 2) == 3"], "timeout_s": 60})
WORKER = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from reward.verifiers import VERIFIERS
print("scoring", flush=True)
VERIFIERS.get("code")("```python\\nimport os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(600)\\n"
                      "def add(a, b):\\n    time.sleep(600)\\n```", {SLEEPER!r})
"""


@needs_namespaces
def test_a_killed_reward_worker_leaves_no_sandbox_behind():
    """Survivors: the process scoring a sample (a reward worker) is SIGKILLed while the program,
    and a child it detached into its own session, are still running; within seconds nothing of the
    sandbox is left (unshare, its init, the program, the child)."""
    import subprocess
    import sys
    import time

    import psutil

    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE)
    try:
        assert worker.stdout.readline().strip() == b"scoring"
        deadline = time.time() + 30
        while len(sandbox_processes()) < 2 and time.time() < deadline:  # the program and its child
            time.sleep(0.05)
        assert len(sandbox_processes()) == 2, sandbox_processes()
        tree = psutil.Process(worker.pid).children(recursive=True)
        assert len(tree) >= 4  # setpriv/unshare, init, the program, its child
    finally:
        worker.kill()
        worker.wait()
    deadline = time.time() + 10
    while (sandbox_processes() or any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)) \
            and time.time() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


EARLIER = """
import ctypes
ctypes.CDLL(None).shmget(0x7A4D0002, 4096, 0o1000 | 0o666)
open("/tmp/leftover", "w").write("SECRET-" + "FILE-5d1e")
print("SECRET-" + "OUTPUT-91c2")  # SECRET-SOURCE-7f3a
"""
LATER = """
import ctypes, json, os, re
mine = "SELF-" + "MARK-" + str(os.getpid())  # a positive control: the scan must find this
found = set()
with open("/proc/self/maps") as maps:  # every anonymous region: where the interpreter's objects live
    for line in maps:
        fields = line.split()
        if "r" not in fields[1] or (len(fields) > 5 and fields[5] not in ("[heap]", "[stack]")):
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        data = ctypes.string_at(lo, hi - lo)
        found |= {m.decode() for m in re.findall(rb"SECRET-[A-Z]+-[0-9a-f]{4}|SELF-MARK-[0-9]+", data)}
print(json.dumps({"memory": sorted(found), "mine": mine, "file": os.path.exists("/tmp/leftover"),
                  "shm": ctypes.CDLL(None).shmget(0x7A4D0002, 0, 0)}))
"""


@needs_namespaces
def test_a_sample_finds_nothing_of_an_earlier_sample():
    """Samples share one long-lived sandbox per worker thread: a later sample's program, scanning
    its own memory (a fork of the sandbox's server, like the earlier one's: /proc/self/mem is closed
    to it, its address space is not), its working directory and SysV IPC, finds neither the
    earlier sample's code nor its output nor its files."""
    from reward.sandbox import run_python

    assert run_python(EARLIER).stdout == "SECRET-OUTPUT-91c2\n"
    later = run_python(LATER, stdin="SECRET-" + "STDIN-ab12")
    assert later.status == "ok", later.stderr
    seen = json.loads(later.stdout)
    # The scan works: it finds what the program made and what it inherited from its own request.
    assert seen["mine"] in seen["memory"] and "SECRET-STDIN-ab12" in seen["memory"]
    assert [m for m in seen["memory"] if m.startswith("SECRET-") and m != "SECRET-STDIN-ab12"] == []
    assert seen["file"] is False and seen["shm"] == -1
