"""Leaderboard jobs. Each stores what it produced in the transaction that marks it SUCCEEDED
(idempotent: a duplicate delivery stores nothing twice).

evaluate          the core runs the suite on the target; the scores and every per-sample row
                  (read from the JSONL files the runner writes beside its prediction cache)
                  become BenchmarkScore and SampleResult rows. An external endpoint's API key is
                  read from its admin row when the job runs and passed to the core, never stored
                  in the job's parameters.
arena_ratings     the votes are written to the job's votes file just before the core rates them;
                  the snapshot maps version ids back to labels.
benchmark_builtins  the built-in sets become datasets, dataset versions, benchmarks and the
                  "starter" suite of the system user.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from django.conf import settings

from apps.leaderboards import arena, services
from apps.leaderboards.models import BenchmarkScore, BenchmarkVersion, EvaluationRun, SampleResult
from puyu_site.celery import app
from workers.core.kinds import CORE_JOBS
from workers.core.modelstore.atomic import disk_full_is_clear
from workers.core.specs import build_spec
from workers.tasks.base import JobTask

SAMPLES_FILE = re.compile(r"^[\w.\-]{1,200}\.jsonl$")  # a name the runner made, never a path
SUMMARY_KEYS = ("score", "metric", "ci_low", "ci_high", "n", "correct", "samples_file")
SAMPLE_COLUMNS = ("index", "correct", "prompt", "output", "extracted", "reference")


def _number(name: str, value):
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"benchmark {name}: the score {value!r} is not a finite number")
    return float(value)


def read_samples(path: Path, n: int) -> list[dict]:
    """The first `n` per-sample rows of a runner's samples file, checked to be complete."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if len(rows) >= n:
                break
            if line.strip():
                rows.append(json.loads(line))
    if [row.get("index") for row in rows] != list(range(n)):
        raise ValueError(f"{path.name} does not hold the {n} scored samples in order (rewritten by another run?); "
                         "retry the run: its predictions are cached")
    return rows


def store_scores(run: EvaluationRun, result: dict) -> None:
    names = run.settings.get("benchmarks") or {}
    versions = BenchmarkVersion.objects.in_bulk(list(names.values()))
    cache_dir = Path(run.job.params["cache_dir"])
    for name, summary in (result.get("benchmarks") or {}).items():
        version = versions.get(names.get(name))
        if version is None:
            raise ValueError(f"benchmark {name} is not in the run's suite version")
        if summary.get("benchmark_hash") and summary["benchmark_hash"] != version.version_hash:
            raise ValueError(f"benchmark {name}: the data or definition hashes to {summary['benchmark_hash'][:12]}, not "
                             f"{version.short_hash} as when the benchmark was made (was its file changed?)")
        samples_file = summary.get("samples_file", "")
        if not SAMPLES_FILE.match(samples_file):
            raise ValueError(f"benchmark {name}: unexpected samples file name")
        if summary.get("score") is None:
            raise ValueError(f"benchmark {name}: no sample could be scored (did the judge rate none?)")
        samples = read_samples(cache_dir / samples_file, int(summary["n"]))
        if summary.get("correct") is not None and sum(1 for row in samples if row.get("correct")) != summary["correct"]:
            raise ValueError(f"{samples_file} does not match the scores (rewritten by another run?); retry the run: "
                             "its predictions are cached")
        score = BenchmarkScore.objects.create(
            run=run, benchmark_version=version, metric=summary["metric"][:40], score=_number(name, summary["score"]),
            ci_low=_number(name, summary.get("ci_low")), ci_high=_number(name, summary.get("ci_high")), n=summary["n"],
            correct=summary.get("correct"), extra={k: v for k, v in summary.items() if k not in SUMMARY_KEYS})
        SampleResult.objects.bulk_create([
            SampleResult(score=score, index=row["index"], correct=row.get("correct"), prompt=row.get("prompt") or "",
                         output=row.get("output") or "", extracted=row.get("extracted") or "",
                         reference=row.get("reference") or "",
                         detail={k: v for k, v in row.items() if k not in SAMPLE_COLUMNS})
            for row in samples], batch_size=500)


class EvaluateTask(JobTask):
    abstract = True

    def execute(self, job, reporter):
        # Secrets reach the core at run time only, never through the job's stored params: an
        # endpoint's API key, and the broker URL a deployment target is called through.
        secrets = {**services.run_secrets(job), "redis_url": settings.REDIS_URL}
        core = CORE_JOBS[job.kind]
        spec = build_spec(core.spec_class, job.params)
        with disk_full_is_clear("the evaluation output"):
            return core.run(spec, reporter, **secrets)

    def record(self, job, result):
        run = EvaluationRun.objects.select_for_update().select_related("job").get(job=job)
        if not run.scores.exists():
            store_scores(run, result)
        EvaluationRun.objects.filter(pk=run.pk).update(model_hash=str(result.get("model_hash") or "")[:64])
        return {**result, "run_id": run.pk}


class ArenaRatingsTask(JobTask):
    abstract = True

    def execute(self, job, reporter):
        reporter.log(f"{arena.write_votes(job)} votes written for rating")
        return super().execute(job, reporter)

    def record(self, job, result):
        return arena.record_ratings(job, result)


class BuiltinsTask(JobTask):
    abstract = True

    def record(self, job, result):
        return services.record_builtins(job, result)


@app.task(base=EvaluateTask, bind=True, name="leaderboards.evaluate")
def evaluate(self, job_id: int):
    return EvaluateTask.run(self, job_id)


@app.task(base=ArenaRatingsTask, bind=True, name="leaderboards.ratings")
def arena_ratings(self, job_id: int):
    return ArenaRatingsTask.run(self, job_id)


@app.task(base=BuiltinsTask, bind=True, name="leaderboards.builtins")
def benchmark_builtins(self, job_id: int):
    return BuiltinsTask.run(self, job_id)
