"""Run untrusted Python (code a model wrote) in a separate, limited, isolated process.

Isolation `namespaces` (root, `unshare` and `setpriv` available — the default on our machines).
Each thread that runs code keeps one sandbox alive (reward/_sandbox_init.py: namespaces and
root made once, one request per sample, served by a child forked before the request is read);
  - network: a fresh network namespace with no interfaces up; every connect fails,
    127.0.0.1 included;
  - processes: a pid namespace of the sandbox's own; every process a test started is
    killed before the next test; the program cannot see or signal host processes; it runs
    as an unprivileged uid of its own (so RLIMIT_NPROC applies, which root ignores) with no
    capabilities, no_new_privs and a seccomp filter that closes the kernel keyrings (they
    outlive a uid's processes);
  - filesystem: an allow-listed root. The program sees only the interpreter's prefix, /usr,
    /bin, /sbin and /lib* (read-only binds of the host's), a minimal /etc (passwd, group,
    ld.so.cache, localtime), /dev/{null,zero,full,random,urandom}, its own /proc and a
    fresh tmpfs per sample (size-limited, owned by its uid) as working directory /tmp, in a
    mount namespace of the sample's own. Every other path (data, models, run directories,
    homes, shared mounts) does not exist for it;
  - SysV IPC: a namespace per sample (its objects die with the sample); hostname: its own;
  - lifetime: `unshare` runs under `setpriv --pdeathsig KILL`, so the sandbox dies with
    the thread that started it (a reward worker killed mid-run leaves nothing running);
  - environment: only PATH, LANG, HOME=/tmp and PYTHONDONTWRITEBYTECODE reach the program;
  - limits: wall time, CPU seconds, address space, processes, open files, file size,
    combined stdout+stderr size (the run is killed past it).
Isolation `rlimits` (fallback where namespaces cannot be made, e.g. not root): the same
rlimits, empty temp dir, clean environment and a process group killed at the end — but
NO network, pid or filesystem isolation, and RLIMIT_NPROC counts all of the user's
processes. `isolation_mode()` says which applies; every result records it.
"""

from __future__ import annotations

import json
import marshal
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

