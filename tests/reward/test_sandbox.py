"""The sandbox against a hostile corpus (tests/reward/hostile/*.py, each naming its verdict).

Each program runs under small limits; the test checks the verdict, that it came within
its limit, that nothing of the sandbox's is left running, and that the host (this test
process, a sentinel process, a loopback server, host files) is unaffected.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reward.sandbox import REPO, UID_BASE, SandboxLimits, isolation_mode, run_python
from tests.conftest import requires

HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.py"))
LIMITS = SandboxLimits(timeout_s=3.0, cpu_s=1, memory_mb=256, max_processes=16, max_output_bytes=64 << 10,
                       max_file_mb=4)
SLACK_S = 3.0  # generous: start-up on a loaded 2-core machine plus tear-down (wall limit 3 s: an
# allocation loop must meet the memory limit before the wall clock, even on a loaded machine)
SECRET = "tandem-test-secret-4f1b9c"

needs_namespaces = requires(isolation_mode() == "namespaces",
                            "the hostile corpus needs the namespace sandbox (root + unshare); this host has only rlimits")


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <status>'"
    return first.split(":", 1)[1].strip()


def sandbox_processes() -> list[str]:
    """Host processes running as a sandbox uid (there must be none between runs)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if uid >= UID_BASE:
            found.append(f"{status.parent.name} uid={uid}")
    return found


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A loopback server, a sentinel process and a host directory the corpus attacks."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    target = tmp_path_factory.mktemp("host-target")
    os.environ["TANDEM_SANDBOX_TEST_SECRET"] = SECRET
    yield {"server": server, "sentinel": sentinel, "dir": target}
    os.environ.pop("TANDEM_SANDBOX_TEST_SECRET", None)
    sentinel.kill()
    sentinel.wait()
    server.close()


def test_corpus_covers_every_outcome():
    assert {expected(p) for p in HOSTILE} >= {"ok", "timeout", "memory", "error", "killed", "output_limit"}


@needs_namespaces
@pytest.mark.parametrize("program", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_hostile_program(program: Path, host):
    source = (program.read_text().replace("@@HOST_DIR@@", str(host["dir"])).replace("@@REPO@@", str(REPO))
              .replace("@@PORT@@", str(host["server"].getsockname()[1])).replace("@@TEST_PID@@", str(os.getpid())))
    t0 = time.perf_counter()
    result = run_python(source, limits=LIMITS)
    elapsed = time.perf_counter() - t0
    assert result.status == expected(program), (result.status, result.stderr[-600:])
    assert elapsed < LIMITS.timeout_s + SLACK_S
    assert len(result.stdout) + len(result.stderr) <= 2 * LIMITS.max_output_bytes
    # nothing left running, the host untouched
    assert sandbox_processes() == []
    assert host["sentinel"].poll() is None
    assert list(host["dir"].iterdir()) == []
    assert not (REPO / "PWNED").exists() and not Path("/etc/tandem-pwned").exists()
    with pytest.raises(BlockingIOError):
        host["server"].accept()  # no connection ever reached the loopback server
    assert SECRET not in result.stdout + result.stderr


@needs_namespaces
def test_environment_and_filesystem_view():
    probe = """
import json, os
print(json.dumps({"env": sorted(os.environ), "uid": os.getuid(), "cwd": os.getcwd(),
                  "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), "pid": os.getpid(),
                  "cwd_files": sorted(os.listdir(".")), "root": os.listdir("/root"), "top": sorted(os.listdir("/")),
                  "repo": os.listdir(%r) if os.path.isdir(%r) else None, "net": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])}))
""" % (str(REPO), str(REPO))
    result = run_python(probe, files={"data.txt": "given"}, limits=LIMITS)
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    assert seen["env"] == ["HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE"]
    assert seen["uid"] >= UID_BASE and seen["cwd"] == "/tmp"
    # A pid namespace of its own: the sandbox's server (pid 1), this sample's child of it, the program.
    assert len(seen["procs"]) == 3 and seen["procs"][0] == 1 and seen["pid"] in seen["procs"], seen["procs"]
    assert seen["cwd_files"] == ["data.txt", "main.py"]  # an empty working directory plus what we gave it
    assert seen["repo"] in ([], None) and ".ssh" not in seen["root"]  # hidden (or its parent is)
    assert seen["net"] == ["lo"]  # a network namespace of its own, loopback down
    # An allow-listed root: system folders, the interpreter's prefix (under /root here), nothing else.
    prefix_top = os.path.realpath(sys.base_prefix).split("/")[1]
    assert set(seen["top"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "tmp",
                                prefix_top}, seen["top"]


def test_ok_program_gets_stdin_and_exit_code():
    result = run_python("import sys\nprint(sum(map(int, sys.stdin.read().split())))\nsys.exit(3)",
                        stdin="1 2 3\n", limits=LIMITS)
    assert (result.status, result.exit_code, result.stdout) == ("error", 3, "6\n")
    ok = run_python("print('hi')", limits=LIMITS)
    assert (ok.status, ok.exit_code, ok.stdout, ok.stderr) == ("ok", 0, "hi\n", "")
    assert ok.isolation == isolation_mode()


def test_limits_are_validated():
    with pytest.raises(ValueError, match="SandboxLimits.memory_mb"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError, match="plain name"):
        run_python("pass", files={"../x.py": ""})


def test_cli_prints_a_json_verdict(tmp_path):
    program = tmp_path / "loop.py"
    program.write_text("print('started', flush=True)\nwhile True: pass\n")
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "sandbox", "run", str(program), "--timeout", "1",
                          "--memory-mb", "128"], capture_output=True, text=True, cwd=REPO, timeout=60)
    verdict = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert verdict["status"] == "timeout" and verdict["stdout"] == "started\n"
    assert set(verdict) >= {"status", "exit_code", "stdout", "stderr", "wall_s"}
    assert verdict["wall_s"] < 1 + SLACK_S
    assert sandbox_processes() == []


