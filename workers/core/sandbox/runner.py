"""Run untrusted Python (model-written code, the Playground's Python tool) in a throwaway sandbox.

One run = one `unshare` process tree in fresh network, mount and pid namespaces:

    unshare --net --mount --pid --fork --kill-child --mount-proc  <python> -I -S _launcher.py CONFIG
      _launcher.py, pid 1 and root of the namespaces: every mount read-only except the work dir
      (seen at /tmp/sandbox, on a fresh tmpfs over /tmp), then forks the program:
        rlimits (CPU, address space, file size, process count, open files, no core files),
        drop to uid/gid 65534 (nobody), no-new-privileges, exec <python> -E -s -B main.py
      and reports on a status pipe how it ended

so the program has no network (only a downed loopback), sees only its own processes, can write
only its temporary work dir (removed afterwards), gets an environment of PATH/HOME/TMPDIR/LANG
and nothing of the worker's, and dies with its whole namespace at a wall-clock deadline (SIGKILL
to the namespace's pid 1 takes every descendant with it, even one that called setsid()). Output
is read with a cap, so a program cannot fill the worker's memory. Not root: the same with
`--user --map-root-user` (a user namespace) and no uid change.

Why `unshare` first and the uid drop last: creating a network namespace needs root (or a user
namespace), and RLIMIT_NPROC does not bind root. Why not `preexec_fn`: it is unsafe in a
threaded worker; the launcher sets everything after its own fork instead. Why another interpreter
than the worker's: the venv's python may live under /root (mode 0700), which nobody cannot
enter; the sandboxed code needs only the standard library, so any system python3 will do.
Known limit: RLIMIT_NPROC counts every process of uid 65534 on the machine, so concurrent
sandboxes share the `nproc` budget (a run that finds it spent is "refused" with that reason).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import _launcher

MiB = 1024 * 1024
SANDBOX_UID = SANDBOX_GID = 65534  # nobody / nogroup
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
MAIN = "main.py"
LAUNCHER = Path(_launcher.__file__).resolve()
STATUSES = ("ok", "error", "timeout", "killed", "refused")

MAX_CODE_BYTES = 1 * MiB
MAX_STDIN_BYTES = 16 * MiB
MAX_FILES = 100
MAX_TIMEOUT_S = 600.0
OPEN_FILES = 256
READ_CHUNK = 64 * 1024
# After the process exits (or is killed), how long the output readers may take to see EOF.
DRAIN_S = 5.0


class SandboxUnavailable(RuntimeError):
    """Code execution is refused on this machine; the message says why."""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    exit_code: int | None  # the interpreter's exit code; negative = killed by that signal
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_s: float
    reason: str  # empty when ok; else why (the exception line, the limit hit, the refusal)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_python(code: str, *, stdin: str = "", timeout_s: float = 10.0, cpu_s: int = 10,
               memory_bytes: int = 512 * MiB, file_bytes: int = 16 * MiB, nproc: int = 32,
               files: dict[str, str] | None = None, output_bytes: int = 64 * 1024) -> SandboxResult:
    """Run `code` as a script (`main.py`, with `files` beside it, importable) and return what happened.

    Limits: `timeout_s` wall clock (hard kill), `cpu_s` CPU seconds, `memory_bytes` address space,
    `file_bytes` per written file, `nproc` processes and threads of the sandbox user, stdout and
    stderr kept up to `output_bytes` each (the rest is read and dropped, flagged as truncated).
    Raises ValueError for bad arguments and SandboxUnavailable where namespaces are unavailable.
    """
    _validate(code, stdin, timeout_s, cpu_s, memory_bytes, file_bytes, nproc, files, output_bytes)
    reason = check_available()
    if reason is not None:
        raise SandboxUnavailable(reason)
    limits = {"cpu_s": int(cpu_s), "memory_bytes": int(memory_bytes), "file_bytes": int(file_bytes),
              "nproc": int(nproc), "open_files": OPEN_FILES}
    return _execute(code, stdin, float(timeout_s), limits, files or {}, output_bytes, _interpreter())


def check_available(refresh: bool = False) -> str | None:
    """None when the sandbox works here, else the reason code execution is refused.

    The answer comes from a real run of a one-line program, once per process (`refresh` re-checks).
    """
    if refresh:
        _interpreter.cache_clear()
        _availability.cache_clear()
    return _availability()


# --- internals ---------------------------------------------------------------------------------

def _is_root() -> bool:
    return os.geteuid() == 0


def _others_can_run(path: str) -> bool:
    """Whether a user who is neither owner nor group (nobody) can execute `path`."""
    real = Path(os.path.realpath(path))
    try:
        if not real.is_file() or (real.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH)) != (stat.S_IROTH | stat.S_IXOTH):
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def _interpreter() -> str | None:
    """The python the sandbox runs: the worker's own when nobody can run it (or when not root,
    where no uid change happens), else a system python3. PUYU_SANDBOX_PYTHON overrides."""
    override = os.environ.get("PUYU_SANDBOX_PYTHON")
    candidates = [override] if override else [
        sys.executable, getattr(sys, "_base_executable", None),
        shutil.which("python3", path=SYSTEM_PATH)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and (not _is_root() or _others_can_run(candidate)):
            return os.path.realpath(candidate)
    return None


@functools.lru_cache(maxsize=1)
def _availability() -> str | None:
    if not sys.platform.startswith("linux"):
        return "code execution needs Linux namespaces; this worker runs on " + sys.platform
    if shutil.which("unshare", path=SYSTEM_PATH) is None:
        return "code execution needs util-linux `unshare`, which is not installed on this worker"
    python = _interpreter()
    if python is None:
        return ("code execution needs a python3 that the sandbox user (uid 65534) can run; set "
                "PUYU_SANDBOX_PYTHON to one outside unreadable folders such as /root")
    base = tempfile.gettempdir()
    if _is_root() and not all(p.stat().st_mode & stat.S_IXOTH for p in [Path(base), *Path(base).parents]):
        return f"code execution needs a temporary folder the sandbox user can enter; {base} is not"
    limits = {"cpu_s": 5, "memory_bytes": 256 * MiB, "file_bytes": MiB, "nproc": 32, "open_files": OPEN_FILES}
    try:
        probe = _execute("print('sandbox-ok')", "", 20.0, limits, {}, 4096, python)
    except OSError as exc:
        return f"code execution is unavailable: starting the sandbox failed ({exc.strerror})"
    if probe.status == "ok" and probe.stdout.strip() == "sandbox-ok":
        return None
    detail = probe.reason or probe.stderr.strip()[:300] or probe.status
    if "unshare" in detail and not _is_root():
        return ("code execution is refused: network namespaces are unavailable (the worker is not "
                f"root and unprivileged user namespaces are disabled): {detail}")
    return f"code execution is refused: the sandbox could not start ({detail})"


def _validate(code, stdin, timeout_s, cpu_s, memory_bytes, file_bytes, nproc, files, output_bytes) -> None:
    if not isinstance(code, str):
        raise ValueError("code must be a string")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise ValueError(f"code is longer than {MAX_CODE_BYTES // MiB} MiB")
    if len(stdin.encode("utf-8", "surrogatepass")) > MAX_STDIN_BYTES:
        raise ValueError(f"stdin is longer than {MAX_STDIN_BYTES // MiB} MiB")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {timeout_s}")
    if not 1 <= cpu_s <= MAX_TIMEOUT_S:
        raise ValueError(f"cpu_s must be between 1 and {MAX_TIMEOUT_S:g}, got {cpu_s}")
    if not 64 * MiB <= memory_bytes <= 64 * 1024 * MiB:
        raise ValueError(f"memory_bytes must be between 64 MiB and 64 GiB, got {memory_bytes}")
    if not 0 <= file_bytes <= 16 * 1024 * MiB:
        raise ValueError(f"file_bytes must be between 0 and 16 GiB, got {file_bytes}")
    if not 1 <= nproc <= 4096:
        raise ValueError(f"nproc must be between 1 and 4096, got {nproc}")
    if not 1 <= output_bytes <= 64 * MiB:
        raise ValueError(f"output_bytes must be between 1 and 64 MiB, got {output_bytes}")
    files = files or {}
    if len(files) > MAX_FILES:
        raise ValueError(f"at most {MAX_FILES} files, got {len(files)}")
    total = 0
    for name, text in files.items():
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name or "\0" in name:
            raise ValueError(f"files: {name!r} must be a relative path inside the work folder")
        if name == MAIN:
            raise ValueError(f"files: {MAIN!r} is the program itself; pick another name")
        if not isinstance(text, str):
            raise ValueError(f"files: {name!r} must be text")
        total += len(text.encode("utf-8", "surrogatepass"))
    if total > MAX_STDIN_BYTES:
        raise ValueError(f"files hold more than {MAX_STDIN_BYTES // MiB} MiB in all")


class _Capture(threading.Thread):
    """Reads a pipe to EOF, keeping the first `limit` bytes and dropping the rest."""

    def __init__(self, stream, limit: int):
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.data, self.truncated = bytearray(), False

    def run(self) -> None:
        fd = self.stream.fileno()
        try:
            while chunk := os.read(fd, READ_CHUNK):
                room = self.limit - len(self.data)
                if len(chunk) > room:
                    self.truncated = True
                self.data += chunk[:max(room, 0)]
        except OSError:
            pass

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", "replace")


def _feed(stream, data: bytes) -> None:
    try:
        if data:
            stream.write(data)
    except (BrokenPipeError, OSError):
        pass  # the program exited or closed stdin without reading all of it
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _write_work(work: str, code: str, files: dict[str, str], owner: tuple[int, int] | None) -> None:
    written = [MAIN]
    Path(work, MAIN).write_text(code, encoding="utf-8", errors="surrogatepass")
    for name, text in files.items():
        target = Path(work, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", errors="surrogatepass")
        written.append(name)
    if owner is not None:  # root mode: the work dir and everything in it belong to nobody
        for folder, dirs, names in os.walk(work):
            os.chown(folder, *owner)
            for name in names:
                os.chown(os.path.join(folder, name), *owner)


def _remove(work: str) -> None:
    """Delete the work dir. Rootless, the program owned it and may have made folders unreadable
    (chmod 000), so open them up first; symlinks are never followed (nothing runs any more that
    could swap a folder for one: the pid namespace is gone)."""
    if not _is_root():
        os.chmod(work, 0o700)
        for folder, dirs, _names in os.walk(work):
            for name in dirs:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
    shutil.rmtree(work, ignore_errors=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the namespace's pid 1, the launcher (its death takes every process of the pid
    namespace with it, even one that left the process group) so that `unshare` reaps it and no
    zombie is left to the machine's init; then the process group, should anything remain."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children", encoding="ascii") as children:
            firsts = [int(pid) for pid in children.read().split()]
    except OSError:
        firsts = []
    for pid in firsts:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare leads its own session and process group
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()


def _result(status: dict | None, returncode: int, timed_out: bool, timeout_s: float, cpu_s: int,
            out: _Capture, err: _Capture, wall_s: float) -> SandboxResult:
    """`status` is the launcher's report (None when it sent none: `unshare` failed or was killed)."""
    stderr = err.text()
    exit_code = None
    if timed_out:
        status_, reason = "timeout", f"wall-clock timeout: killed after {timeout_s:g} s"
        # `unshare` complains on its way out when its child is killed; that is not the program's.
        stderr = "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("unshare: "))
    elif status is None or "refused" in status:
        status_ = "refused"
        reason = status["refused"] if status else (
            next((line.strip() for line in stderr.splitlines() if line.strip()), "")
            or f"the sandbox did not start (exit code {returncode})")
        stderr = "" if status is None else stderr
    elif "signal" in status:
        signum = int(status["signal"])
        exit_code = -signum
        if signum == signal.SIGXCPU:
            status_, reason = "timeout", f"CPU time limit reached ({cpu_s} s)"
        else:
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            status_ = "killed"
            reason = f"killed by {name}" + (" (CPU hard limit or out of memory)" if signum == signal.SIGKILL else "")
    else:
        exit_code = int(status["exit"])
        if exit_code == 0:
            status_, reason = "ok", ""
        else:
            lines = [line for line in stderr.splitlines() if line.strip()]
            status_, reason = "error", (lines[-1].strip()[:500] if lines else f"exit code {exit_code}")
    return SandboxResult(status=status_, exit_code=exit_code, stdout=out.text(), stderr=stderr,
                         stdout_truncated=out.truncated, stderr_truncated=err.truncated,
                         wall_s=round(wall_s, 3), reason=reason)


