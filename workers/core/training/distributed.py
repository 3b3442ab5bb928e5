"""Multi-process training: the parent (`launch`, called by job.run_training) starts
`torchrun --nproc_per_node N -m workers.core.training.job <run folder>`; every rank (job.run_rank)
runs the same recipe (DDP: gloo on CPU, nccl on GPU; FSDP when distributed: fsdp). This module is
the process machinery of both sides and imports nothing else of the package.

Rank 0 writes its progress / log / metric events as JSON lines to events.jsonl, and its result to
result.json; the parent tails the events and forwards them to the real Reporter. Cancel: the
parent writes a stop file when reporter.should_stop(); every rank's StopCallback sees it after
its current step, so all ranks stop at the same step. Warm shutdown: the parent writes a suspend
file instead; every rank checkpoints its current step and stops, and the parent raises
JobSuspended. The parent kills the whole process group when it leaves (error, cancel or its own
death by exception).

Orphans: torchrun runs in its own session and starts each rank in a session of its own, so
neither a group kill nor the worker's death reaches the ranks. So (1) torchrun gets
PR_SET_PDEATHSIG=SIGKILL from the worker, and every rank the same from torchrun (then checks its
parent is still torchrun, to close the race with a parent that died first); (2) every process of
a run is found by its run folder, which is on its command line: the parent kills them all when it
leaves, and records the folder in the checkpoint folder so the next attempt kills any that are
still alive before it resumes (two attempts never write the same checkpoints).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workers.core.reporting import JobCancelled, JobSuspended, suspend_requested


RANKS_FILE = ".ranks.json"  # in the checkpoint folder: the run folder of the running torchrun
RANK_MODULE = "workers.core.training.job"  # what torchrun runs in every rank (its run_rank)
# The files of a run folder, shared by the parent and its ranks.
SPEC, EVENTS, STOP, RESULT = "spec.json", "events.jsonl", "stop", "result.json"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that started it dies (prctl
    PR_SET_PDEATHSIG). Safe as a Popen preexec_fn (only a libc call). No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def parent_is_torchrun() -> bool:
    """In a rank: whether torchrun is still its parent (a rank whose torchrun died is orphaned)."""
    return b"torch.distributed.run" in _cmdline(os.getppid())


def run_processes(run_dir) -> list[int]:
    """Live processes (torchrun and its ranks) of the run in `run_dir`: its path is an argument
    of each of their command lines, and it is a fresh temp folder per run."""
    marker = str(run_dir).encode() + b"\0"
    members = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and marker in _cmdline(int(proc.name)) and int(proc.name) != os.getpid():
            members.append(int(proc.name))
    return members


def kill_run(run_dir, timeout: float = 10.0) -> int:
    """SIGKILL every process of the run and wait (bounded) until they are gone."""
    members = run_processes(run_dir)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while run_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(members)


def reap_recorded_run(checkpoint_dir: Path, reporter) -> int:
    """Kill the ranks an earlier attempt left running (its worker was SIGKILLed before it could):
    they would keep writing checkpoints beside this attempt. Returns how many were killed."""
    record = Path(checkpoint_dir) / RANKS_FILE
    try:
        run_dir = str(json.loads(record.read_text())["run_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    killed = kill_run(run_dir)
    if killed:
        reporter.log(f"stopped {killed} processes left running by an earlier attempt", "warning")
    record.unlink(missing_ok=True)
    return killed


def suspend_file(stop_file: Path) -> Path:
    """The file the parent writes to suspend every rank (warm shutdown), beside the stop file."""
    return Path(stop_file).with_name("suspend")


class EventReporter:
    """Rank 0's Reporter: appends events to a file the parent tails."""

    def __init__(self, path: Path, stop_file: Path):
        self.path, self.stop_file = Path(path), Path(stop_file)
        self.suspend_file = suspend_file(self.stop_file)

    def _write(self, event: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")

    def progress(self, fraction: float, message: str = "") -> None:
        self._write({"type": "progress", "fraction": fraction, "message": message})

    def log(self, message: str, level: str = "info") -> None:
        self._write({"type": "log", "message": message, "level": level})

    def metric(self, name: str, step: int, value: float) -> None:
        self._write({"type": "metric", "name": name, "step": step, "value": value})

    def should_stop(self) -> bool:
        return self.stop_file.exists()

    def should_suspend(self) -> bool:
        return self.suspend_file.exists()


class NullReporter(EventReporter):
    def _write(self, event: dict) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec, reporter) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="puyu-train-"))
    (run_dir / SPEC).write_text(json.dumps(dataclasses.asdict(spec)))
    events, stop, result_file = run_dir / EVENTS, run_dir / STOP, run_dir / RESULT
    suspend = suspend_file(stop)
    events.touch()
    checkpoint_dir = Path(spec.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    reap_recorded_run(checkpoint_dir, reporter)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={spec.num_processes}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", RANK_MODULE, str(run_dir)]
    env = dict(os.environ)
    if not spec.torch_threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.num_processes))
    reporter.log(f"launching {spec.num_processes} processes: torchrun --nproc_per_node {spec.num_processes}")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=str(Path(__file__).resolve().parents[3]), preexec_fn=die_with_parent)
    (checkpoint_dir / RANKS_FILE).write_text(json.dumps({"run_dir": str(run_dir)}))
    tail: list[str] = []
    try:
        import threading

        def pump():
            for line in proc.stdout:
                tail.append(line.decode(errors="replace"))
                del tail[:-60]

        threading.Thread(target=pump, daemon=True).start()
        offset = 0
        while True:
            done = proc.poll() is not None
            offset = _forward(events, offset, reporter)
            if done:
                break
            if reporter.should_stop() and not stop.exists():
                stop.touch()
            elif suspend_requested(reporter) and not suspend.exists():
                suspend.touch()
            time.sleep(0.2)
        _forward(events, offset, reporter)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{''.join(tail[-30:])}")
        result = json.loads(result_file.read_text())
        if result.get("cancelled"):
            raise JobCancelled("stopped on request")
        if result.get("suspended"):
            raise JobSuspended(result["suspended"])
        if "error" in result:
            raise RuntimeError(result["error"])
        return result
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_run(run_dir)  # ranks live in sessions of their own: the group kill misses them
        (checkpoint_dir / RANKS_FILE).unlink(missing_ok=True)
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def _forward(events: Path, offset: int, reporter) -> int:
    with open(events, encoding="utf-8") as fh:
        fh.seek(offset)
        while True:
            line = fh.readline()
            if not line.endswith("\n"):
                break
            offset += len(line.encode())
            event = json.loads(line)
            if event["type"] == "progress":
                reporter.progress(event["fraction"], event["message"])
            elif event["type"] == "log":
                reporter.log(event["message"], event["level"])
            elif event["type"] == "metric":
                reporter.metric(event["name"], event["step"], event["value"])
    return offset