def test_signal_numbers_are_reported():
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", limits=LIMITS)
    assert (result.status, result.signal, result.exit_code) == ("killed", signal.SIGTERM, None)


@needs_namespaces
def test_concurrent_sandboxes_never_share_a_uid():
    """Four threads of one process run sandboxes at once, twice: each run's uid differs from every
    other run alive at the same time, and all are sandbox uids of this process's range."""
    from concurrent.futures import ThreadPoolExecutor

    from reward.sandbox import UID_SLOTS

    probe = "import os, time\nprint(os.getuid(), flush=True)\ntime.sleep(0.5)"
    with ThreadPoolExecutor(4) as pool:
        for _ in range(2):
            uids = [int(r.stdout) for r in pool.map(lambda _: run_python(probe, limits=LIMITS), range(4))]
            assert len(set(uids)) == 4, uids
            base = UID_BASE + os.getpid() * UID_SLOTS
            assert all(base <= u < base + UID_SLOTS for u in uids), uids


@needs_namespaces
def test_kernel_keyrings_are_closed():
    """A uid's keyrings outlive its processes, so a program could leave data there for a later
    sample run under the same uid: add_key, request_key and keyctl fail with EPERM."""
    import platform

    calls = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
    probe = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for nr in {calls!r}:
    print(libc.syscall(nr, b"user", b"note", b"42", 2, -4), ctypes.get_errno())
print(os.getpid() > 1)
"""
    result = run_python(probe, limits=LIMITS)
    assert result.stdout.split("\n") == ["-1 1", "-1 1", "-1 1", "True", ""], result.stdout + result.stderr


@needs_namespaces
def test_the_python_tool_runs_in_the_sandbox_and_its_failures_become_observations():
    """rollout.env 'tool_use' with tools [python] and rollout.env_plugins [reward.tools]."""
    import reward.tools  # noqa: F401  (registers `python`)
    from rollout.envs.tool_use import tool_use

    env = tool_use("", "", tools=["python"], call_format="json", tool_timeout_s=10.0,
                   tool_options={"python": {"timeout_s": 2.0}})
    call = '<tool_call>{{"name": "python", "arguments": {{"code": {}}}}}</tool_call>'.format
    ok = env.step(call('"print(sum(range(10)))"'))
    assert (ok.observation, ok.tool_failures) == ("45\n", 0)
    looped = env.step(call('"while True: pass"'))
    assert looped.tool_failures == 1 and looped.observation == "error: timed out after 2 s" and looped.tool_seconds < 5
    network = env.step(call('"import socket; socket.create_connection((\'127.0.0.1\', 22), timeout=1)"'))
    assert network.tool_failures == 1 and network.observation.startswith("error: OSError")  # no network there
