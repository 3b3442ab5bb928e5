"""Shared by the evaluation tests: benchmark files, specs, quiet reporters, per-sample rows."""
from __future__ import annotations

import json
from pathlib import Path

from workers.core.evaluation.spec import EvaluateSpec
from workers.core.reporting import ConsoleReporter
from workers.core.specs import build_spec


def write_rows(path, rows) -> str:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def quiet() -> ConsoleReporter:
    return ConsoleReporter(stream=open("/dev/null", "w"))  # noqa: SIM115 - closed with the test process


def model_spec(tiny, tmp_path, benchmarks, **extra) -> EvaluateSpec:
    params = {"model_dir": str(tiny[0]), "benchmarks": benchmarks, "cache_dir": str(tmp_path / "cache"),
              "batch_size": 2, "max_new_tokens": 8, **extra}
    return build_spec(EvaluateSpec, params)


def samples_of(spec, result, name) -> list[dict]:
    path = Path(spec.cache_dir) / result["benchmarks"][name]["samples_file"]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class CountingModel:
    """The model with its forward calls counted (the runner calls only `model(...)`/`generate`)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.handle = model.register_forward_hook(self._count)

    def _count(self, *args):
        self.calls += 1

    def close(self):
        self.handle.remove()