def _read_status(fd: int) -> dict | None:
    """The launcher's last report on the status pipe; every writer is gone when unshare has exited."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < READ_CHUNK and (chunk := os.read(fd, READ_CHUNK)):
            data += chunk
    except BlockingIOError:
        pass
    reports = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            reports.append(json.loads(line))
        except ValueError:
            continue
    refused = [r for r in reports if isinstance(r, dict) and "refused" in r]
    return refused[0] if refused else (reports[-1] if reports else None)


def _tasks_of(uid: int) -> int:
    """Processes and threads of `uid` now: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


def _execute(code: str, stdin: str, timeout_s: float, limits: dict, files: dict[str, str],
             output_bytes: int, python: str) -> SandboxResult:
    root = _is_root()
    if not root:
        # Rootless, the program keeps the worker's uid, whose processes and threads (the worker's
        # own included) all count against RLIMIT_NPROC: grant `nproc` on top of those.
        limits = {**limits, "nproc": limits["nproc"] + _tasks_of(os.getuid())}
    work = tempfile.mkdtemp(prefix="puyu-sandbox-")
    status_read, status_write = os.pipe()
    try:
        _write_work(work, code, files, (SANDBOX_UID, SANDBOX_GID) if root else None)
        inside = _launcher.WORK
        env = {"PATH": SYSTEM_PATH, "HOME": inside, "TMPDIR": inside, "LANG": "C.UTF-8"}
        config = {
            "limits": limits, "env": env, "status_fd": status_write,
            "uid": SANDBOX_UID if root else None, "gid": SANDBOX_GID if root else None,
            # -E -s: no PYTHON* variables, no user site-packages; -B: no .pyc files. Not -I, so
            # that the `files` beside main.py stay importable.
            "argv": [python, "-E", "-s", "-B", MAIN],
        }
        unshare = ["unshare"] + ([] if root else ["--user", "--map-root-user"]) + [
            "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
        argv = unshare + [python, "-I", "-S", str(LAUNCHER), json.dumps(config)]
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=work, env={"PATH": SYSTEM_PATH}, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                pass_fds=(status_write,))
        os.close(status_write)
        status_write = None
        out, err = _Capture(proc.stdout, output_bytes), _Capture(proc.stderr, output_bytes)
        feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin.encode("utf-8", "surrogatepass")),
                                  daemon=True)
        for thread in (out, err, feeder):
            thread.start()
        timed_out = False
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            returncode = proc.wait()
        except BaseException:  # e.g. KeyboardInterrupt in the worker: never leave the program running
            _kill(proc)
            proc.wait()
            raise
        wall_s = time.monotonic() - started
        for thread in (out, err, feeder):
            thread.join(DRAIN_S)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        status = _read_status(status_read)
        return _result(status, returncode, timed_out, timeout_s, limits["cpu_s"], out, err, wall_s)
    finally:
        os.close(status_read)
        if status_write is not None:
            os.close(status_write)
        _remove(work)
