"""Multi-process training: the parent (`launch`, called by run_training) starts
`torchrun --nproc_per_node N -m workers.core.training.distributed <run folder>`; every rank runs
the same recipe (DDP: gloo on CPU, nccl on GPU; FSDP when distributed: fsdp).

Rank 0 writes its progress / log / metric events as JSON lines to events.jsonl, and its result to
result.json; the parent tails the events and forwards them to the real Reporter. Cancel: the
parent writes a stop file when reporter.should_stop(); every rank's StopCallback sees it after
its current step, so all ranks stop at the same step. The parent kills the whole process group
when it leaves (error, cancel or its own death by exception).

Not `accelerate launch --cpu --num_processes 2`: it silently runs ONE process (verified).
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

from workers.core.reporting import JobCancelled


class EventReporter:
    """Rank 0's Reporter: appends events to a file the parent tails."""

    def __init__(self, path: Path, stop_file: Path):
        self.path, self.stop_file = Path(path), Path(stop_file)

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


class NullReporter(EventReporter):
    def _write(self, event: dict) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec, reporter) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="puyu-train-"))
    (run_dir / "spec.json").write_text(json.dumps(dataclasses.asdict(spec)))
    events, stop, result_file = run_dir / "events.jsonl", run_dir / "stop", run_dir / "result.json"
    events.touch()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={spec.num_processes}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "workers.core.training.distributed", str(run_dir)]
    env = dict(os.environ)
    if not spec.torch_threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.num_processes))
    reporter.log(f"launching {spec.num_processes} processes: torchrun --nproc_per_node {spec.num_processes}")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=str(Path(__file__).resolve().parents[3]))
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
            time.sleep(0.2)
        _forward(events, offset, reporter)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{''.join(tail[-30:])}")
        result = json.loads(result_file.read_text())
        if result.get("cancelled"):
            raise JobCancelled("stopped on request")
        if "error" in result:
            raise RuntimeError(result["error"])
        return result
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
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


def main(run_dir: str) -> int:
    from workers.core.specs import build_spec
    from workers.core.training.job import TrainSpec
    from workers.core.training.recipes import run_recipe

    run_dir = Path(run_dir)
    params = json.loads((run_dir / "spec.json").read_text())
    params["num_processes"] = 1  # this process is one rank: never launch again
    spec = build_spec(TrainSpec, params)
    rank = int(os.environ.get("RANK", "0"))
    stop = run_dir / "stop"
    reporter = (EventReporter if rank == 0 else NullReporter)(run_dir / "events.jsonl", stop)
    try:
        result = run_recipe(spec, reporter, stop_file=str(stop))
    except JobCancelled:
        result = {"cancelled": True}
    except Exception as exc:
        if rank == 0:
            (run_dir / "result.json").write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    if rank == 0:
        (run_dir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
