"""The core jobs run without Django: specs are validated, progress and metrics are reported,
and a stop request ends the job within a step."""
import json
import subprocess
import sys
import threading

import pytest

from workers.core.diagnostics import DiagnosticsSpec, run_diagnostics
from workers.core.probe import ProbeSpec, run_probe
from workers.core.kinds import run_core_job
from workers.core.reporting import ConsoleReporter, JobCancelled, Reporter
from workers.core.specs import SpecError, build_spec

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def quiet_reporter():
    import io

    return ConsoleReporter(stream=io.StringIO())


def test_the_console_reporter_satisfies_the_reporter_protocol():
    assert isinstance(quiet_reporter(), Reporter)


def test_diagnostics_reports_devices_versions_and_throughput_for_every_step():
    reporter = quiet_reporter()
    result = run_diagnostics(DiagnosticsSpec(steps=4, matmul_size=64, bandwidth_mb=1), reporter)
    assert result["device"] == "cpu"
    assert result["system"]["python"].startswith("3.11")
    assert result["system"]["torch"] and result["system"]["cpu"]["cores"] >= 1
    assert result["matmul_gflops_median"] > 0 and result["copy_gbps_median"] > 0
    names_steps = {(name, step) for name, step, _ in reporter.metrics}
    assert names_steps == {(n, s) for n in ("matmul_gflops", "copy_gbps") for s in range(1, 5)}
    assert reporter.fractions == [0.25, 0.5, 0.75, 1.0]


def test_diagnostics_refuses_cuda_on_a_machine_without_a_gpu():
    with pytest.raises(SpecError, match="device"):
        run_diagnostics(DiagnosticsSpec(steps=1, matmul_size=16, device="cuda"), quiet_reporter())


def test_a_stop_request_ends_the_probe_within_one_step():
    reporter = quiet_reporter()
    timer = threading.Timer(0.3, lambda: setattr(reporter, "stop_requested", True))
    timer.start()
    with pytest.raises(JobCancelled):
        run_probe(ProbeSpec(seconds=20, steps=100), reporter)
    assert len(reporter.fractions) <= 3  # 0.2 s per step: stopped after ~1-2 steps


def test_the_probe_keeps_its_total_time_despite_per_step_overhead():
    result = run_probe(ProbeSpec(seconds=0.5, steps=50), quiet_reporter())
    assert 0.5 <= result["seconds"] < 0.7


@pytest.mark.parametrize("params, field, reason", [
    ({"stepz": 3}, "stepz", "unknown field"),
    ({"steps": 0}, "steps", "between 1 and 10000"),
    ({"steps": "5"}, "steps", "must be an integer"),
    ({"steps": True}, "steps", "must be an integer"),
    ({"device": "tpu"}, "device", "auto, cpu or cuda"),
    ({"min_step_seconds": "slow"}, "min_step_seconds", "must be a number"),
])
def test_a_bad_diagnostics_spec_is_refused_with_the_field_named(params, field, reason):
    with pytest.raises(SpecError) as error:
        build_spec(DiagnosticsSpec, params)
    assert error.value.field == field
    assert reason in str(error.value)


def test_build_spec_fills_defaults_and_accepts_integers_for_float_fields():
    spec = build_spec(ProbeSpec, {"seconds": 2})
    assert spec == ProbeSpec(seconds=2.0, steps=1)
    assert isinstance(spec.seconds, float)


def test_run_core_job_dispatches_by_kind():
    assert run_core_job("probe", {"seconds": 0}, quiet_reporter())["steps"] == 1


def test_the_command_line_runs_a_job_without_django(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: 2\nmatmul_size: 32\n")
    out = subprocess.run([sys.executable, "-m", "workers.core", "diagnostics", str(spec), "--set", "bandwidth_mb=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["spec"] == {"steps": 2, "matmul_size": 32, "bandwidth_mb": 1, "device": "auto", "min_step_seconds": 0.0}


def test_the_command_line_names_the_bad_field(tmp_path):
    out = subprocess.run([sys.executable, "-m", "workers.core", "probe", "--set", "seconds=-1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "seconds: must be between 0.0 and 3600.0, got -1" in out.stderr
