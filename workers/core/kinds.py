"""The job kinds the core can run: name → (spec class, runner). The Celery tasks and the command
line both look kinds up here, so a kind is defined once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from workers.core.diagnostics import DiagnosticsSpec, run_diagnostics
from workers.core.probe import ProbeSpec, run_probe
from workers.core.reporting import Reporter
from workers.core.specs import build_spec


@dataclass(frozen=True)
class CoreJob:
    spec_class: type
    run: Callable[[Any, Reporter], dict]


CORE_JOBS: dict[str, CoreJob] = {
    "diagnostics": CoreJob(DiagnosticsSpec, run_diagnostics),
    "probe": CoreJob(ProbeSpec, run_probe),
}


def run_core_job(kind: str, params: dict | None, reporter: Reporter) -> dict:
    job = CORE_JOBS[kind]
    return job.run(build_spec(job.spec_class, params), reporter)
