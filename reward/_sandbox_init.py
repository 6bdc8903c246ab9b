"""Process 1 of a sandbox: a server, as root inside fresh network, pid and mount namespaces.

Started by reward/sandbox.py as `unshare -n -p -i -u -f --mount-proc python -I -S THIS STATUS_FD`.
Standard library only (it runs with -I -S, outside the venv). Messages are framed (8-byte
length, then `marshal`: the same interpreter writes and reads them; importing `json` here
would cost 5 ms a sandbox): the set-up and then one request per sample arrive on stdin, one
reply per message leaves on STATUS_FD.

Set-up: a fresh root that holds only the allow-listed host paths (the interpreter's prefix,
/usr, /lib*, /bin) read-only, a minimal /etc and /dev and its own /proc; this process
chroots into it and waits for requests.

Each request (a sample: files and one run per test) is served by a child forked *before* the
request is read, so this long-lived process never holds a sample's code, inputs or outputs
that a later sample's program (forked from memory like it) could find. The child takes a
mount and an IPC namespace of its own (a fresh size-limited tmpfs owned by the sample's uid
as working directory /tmp; SysV objects die with it), writes the files, and for each run
forks the program, which drops to the unprivileged uid with rlimits and no_new_privs and
runs `main.py` (in-process: see run_main), collects its stdout and stderr under the run's
wall-time and output limits, then SIGKILLs every process in the namespace but this server
and itself, and reaps them; so no run inherits another's processes. The child replies and
exits; its namespaces go with it. When stdin closes, or its starter dies (unshare's
--kill-child), this process exits, and as pid 1 takes everything left with it.
"""

import array
import ctypes
import fcntl
import marshal
import os
import resource
import selectors
import signal
import sys
import termios
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 38, 36
CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
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
        f.write("root:x:0:0::/:/bin/false\n")
    with open(ROOT + "/etc/group", "w") as f:
        f.write("root:x:0:\n")
    for dev in ("null", "zero", "full", "random", "urandom"):
        bind_readonly("/dev/" + dev, ROOT + "/dev/" + dev, writable=dev in ("null", "full"))
    os.makedirs(ROOT + "/proc")
    mount("proc", ROOT + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(ROOT + WORK)  # each request mounts its own working directory here
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
    """A namespace of mounts and SysV IPC for this request alone, its working directory in it."""
    if libc.unshare(CLONE_NEWNS | CLONE_NEWIPC) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS | CLONE_NEWIPC)")
    uid = spec["uid"]
    mount("tmpfs", WORK, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['work_mb']}m,mode=700,uid={uid},gid={uid}")
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
        deny_keyrings(KEYRING_FILTER[0])
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


# The kernel keeps a uid's keyrings after its processes die, so a program could leave data
# there for a later sample run under the same uid: add_key, request_key and keyctl fail with
# EPERM (a seccomp filter). Syscall numbers per architecture (AUDIT_ARCH_*).
KEYRING_SYSCALLS = {0xC000003E: (248, 249, 250), 0xC00000B7: (217, 218, 219)}  # x86_64, aarch64
X32_BIT = 0x40000000
KEYRING_FILTER = None  # (program, its instructions), built once by main()


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockProgram(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def keyring_filter():
    """The seccomp program (built once, applied in every program's process): the keyring
    syscalls (and x32-ABI calls, which would dodge the numbers) return EPERM; everything else
    is allowed."""
    machine = os.uname().machine
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(machine)
    if arch is None:
        raise OSError(f"no keyring filter for {machine}")
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    calls = KEYRING_SYSCALLS[arch]
    last = 6 + len(calls)  # the final deny; a jump's offset counts from the next instruction
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, deny),  # another ABI: deny everything
            (ld, 0, 0, 0), (jge, last - 5, 0, X32_BIT)]
    prog += [(jeq, last - 6 - i, 0, nr) for i, nr in enumerate(calls)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    filters = (SockFilter * len(prog))(*[SockFilter(*f) for f in prog])
    return SockProgram(len(prog), filters), filters  # the array must outlive the program that points at it


def deny_keyrings(program):
    """Apply keyring_filter()'s program to this process; needs no_new_privs, set just before."""
    if libc.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp filter")


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
    """SIGKILL every process in the namespace but this one and pid 1 (reap_all collects them)."""
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


def read_message(fd):
    """One framed message from `fd`; None at end of file."""
    head = read_exact(fd, 8)
    return None if head is None else marshal.loads(read_exact(fd, int.from_bytes(head, "little")) or b"")


def read_exact(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_message(fd, message):
    data = marshal.dumps(message)
    write_all(fd, len(data).to_bytes(8, "little") + data)


def serve_one(status_fd, listener):
    """In a child of the server: read one request, run it, reply. Never returns."""
    code = 0
    try:
        listener.close()
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # the programs' orphans come to us to reap
        request = read_message(0)
        request["status_fd"] = status_fd
        try:
            prepare_workdir(request)
        except BaseException as exc:  # noqa: BLE001
            write_message(status_fd, {"setup_error": f"{type(exc).__name__}: {exc}"})
        else:
            write_message(status_fd, {"runs": [run_one(request, run) for run in request["runs"]]})
    except BaseException:  # noqa: BLE001 - the host sees no reply and starts a new sandbox
        code = 1
    os._exit(code)


def main():
    global KEYRING_FILTER
    status_fd = int(sys.argv[1])
    os.set_inheritable(status_fd, False)
    try:
        build_root(read_message(0))
        KEYRING_FILTER = keyring_filter()
    except BaseException as exc:  # noqa: BLE001
        write_message(status_fd, {"setup_error": f"{type(exc).__name__}: {exc}"})
        return 1
    write_message(status_fd, {"ready": True})
    listener = selectors.DefaultSelector()
    listener.register(0, selectors.EVENT_READ)
    while True:
        listener.select()  # a request, or the end of stdin, is waiting
        if available(0) == 0:
            return 0  # readable with nothing to read: the host closed the pipe
        pid = os.fork()
        if pid == 0:
            serve_one(status_fd, listener)  # the child reads the request, not this process
        _, status = os.waitpid(pid, 0)
        kill_all()  # nothing runs between requests; whatever escaped the child dies here
        reap_all()
        if status != 0:
            return 1  # a half-read request would desynchronise the stream: the host starts anew


def available(fd):
    """Bytes waiting in the pipe `fd` (FIONREAD), without consuming them."""
    n = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, n)
    return n[0]


if __name__ == "__main__":
    sys.exit(main())