Status = Literal["ok", "timeout", "memory", "error", "killed", "output_limit"]
INIT = Path(__file__).with_name("_sandbox_init.py")
REPO = Path(__file__).resolve().parents[1]
# The host paths a sandboxed program sees (read-only), besides the interpreter's prefix: the
# system's programs and libraries. /etc only as a minimal copy; nothing else exists for it.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                "/etc/localtime")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
# setpriv: `unshare` dies with the thread that started it (and with it init, by --kill-child,
# and the program, by init's death), so a reward worker killed mid-run leaves nothing running.
# -n -p -i -u -m: network, pids, SysV IPC (its objects die with the namespace), hostname, mounts.
UNSHARE = ["setpriv", "--pdeathsig", "KILL", "unshare", "-n", "-p", "-i", "-u", "-f", "--mount-proc"]
UID_BASE = 100_000_000  # sandbox uids live far above any real account
UID_SLOTS = 256  # sandboxes one process may run at once (one per thread that scores code)
PID_LIMIT = 1 << 22  # the kernel's largest pid_max (PID_MAX_LIMIT)
_uid_lock = threading.Lock()
_uid_slots: set[int] = set()


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not a verdict about the program)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 2.0  # wall clock, from start-up to exit
    cpu_s: Optional[int] = None  # CPU seconds of the program; default ceil(timeout_s)
    memory_mb: int = 256  # address space per process
    max_processes: int = 32  # processes + threads of the sandbox uid
    max_output_bytes: int = 1 << 20  # stdout + stderr together
    max_file_mb: int = 16  # largest file the program may write
    max_open_files: int = 64
    work_mb: int = 64  # size of the tmpfs working directory

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "max_processes", "max_output_bytes", "max_file_mb",
                     "max_open_files", "work_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def cpu_seconds(self) -> int:
        return int(self.cpu_s) if self.cpu_s else max(1, int(-(-self.timeout_s // 1)))


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    exit_code: Optional[int]  # None when killed by a signal (or by us)
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float = 0.0
    signal: Optional[int] = None
    isolation: str = "namespaces"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@lru_cache(maxsize=1)
def isolation_mode() -> str:
    """'namespaces' when this process can create net+pid+mount namespaces and switch uid."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return "rlimits"
    if os.uname().machine not in ("x86_64", "aarch64"):
        return "rlimits"  # the keyring filter (seccomp) knows these two architectures' syscalls
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True)
    return "namespaces" if probe.returncode == 0 else "rlimits"


def require_isolation(allow_unisolated: bool) -> str:
    """This machine's isolation mode; an error unless it is `namespaces` or the user accepted less
    (reward.allow_unisolated_sandbox): the code verifier never downgrades silently."""
    mode = isolation_mode()
    if mode != "namespaces" and not allow_unisolated:
        raise SandboxError("the code verifier's sandbox cannot make namespaces here (it needs root and util-linux's "
                           "unshare and setpriv); its rlimits fallback isolates no network, processes or files. Run "
                           "the reward workers as root, or set reward.allow_unisolated_sandbox: true to accept that")
    return mode


def sandbox_isolation(spec) -> Optional[str]:
    """What summary.json records for a run's rewards (a RewardConfig): None without code to run."""
    return isolation_mode() if spec.uses_sandbox else None


@contextmanager
def _sandbox_uid():
    """A uid no other live sandbox on this host holds: the process id (unique among live
    processes) times UID_SLOTS plus a slot this process holds for the run. Reusing a uid after a
    run is safe: nothing owned by it outlives its sandbox (pid, IPC and mount namespaces die).
    Processes in different pid namespaces on one kernel (containers) can share a pid, so their
    sandboxes can share a uid: they still see nothing of each other (separate pid namespaces)
    but share one RLIMIT_NPROC budget."""
    with _uid_lock:
        slot = next((i for i in range(UID_SLOTS) if i not in _uid_slots), None)
        if slot is None:
            raise SandboxError(f"more than {UID_SLOTS} sandboxes at once in one process")
        _uid_slots.add(slot)
    try:
        yield UID_BASE + (os.getpid() % PID_LIMIT) * UID_SLOTS + slot
    finally:
        with _uid_lock:
            _uid_slots.discard(slot)


def _python() -> str:
    return os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable)


def run_python(source: str, stdin: str = "", files: Optional[dict[str, str]] = None,
               limits: SandboxLimits = SandboxLimits(), site_packages: bool = False) -> SandboxResult:
    """Run `source` as main.py with `stdin`; extra `files` (name -> text) sit beside it."""
    return run_python_many(source, [stdin], files, limits, site_packages)[0]


def run_python_many(source: str, stdins: list[str], files: Optional[dict[str, str]] = None,
                    limits: SandboxLimits = SandboxLimits(), site_packages: bool = False) -> list[SandboxResult]:
    """Run `source` once per stdin, each run a fresh process under `limits` (its own wall
    clock and output cap), all in one sandbox: the namespaces are made once, and everything
    a run leaves behind is killed before the next starts. One result per stdin, in order.

    The program gets the standard library only (`python -I -S`), unless `site_packages`:
    the interpreter's site hooks cost more than a short test (36 ms of a 47 ms start-up on
    our machines) and make a verdict depend on what is installed beside it."""
    files = {**(files or {}), "main.py": source}
    for name in files:
        if "/" in name or name.startswith("."):
            raise ValueError(f"sandbox file name {name!r} must be a plain name")
    if not stdins:
        return []
    argv = ["-I", "main.py"] if site_packages else ["-I", "-S", "main.py"]
    if isolation_mode() == "namespaces":
        return _run_namespaced(files, stdins, limits, argv)
    return [_run_rlimits(files, stdin, limits, argv) for stdin in stdins]


def run_file(path: str | Path, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    return run_python(Path(path).read_text(), stdin=stdin, limits=limits)


def _spec(files: dict[str, str], stdins: list[str], limits: SandboxLimits, argv: list[str], uid: int) -> dict:
    return {
        "files": files, "uid": uid, "python": _python(), "argv": argv,
        # The standard library only: the program runs in a fork of the sandbox's init (an
        # interpreter started the same way), not a fresh one (reward/_sandbox_init.py run_main).
        "in_process": "-S" in argv,
        "runs": [{"stdin": stdin, "timeout_s": limits.timeout_s} for stdin in stdins],
        "env": ENV, "work_mb": limits.work_mb, "max_output_bytes": limits.max_output_bytes,
        "limits": {"memory_mb": limits.memory_mb, "cpu_s": limits.cpu_seconds, "max_processes": limits.max_processes,
                   "max_open_files": limits.max_open_files, "max_file_mb": limits.max_file_mb},
    }


SETUP_GRACE_S = 10.0  # namespaces, mounts and tear-down around the runs' own limits
_local = threading.local()


class _Server:
    """One sandbox kept alive per thread (reward/_sandbox_init.py): the namespaces and the root
    are made once, then each sample is a request, served in a fresh mount and IPC namespace by a
    child that never shares memory with an earlier sample's. The sandbox dies with the thread
    that started it (setpriv --pdeathsig); after any failure it is replaced."""

    def __init__(self):
        python = _python()
        status_r, status_w = os.pipe()
        self.owner = os.getpid()
        self.proc = subprocess.Popen([*UNSHARE, "--kill-child=SIGKILL", python, "-I", "-S", str(INIT), str(status_w)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     pass_fds=(status_w,), start_new_session=True, env=ENV, cwd="/")
        os.close(status_w)
        self.replies = status_r
        os.set_blocking(self.proc.stderr.fileno(), False)
        allow = [*SYSTEM_PATHS, os.path.realpath(sys.base_prefix), os.path.dirname(python)]
        reply = self.ask({"allow": sorted(set(allow))}, SETUP_GRACE_S)
        if not reply.get("ready"):
            self.close()
            raise SandboxError(f"sandbox set-up failed: {reply.get('setup_error', reply)}")

    def ask(self, message: dict, timeout_s: float) -> dict:
        """Send one framed message, wait for the framed reply; SandboxError (and the server
        closed) when it does not come in time or the server died."""
        data = marshal.dumps(message)
        try:
            self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout_s
            head = self._read(8, deadline)
            return marshal.loads(self._read(int.from_bytes(head, "little"), deadline))
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            self.close()
            raise SandboxError(f"the sandbox gave no reply ({type(exc).__name__}: {exc}): {self.stderr()!r}") from None

    def _read(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                raise TimeoutError("deadline passed")
            chunk = os.read(self.replies, n - len(out))
            if not chunk:
                raise EOFError("the sandbox exited")
            out += chunk
        return bytes(out)

    def stderr(self) -> str:
        try:
            return (self.proc.stderr.read() or b"")[-500:].decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        """SIGKILL unshare: its --kill-child takes init, and init (pid 1) the whole namespace."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for closing in (self.proc.stdin.close, self.proc.stderr.close, lambda: os.close(self.replies)):
            try:
                closing()
            except OSError:
                pass
        if getattr(_local, "server", None) is self:
            _local.server = None


def _server() -> _Server:
    server = getattr(_local, "server", None)
    if server is None or server.owner != os.getpid() or server.proc.poll() is not None:
        server = _local.server = _Server()
    return server


def _run_namespaced(files: dict[str, str], stdins: list[str], limits: SandboxLimits,
                    argv: list[str]) -> list[SandboxResult]:
    # Each run's limits are enforced inside by init; this deadline only catches a stuck sandbox.
    deadline = len(stdins) * (limits.timeout_s + 1.0) + SETUP_GRACE_S
    with _sandbox_uid() as uid:
        report = _server().ask(_spec(files, stdins, limits, argv, uid), deadline)
    if "setup_error" in report:
        raise SandboxError(f"sandbox set-up failed: {report['setup_error']}")
    return [_verdict(run, limits, "namespaces") for run in report["runs"]]


def _collect(proc: subprocess.Popen, timeout_s: float, max_output: int):
    """The rlimits fallback's program: read stdout/stderr until both close, the deadline passes or
    the output overflows, then SIGKILL its process group. Returns (stdout, stderr, cut) with cut
    in (None, 'timeout', 'output_limit'). (The namespaced sandbox's init does this inside.)"""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline, cut = time.perf_counter() + timeout_s, None
    try:
        while sel.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                cut = "timeout"
                break
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                bufs[key.fd] += chunk
            if len(bufs[out_fd]) + len(bufs[err_fd]) > max_output:
                cut = "output_limit"
                break
    finally:
        sel.close()
        # Close our ends first: a writer blocked on a full pipe then fails instead of hanging.
        proc.stdout.close()
        proc.stderr.close()
        _signal(-proc.pid, signal.SIGKILL)  # its process group (start_new_session)
        proc.wait()
    out, err = (bytes(bufs[fd][:max_output]).decode("utf-8", "replace") for fd in (out_fd, err_fd))
    return out, err, cut


def _signal(pid: int, sig: int) -> None:
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _verdict(run: dict, limits: SandboxLimits, isolation: str) -> SandboxResult:
    code, sig, cpu, cut = run.get("exit_code"), run.get("signal"), float(run.get("cpu_s", 0.0)), run.get("cut")
    out, err = run.get("stdout", ""), run.get("stderr", "")
    if cut:
        status, code, sig = cut, None, None
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds - 0.05):
        status = "timeout"  # the CPU-time rlimit fired
    elif (code not in (0, None) or sig) and _out_of_memory(err):
        status = "memory"
    elif sig is not None:
        status = "killed"
    elif code != 0:
        status = "error"
    else:
        status = "ok"
    return SandboxResult(status, code, out, err, float(run.get("wall_s", 0.0)), cpu, sig, isolation)


def _out_of_memory(stderr: str) -> bool:
    # Python reports a failed allocation under RLIMIT_AS as MemoryError; C code as ENOMEM.
    tail = stderr[-2000:]
    return "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail


def _run_rlimits(files: dict[str, str], stdin: str, limits: SandboxLimits, argv: list[str]) -> SandboxResult:
    """Fallback without namespaces: see the module docstring for what is NOT isolated."""
    import resource

    def limit():
        for res, value in ((resource.RLIMIT_AS, limits.memory_mb << 20),
                           (resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_CORE, 0),
                           (resource.RLIMIT_NPROC, limits.max_processes),
                           (resource.RLIMIT_NOFILE, limits.max_open_files),
                           (resource.RLIMIT_FSIZE, limits.max_file_mb << 20)):
            resource.setrlimit(res, (value, value + 1 if res == resource.RLIMIT_CPU else value))

    with tempfile.TemporaryDirectory(prefix="tandem-sandbox-") as work:
        for name, text in files.items():
            Path(work, name).write_text(text)
        Path(work, ".stdin").write_text(stdin)
        t0 = time.perf_counter()
        with open(Path(work, ".stdin")) as stdin_f:
            proc = subprocess.Popen([_python(), *argv], stdin=stdin_f, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=work, env={**ENV, "HOME": work},
                                    preexec_fn=limit, start_new_session=True)
        out, err, cut = _collect(proc, limits.timeout_s, limits.max_output_bytes)
        rc = proc.returncode
        return _verdict({"exit_code": rc if rc >= 0 else None, "signal": -rc if rc < 0 else None, "cut": cut,
                         "stdout": out, "stderr": err, "wall_s": time.perf_counter() - t0}, limits, "rlimits")


def verdict_for_cli(path: str, timeout_s: float, memory_mb: int, stdin: str = "") -> SandboxResult:
    return run_file(path, stdin=stdin, limits=replace(SandboxLimits(), timeout_s=timeout_s, memory_mb=memory_mb))
