"""Worker diagnostics: what this worker is (host, versions, devices) and how fast its device
is (matmul throughput, memory-copy bandwidth), measured over a number of steps with progress.

It is the first real job kind: it exercises the whole job pipeline and stays useful in
production to check a new GPU node before giving it real work.
"""
from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from importlib import metadata

from workers.core.reporting import Reporter, check_cancelled
from workers.core.specs import SpecError, require_range, short


# Stretched steps hold a device: like a probe, one diagnostics run waits at most an hour.
MAX_STRETCHED_SECONDS = 3600.0


@dataclass
class DiagnosticsSpec:
    steps: int = 20
    matmul_size: int = 512
    bandwidth_mb: int = 64
    device: str = "auto"  # auto | cpu | cuda
    min_step_seconds: float = 0.0  # stretch each step (soak tests; watching a job live)

    def validate(self) -> None:
        require_range("steps", self.steps, 1, 10_000)
        require_range("matmul_size", self.matmul_size, 16, 16_384)
        require_range("bandwidth_mb", self.bandwidth_mb, 1, 8_192)
        require_range("min_step_seconds", self.min_step_seconds, 0.0, 600.0)
        if self.steps * self.min_step_seconds > MAX_STRETCHED_SECONDS:
            raise SpecError("min_step_seconds", f"steps × min_step_seconds must stay within {MAX_STRETCHED_SECONDS:.0f} s, "
                                                f"got {self.steps * self.min_step_seconds:.0f} s")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SpecError("device", f"must be auto, cpu or cuda, got {short(self.device)}")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_system(torch_module=None) -> dict:
    """Host, software versions and devices. Uses torch for GPUs only when it is passed in, so
    callers that must not initialise CUDA (the Celery parent process) can call it safely."""
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 2)
    except ImportError:  # psutil is in requirements; keep the core usable without it
        memory_gb = None
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "cpu": {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "usable_cores": usable_cores},
        "memory_gb": memory_gb,
        "gpus": [],
    }
    if torch_module is not None and torch_module.cuda.is_available():
        for index in range(torch_module.cuda.device_count()):
            props = torch_module.cuda.get_device_properties(index)
            info["gpus"].append({"index": index, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 2)})
    return info


def run_diagnostics(spec: DiagnosticsSpec, reporter: Reporter) -> dict:
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise SpecError("device", "cuda was requested but this worker has no GPU")
    device = torch.device("cuda" if spec.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    system = describe_system(torch)
    reporter.log(f"host {system['host']}: python {system['python']}, torch {system['torch']}, "
                 f"transformers {system['transformers']}, {system['cpu']['usable_cores']} usable cores, "
                 f"{system['memory_gb']} GiB RAM, GPUs: {[g['name'] for g in system['gpus']] or 'none'}")
    reporter.log(f"measuring on {device} ({dtype}), {spec.steps} steps, matmul {spec.matmul_size}², "
                 f"copy {spec.bandwidth_mb} MB, torch threads {torch.get_num_threads()}")

    n = spec.matmul_size
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    elements = spec.bandwidth_mb * 2**20 // 4
    src = torch.empty(elements, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # one warm-up of each kernel so the first step does not measure allocation and dispatch
    torch.mm(a, b)
    dst.copy_(src)
    sync()

    gflops, gbps = [], []
    for step in range(1, spec.steps + 1):
        check_cancelled(reporter)
        step_start = time.perf_counter()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        mm_seconds = time.perf_counter() - start
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        copy_seconds = time.perf_counter() - start
        gflops.append(2 * n**3 / mm_seconds / 1e9)
        gbps.append(2 * src.numel() * src.element_size() / copy_seconds / 1e9)  # read + write
        reporter.metric("matmul_gflops", step, round(gflops[-1], 3))
        reporter.metric("copy_gbps", step, round(gbps[-1], 3))
        remaining = spec.min_step_seconds - (time.perf_counter() - step_start)
        while remaining > 0:  # sleep in slices so a cancel is still seen promptly
            time.sleep(min(remaining, 0.25))
            if reporter.should_stop():
                break
            remaining = spec.min_step_seconds - (time.perf_counter() - step_start)
        reporter.progress(step / spec.steps, f"step {step}/{spec.steps}")

    result = {
        "system": system,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "matmul_gflops_median": round(statistics.median(gflops), 3),
        "matmul_gflops_max": round(max(gflops), 3),
        "copy_gbps_median": round(statistics.median(gbps), 3),
        "spec": asdict(spec),
    }
    reporter.log(f"matmul {result['matmul_gflops_median']} GFLOP/s (median), copy {result['copy_gbps_median']} GB/s (median)")
    return result
