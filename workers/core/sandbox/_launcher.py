"""The last step before untrusted code runs, executed as pid 1 and root of the sandbox's fresh
network, mount and pid namespaces (`unshare --net --mount --pid --fork --mount-proc`).

It makes every mount read-only except the work directory (so the only writable place is the
program's own temporary folder: not /tmp, /dev/shm, the repository or the data dir), then forks
the program: the child sets the resource limits, drops to the sandbox user (root mode), sets
no-new-privileges (no setuid binary can raise it again) and execs the interpreter; this process
stays pid 1, reaps orphans, and reports how the program ended on the status pipe (one JSON line:
{"exit": n}, {"signal": n} or {"refused": reason}). When it exits, the kernel kills every process
left in the namespace.

It runs by path (`python -I -S _launcher.py CONFIG_JSON`), so it uses only the standard library and
never imports the `workers` package. Any setup failure reports "refused": the sandbox fails closed.
"""
import ctypes
import json
import os
import re
import resource
import sys

REFUSED_EXIT = 125
WORK = "/tmp/sandbox"  # where the program's work dir appears inside the sandbox
PSEUDO_FILESYSTEMS = ("/proc", "/sys")

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND = 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
# Per-mount options kept on remount: inside a user namespace (rootless mode) the kernel refuses a
# remount that would clear nosuid/nodev/noexec or change the atime mode of an inherited mount.
KEPT_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _mount(source, target: str, flags: int, fstype=None, data=None) -> None:
    encode = lambda text: text.encode() if text else None  # noqa: E731
    if _libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _mounts() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) from /proc/self/mountinfo, parents before children."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append((point, set(fields[5].split(","))))
    return found


def _kept_flags(options: set[str]) -> int:
    flags = 0
    for name in options:
        flags |= KEPT_OPTIONS.get(name, 0)
    return flags


def confine_filesystem() -> None:
    """The host work dir (our cwd, set by the runner) appears at WORK, the only writable place.

    A fresh tiny tmpfs over /tmp holds the mount point, so the program sees the same path in every
    run (outputs and tracebacks never show the host's temporary folder) and the host's /tmp not at
    all. The bind source is ".", our cwd, which still reaches the host folder under the tmpfs."""
    _mount("tmpfs", "/tmp", MS_NOSUID | MS_NODEV | MS_NOEXEC, "tmpfs", "size=64k,mode=0755")
    os.mkdir(WORK)
    _mount(".", WORK, MS_BIND)
    for point, options in _mounts():
        if point == WORK or "ro" in options:
            continue
        try:
            _mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(options))
        except OSError:
            # Kernel pseudo-filesystems whose files only root may write (or, under /proc/self,
            # only the program's own settings): a host that refuses to remount one of them should
            # not lose the sandbox. Any other mount that stays writable refuses the run.
            if not any(point == top or point.startswith(top + "/") for top in PSEUDO_FILESYSTEMS):
                raise
    work_options = next(options for point, options in reversed(_mounts()) if point == WORK)
    _mount(None, WORK, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | _kept_flags(work_options))


def set_limits(limits: dict) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The soft CPU limit sends SIGXCPU; the hard one, a second later, SIGKILL for a program that
    # catches SIGXCPU.
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    # Set while still root (where it does not bind) so that it binds the sandbox user after the
    # drop below: the kernel counts every process of that user, threads included.
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))


def drop_privileges(uid, gid) -> None:
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary can raise the program's privileges again


def report(fd: int, **status) -> None:
    """One JSON line on the status pipe (atomic: far below PIPE_BUF)."""
    os.write(fd, (json.dumps(status) + "\n").encode())


def run_program(config: dict, status_fd: int) -> None:
    """In the forked child (pid 2): limits, uid drop, exec. Returns only on failure."""
    try:
        set_limits(config["limits"])
        drop_privileges(config["uid"], config["gid"])
        os.chdir(WORK)
        os.execve(config["argv"][0], config["argv"], config["env"])
    except BlockingIOError:
        report(status_fd, refused=f"the sandbox user already runs {config['limits']['nproc']} or more "
               "processes (process-count limit); try again when other sandboxed programs have finished")
    except Exception as exc:  # noqa: BLE001 - any setup failure refuses, with its reason
        report(status_fd, refused=f"sandbox setup failed: {exc}")


def main() -> None:
    config = json.loads(sys.argv[1])
    status_fd = config["status_fd"]
    os.set_inheritable(status_fd, False)  # the program never gets the status pipe
    try:
        confine_filesystem()
    except Exception as exc:  # noqa: BLE001
        report(status_fd, refused=f"sandbox setup failed: {exc}")
        os._exit(REFUSED_EXIT)
    child = os.fork()
    if child == 0:
        run_program(config, status_fd)
        os._exit(REFUSED_EXIT)
    # pid 1 of the namespace: reap every orphan until the program itself ends, report how it
    # ended (util-linux 2.38 `unshare` cannot re-raise a child's signal), then exit, which kills
    # whatever the program left running.
    while True:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(REFUSED_EXIT)
        if pid == child:
            if os.WIFSIGNALED(wait_status):
                report(status_fd, signal=os.WTERMSIG(wait_status))
            else:
                report(status_fd, exit=os.waitstatus_to_exitcode(wait_status))
            os._exit(0)


if __name__ == "__main__":
    main()
