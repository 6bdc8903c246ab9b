"""Process 1 of a sandbox: runs as root inside fresh network, pid and mount namespaces.

Started by reward/sandbox.py as `unshare -n -p -f --mount-proc python -I -S THIS STATUS_FD`,
with a JSON spec on stdin. Standard library only (it runs with -I -S, outside the venv).

It (1) hides host directories behind read-only tmpfs mounts, keeping the interpreter's
prefix visible; (2) mounts a fresh size-limited tmpfs owned by the sandbox uid as the
working directory /tmp; (3) forks the program, which drops to an unprivileged uid with
rlimits and no_new_privs before exec; (4) waits for it, reaping orphans as init must;
(5) reports the wait status on STATUS_FD and exits, and its exit as pid 1 makes the
kernel SIGKILL everything left in the namespace (background processes cannot outlive it).
"""

import ctypes
import json
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS = 38
WORK = "/tmp"

libc = ctypes.CDLL(None, use_errno=True)


def mount(source, target, fstype, flags, data=None):
    args = [a.encode() if isinstance(a, str) else a for a in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def hide_host_dirs(masks, keeps):
    """Cover each mask with an empty read-only tmpfs; re-expose `keeps` under it read-only."""
    kept = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in keeps}
    for mask in masks:
        if not os.path.isdir(mask) or os.path.islink(mask):
            continue
        mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        for path, fd in kept.items():
            if path.startswith(mask.rstrip("/") + "/"):
                os.makedirs(path, exist_ok=True)
                mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
                mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
        mount(None, mask, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for fd in kept.values():
        os.close(fd)


def prepare_workdir(spec):
    uid = spec["uid"]
    mount("tmpfs", WORK, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['work_mb']}m,mode=700,uid={uid},gid={uid}")
    for name, text in spec["files"].items():
        path = os.path.join(WORK, name)
        with open(path, "w") as f:
            f.write(text)
        os.chown(path, uid, uid)
    # Standard input comes from an unlinked file, so a large input never blocks on a pipe.
    stdin_path = os.path.join(WORK, ".stdin")
    with open(stdin_path, "w") as f:
        f.write(spec["stdin"])
    fd = os.open(stdin_path, os.O_RDONLY)
    os.unlink(stdin_path)
    return fd


def exec_program(spec, stdin_fd):
    """In the forked child: drop privileges, apply limits, exec. Never returns."""
    lim, uid = spec["limits"], spec["uid"]
    try:
        os.dup2(stdin_fd, 0)
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
        os.execve(spec["python"], [spec["python"], *spec["argv"]], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - report, never fall back into init's code
        os.write(2, f"sandbox: cannot start the program: {exc}\n".encode())
    os._exit(126)


def wait_main(pid):
    """Reap every child (orphans are reparented to us); return the main program's status."""
    while True:
        try:
            got, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            raise RuntimeError("main program vanished") from None
        except InterruptedError:
            continue
        if got == pid:
            return status, usage.ru_utime + usage.ru_stime


def main():
    status_fd = int(sys.argv[1])
    os.set_inheritable(status_fd, False)
    try:
        spec = json.loads(sys.stdin.read())
        hide_host_dirs(spec["masks"], spec["keeps"])
        stdin_fd = prepare_workdir(spec)
    except BaseException as exc:  # noqa: BLE001
        os.write(status_fd, json.dumps({"setup_error": f"{type(exc).__name__}: {exc}"}).encode())
        return 1
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        exec_program(spec, stdin_fd)
    os.close(stdin_fd)
    status, cpu_s = wait_main(pid)
    report = {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
              "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "cpu_s": cpu_s}
    os.write(status_fd, json.dumps(report).encode())
    try:
        os.kill(-1, signal.SIGKILL)  # everything else in the namespace; our exit would do it too
    except ProcessLookupError:
        pass  # nothing was left
    return 0


if __name__ == "__main__":
    sys.exit(main())
