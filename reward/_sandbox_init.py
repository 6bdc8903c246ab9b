"""Process 1 of a sandbox: runs as root inside fresh network, pid and mount namespaces.

Started by reward/sandbox.py as `unshare -n -p -f --mount-proc python -I -S THIS STATUS_FD`,
with its spec on stdin. Standard library only (it runs with -I -S, outside the venv). Spec and
report travel in `marshal` format (the same interpreter writes and reads them; importing `json`
here would cost 5 of a short sample's 50 ms).

It (1) builds a fresh root that holds only the allow-listed host paths (the interpreter's
prefix, /usr, /lib*, /bin), read-only, a minimal /etc and /dev, its own /proc and a fresh
size-limited tmpfs owned by the sandbox uid as the working directory /tmp, and chroots
into it; (2) writes the program's files there; (3) for each run of the spec (one per test: the same program with
its own stdin), forks the program, which drops to an unprivileged uid with rlimits and
no_new_privs before exec, collects its stdout and stderr under the run's wall-time and
output limits, and then SIGKILLs everything left in the namespace and reaps it, so no run
inherits another's processes; (4) reports every run's wait status and output on STATUS_FD
and exits, and its exit as pid 1 makes the kernel SIGKILL anything still there. One
namespace set-up serves all the runs of a sample: that set-up, not the program, is most of
a short test's cost.
"""

import ctypes
import marshal
import os
import resource
import selectors
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
WORK = "/tmp"  # the working directory, inside the new root
ROOT = "/tmp"  # where the new root is built (the host's /tmp, covered by it in this namespace)

libc = ctypes.CDLL(None, use_errno=True)


def mount(source, target, fstype, flags, data=None):
    args = [a.encode() if isinstance(a, str) else a for a in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def build_root(spec):
    """A fresh root holding only the allow-listed paths (read-only binds of the host's), a
    minimal /etc and /dev, a fresh /proc and the working directory; init then chroots into it.
    Every other host path (data, models, runs, homes, shared mounts) does not exist there."""
    uid = spec["uid"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    mount("tmpfs", ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in spec["allow"]:
        if os.path.islink(path):  # /lib -> usr/lib on merged-/usr systems
            os.makedirs(ROOT + os.path.dirname(path), exist_ok=True)
            os.symlink(os.readlink(path), ROOT + path)
        elif os.path.exists(path):
            bind_readonly(path, ROOT + path)
    os.makedirs(ROOT + "/etc", exist_ok=True)
    with open(ROOT + "/etc/passwd", "w") as f:
        f.write(f"root:x:0:0::/:/bin/false\nsandbox:x:{uid}:{uid}::/tmp:/bin/false\n")
    with open(ROOT + "/etc/group", "w") as f:
        f.write(f"root:x:0:\nsandbox:x:{uid}:\n")
    for dev in ("null", "zero", "full", "random", "urandom"):
        bind_readonly("/dev/" + dev, ROOT + "/dev/" + dev, writable=dev in ("null", "full"))
    os.makedirs(ROOT + "/proc")
    mount("proc", ROOT + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(ROOT + WORK)
    mount("tmpfs", ROOT + WORK, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['work_mb']}m,mode=700,uid={uid},gid={uid}")
    mount(None, ROOT, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    os.chroot(ROOT)
    os.chdir("/")


def bind_readonly(source, target, writable=False):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").close()
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if writable else MS_RDONLY))


def prepare_workdir(spec):
    uid = spec["uid"]
    for name, text in spec["files"].items():
        path = os.path.join(WORK, name)
        with open(path, "w") as f:
            f.write(text)
        os.chown(path, uid, uid)


def stdin_file(text):
    """Standard input from an unlinked file, so a large input never blocks on a pipe."""
    path = os.path.join(WORK, ".stdin")
    with open(path, "w") as f:
        f.write(text)
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    return fd


def exec_program(spec, stdin_fd, out_w, err_w):
    """In the forked child: drop privileges, apply limits, exec. Never returns."""
    lim, uid = spec["limits"], spec["uid"]
    try:
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # all capabilities go with root; the uid owns nothing outside WORK
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot give them back
        for res, value in ((resource.RLIMIT_AS, lim["memory_mb"] << 20), (resource.RLIMIT_CPU, lim["cpu_s"]),
                           (resource.RLIMIT_NPROC, lim["max_processes"]), (resource.RLIMIT_CORE, 0),
                           (resource.RLIMIT_NOFILE, lim["max_open_files"]),
                           (resource.RLIMIT_FSIZE, lim["max_file_mb"] << 20)):
            # cpu: SIGXCPU at the soft limit, SIGKILL one second later if it is caught
            hard = value + 1 if res == resource.RLIMIT_CPU else value
            resource.setrlimit(res, (value, hard))
        os.chdir(WORK)
        if spec["in_process"]:
            os._exit(run_main(os.path.join(WORK, "main.py"), spec["env"]))
        os.execve(spec["python"], [spec["python"], *spec["argv"]], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - report, never fall back into init's code
        os.write(2, f"sandbox: cannot start the program: {exc}\n".encode())
    os._exit(126)


def run_main(path, env):
    """`python -I -S main.py` inside this forked child, which already is such an interpreter
    (this init runs with -I -S): 3 ms a test instead of 8 for a fresh one. What the program
    sees is what a fresh interpreter would give it — a new __main__ module, the environment,
    argv, UTF-8 standard streams; its non-daemon threads joined and atexit handlers run at
    the end; the exit status of SystemExit or 1 with a traceback — plus the few standard
    modules init had imported (nothing of the host: init holds only this sample's inputs).
    Returns the exit status."""
    import io
    import types

    os.environ.clear()
    os.environ.update(env)
    sys.argv = [path]
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), "utf-8", "surrogateescape")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), "utf-8", "surrogateescape")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), "utf-8", "backslashreplace", line_buffering=True)
    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__ = path, __builtins__
    sys.modules["__main__"] = main
    try:
        with open(path) as f:
            code = compile(f.read(), path, "exec")
        exec(code, main.__dict__)
        status = 0
    except SystemExit as exc:
        status = exit_status(exc.code)
    except BaseException as exc:  # noqa: BLE001 - what the interpreter would print (without this frame)
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        status = 1
    return finish(status)


def exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def finish(status):
    """What an interpreter does on the way out: join threads, run atexit, flush the streams."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except SystemExit as exc:
        status = exit_status(exc.code)
    except BaseException:  # noqa: BLE001
        status = status or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or broken stream: nothing more to say
            status = status or 120
    return status


def collect(pid, out_r, err_r, timeout_s, max_output):
    """Read the run's output until it exits and its pipes close, its deadline passes or its
    output overflows. Returns (stdout, stderr, wait status or None, cpu_s, cut)."""
    pidfd = os.pidfd_open(pid)
    bufs = {out_r: bytearray(), err_r: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in (out_r, err_r, pidfd):
        sel.register(fd, selectors.EVENT_READ)
    deadline, cut, status, cpu = time.monotonic() + timeout_s, None, None, 0.0
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            cut = "timeout"
            break
        for key, _ in sel.select(timeout=left):
            if key.fd == pidfd:
                sel.unregister(pidfd)
                _, status, usage = os.wait4(pid, 0)
                cpu = usage.ru_utime + usage.ru_stime
                kill_all()  # leftovers would hold the pipes open; they die with the run
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                continue
            bufs[key.fd] += chunk
        if len(bufs[out_r]) + len(bufs[err_r]) > max_output:
            cut = "output_limit"
            break
    sel.close()
    os.close(pidfd)
    if status is None:  # cut: the run is killed; its status no longer matters
        kill_all()
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
    return bytes(bufs[out_r][:max_output]), bytes(bufs[err_r][:max_output]), status, cpu, cut


def kill_all():
    """SIGKILL every process in the namespace but this one, and reap the orphans among them."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing was left


def reap_all():
    while True:
        try:
            os.wait4(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def run_one(spec, run):
    stdin_fd = stdin_file(run["stdin"])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (out_r, err_r, spec["status_fd"]):
            os.close(fd)
        exec_program(spec, stdin_fd, out_w, err_w)
    for fd in (stdin_fd, out_w, err_w):
        os.close(fd)
    out, err, status, cpu, cut = collect(pid, out_r, err_r, run["timeout_s"], spec["max_output_bytes"])
    os.close(out_r)
    os.close(err_r)
    kill_all()
    reap_all()
    return {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "cpu_s": cpu, "cut": cut,
            "wall_s": time.monotonic() - t0,
            "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main():
    status_fd = int(sys.argv[1])
    os.set_inheritable(status_fd, False)
    try:
        spec = marshal.loads(sys.stdin.buffer.read())
        spec["status_fd"] = status_fd
        build_root(spec)
        prepare_workdir(spec)
    except BaseException as exc:  # noqa: BLE001
        write_all(status_fd, marshal.dumps({"setup_error": f"{type(exc).__name__}: {exc}"}))
        return 1
    reports = [run_one(spec, run) for run in spec["runs"]]
    write_all(status_fd, marshal.dumps({"runs": reports}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
