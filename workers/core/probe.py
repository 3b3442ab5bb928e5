"""The pipeline probe: a job that only waits, in steps, reporting progress.

It measures the job system itself (dispatch latency, overhead against running in-process) and
is what bench/dispatch.py and operators use to check that queues drain; it touches no device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from workers.core.reporting import Reporter, check_cancelled
from workers.core.specs import require_range

# A probe holds a worker slot while it waits: an hour is far more than any pipeline check needs,
# and bounds what one user can tie up with it.
MAX_PROBE_SECONDS = 3600.0
MAX_PROBE_STEPS = 100_000


@dataclass
class ProbeSpec:
    seconds: float = 0.0
    steps: int = 1

    def validate(self) -> None:
        require_range("seconds", self.seconds, 0.0, MAX_PROBE_SECONDS)
        require_range("steps", self.steps, 1, MAX_PROBE_STEPS)


def run_probe(spec: ProbeSpec, reporter: Reporter) -> dict:
    start = time.perf_counter()
    per_step = spec.seconds / spec.steps
    for step in range(1, spec.steps + 1):
        check_cancelled(reporter)
        deadline = start + per_step * step
        # Absolute deadlines: per-step overhead does not accumulate into the total.
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(min(left, 0.25))
            check_cancelled(reporter)
        reporter.progress(step / spec.steps, f"step {step}/{spec.steps}")
    return {"seconds": round(time.perf_counter() - start, 4), "steps": spec.steps}
