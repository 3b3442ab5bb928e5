"""The leaderboard jobs run by their Celery tasks in this process (as a worker would): an
evaluation of a tiny Llama records its scores and every per-sample row in the SUCCEEDED
transaction, once; the arena ratings job rates the votes its owner may see; the built-ins job
creates datasets, benchmarks and the starter suite once per data dir."""
import pytest
from django.db import transaction

from apps.jobs.models import Job, JobStatus
from apps.leaderboards import arena, board, services
from apps.leaderboards.models import (
    ArenaRatingSnapshot,
    Benchmark,
    BenchmarkScore,
    EvaluationRun,
    SampleResult,
    Suite,
)
from tests.leaderboards.conftest import MC_ROWS, TEXT_ROWS

pytestmark = pytest.mark.django_db(transaction=True)  # tasks run with a heartbeat thread


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("tiny-eval")
    return build_tiny_llama(root / "model", tokenizer_dir=train_tokenizer(root / "tokenizer"))


def run(job: Job) -> Job:
    from workers.tasks import leaderboards

    {"evaluate": leaderboards.evaluate, "arena_ratings": leaderboards.arena_ratings,
     "benchmark_builtins": leaderboards.benchmark_builtins}[job.kind].run(job.pk)
    job.refresh_from_db()
    return job


def test_an_evaluation_of_a_tiny_llama_records_scores_and_samples_once(users, tiny_llama, make_version, make_benchmark,
                                                                       make_suite):
    owner = users["owner"]
    quiz = make_benchmark(owner, "quiz")
    prose = make_benchmark(owner, "prose", shape="text", dimension="language")
    suite = make_suite(owner, [quiz, prose])
    version = make_version(owner, source=tiny_llama)
    evaluation = services.submit_evaluation(owner, suite_version=suite, model_version=version, queue="cpu")
    job = run(evaluation.job)
    assert job.status == JobStatus.SUCCEEDED, job.error

    evaluation.refresh_from_db()
    assert len(evaluation.model_hash) == 64 and job.result["run_id"] == evaluation.pk
    scores = {s.benchmark_version: s for s in evaluation.scores.all()}
    accuracy, bits = scores[quiz], scores[prose]
    assert (accuracy.metric, accuracy.n, bits.metric, bits.n) == ("accuracy", len(MC_ROWS), "bits_per_byte", len(TEXT_ROWS))
    assert accuracy.ci_low <= accuracy.score <= accuracy.ci_high and bits.score > 0
    assert accuracy.extra["benchmark_hash"] == quiz.version_hash
    samples = list(accuracy.samples.order_by("index"))
    assert [s.index for s in samples] == list(range(len(MC_ROWS)))
    assert sum(s.correct for s in samples) == accuracy.correct
    first = samples[0]
    assert MC_ROWS[0]["question"] in first.prompt and first.reference == "B" and first.extracted in "ABCD"
    assert len(first.detail["option_logprobs"]) == 4

    from workers.tasks.leaderboards import evaluate

    with transaction.atomic():  # as the worker calls it (PostgreSQL refuses row locks outside one)
        evaluate.record(job, job.result)  # a duplicate delivery stores nothing twice
    assert BenchmarkScore.objects.filter(run=evaluation).count() == 2
    assert SampleResult.objects.filter(score__run=evaluation).count() == len(MC_ROWS) + len(TEXT_ROWS)

    table = board.leaderboard(owner, suite.suite)
    assert [row["run"] for row in table["rows"]] == [evaluation]
    assert table["rows"][0]["overall"] == pytest.approx(accuracy.score)  # bits per byte is not averaged


def test_the_same_model_again_reuses_the_cached_predictions(users, tiny_llama, make_version, make_benchmark, make_suite):
    owner = users["owner"]
    quiz = make_benchmark(owner, "quiz")
    first = services.submit_evaluation(owner, suite_version=make_suite(owner, [quiz]), model_version=make_version(
        owner, source=tiny_llama), queue="cpu")
    run(first.job)
    copy = make_version(owner, name="copy", source=tiny_llama)  # the same weights under another version
    second = services.submit_evaluation(owner, suite_version=first.suite_version, model_version=copy, queue="cpu")
    assert run(second.job).status == JobStatus.SUCCEEDED
    (a,), (b,) = first.scores.all(), second.scores.all()
    assert b.extra["cached"] == len(MC_ROWS) and b.extra["computed"] == 0
    assert (a.score, a.correct) == (b.score, b.correct)


def test_the_ratings_job_rates_the_votes_its_owner_may_see(users, make_version):
    owner, outsider = users["owner"], users["outsider"]
    strong, weak = make_version(owner, "strong"), make_version(owner, "weak")
    for _ in range(6):
        arena.record_vote(owner, model_a=strong, model_b=weak, outcome="a")
    arena.record_vote(users["teammate"], model_a=weak, model_b=strong, outcome="tie")
    arena.record_vote(owner, model_a=weak, model_b=strong, outcome="both_bad")
    theirs_a, theirs_b = make_version(outsider, "x"), make_version(outsider, "y")
    arena.record_vote(outsider, model_a=theirs_a, model_b=theirs_b, outcome="a")

    job = arena.start_ratings(owner)
    assert arena.start_ratings(owner) == job  # one ratings job at a time
    job = run(job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    snapshot = ArenaRatingSnapshot.objects.get(job=job)
    assert snapshot.votes == 8  # the outsider's battle is not the owner's to see
    by_id = {r["version_id"]: r for r in snapshot.ratings}
    assert set(by_id) == {strong.pk, weak.pk} and by_id[strong.pk]["label"] == "strong v1"
    assert by_id[strong.pk]["rating"] > by_id[weak.pk]["rating"]
    assert by_id[strong.pk]["low"] <= by_id[strong.pk]["rating"] <= by_id[strong.pk]["high"]
    assert (by_id[strong.pk]["wins"], by_id[strong.pk]["ties"], by_id[strong.pk]["both_bad"]) == (6, 1, 1)
    assert snapshot.win_rate[str(strong.pk)][str(weak.pk)] == pytest.approx(6.5 / 7)
    assert arena.latest_ratings(users["teammate"]) == snapshot and arena.latest_ratings(outsider) is None


def builtin_result(job) -> dict:
    """What the core's built-ins job returns for the job's sets, with small files written at
    the job's output paths (the real job is the slow test below)."""
    import hashlib
    import json
    from pathlib import Path

    from workers.core.evaluation.builtins import BUILTIN_SETS

    sets = {}
    for name, output in job.params["outputs"].items():
        builtin = BUILTIN_SETS[name]
        body = "".join(json.dumps(row) + "\n" for row in TEXT_ROWS).encode()
        Path(output).write_bytes(body)
        sets[name] = {"title": builtin.title, "description": builtin.description, "canonical": builtin.canonical,
                      "definition": {"name": name, **builtin.definition}, "rows": len(TEXT_ROWS),
                      "sha256": hashlib.sha256(body).hexdigest(), "size_bytes": len(body), "stats": {}}
    return {"sets": sets}


def test_the_builtins_job_makes_the_system_benchmarks_and_starter_suite_once(users, monkeypatch):
    from workers.tasks import catalog
    from workers.tasks.leaderboards import benchmark_builtins

    sets = catalog.builtin_benchmark_sets()
    monkeypatch.setattr(catalog, "builtin_benchmark_sets", lambda: {k: sets[k] for k in ("shakespeare", "tang_poetry")})
    job = services.ensure_builtins()
    assert services.ensure_builtins() is None  # queued already
    assert job.owner.username == "puyu-system" and set(job.params["outputs"]) == {"shakespeare", "tang_poetry"}
    result = builtin_result(job)
    benchmark_builtins.record(job, result)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    assert services.ensure_builtins() is None  # made already
    benchmarks = Benchmark.objects.filter(owner__username="puyu-system")
    assert sorted(benchmarks.values_list("builtin_key", flat=True)) == ["shakespeare", "tang_poetry"]
    tang = benchmarks.get(builtin_key="tang_poetry")
    version = services.latest_version(tang)
    assert tang.dimension == "chinese" and version.dataset_version.path.is_file()
    assert str(version.dataset_version.uid) in job.params["outputs"]["tang_poetry"]
    assert version.dataset_version.sha256 == result["sets"]["tang_poetry"]["sha256"] and len(version.version_hash) == 64
    starter = services.builtin_suite()
    assert starter.suite.name == "starter" and sorted(i.weight for i in starter.items.all()) == [1.0, 1.0]
    assert tang in services.visible_benchmarks(users["outsider"]) and starter.suite in services.visible_suites(users["outsider"])
    benchmark_builtins.record(job, result)  # a duplicate delivery: nothing new
    assert Benchmark.objects.count() == 2 and Suite.objects.get().versions.count() == 1


@pytest.mark.slow
def test_every_built_in_set_is_made_by_the_real_job(users):
    job = run(services.ensure_builtins())
    assert job.status == JobStatus.SUCCEEDED, job.error
    keys = set(Benchmark.objects.filter(owner__username="puyu-system").values_list("builtin_key", flat=True))
    assert keys == {"arithmetic_en", "arithmetic_zh", "tool_use", "humaneval", "shakespeare", "tang_poetry"}
    assert services.builtin_suite().items.count() == 6
    agent = Suite.objects.get(name="agent").versions.get()  # what the Quick start evaluates on
    assert [i.benchmark_version.benchmark.builtin_key for i in agent.items.select_related("benchmark_version__benchmark")] == ["tool_use"]
    assert EvaluationRun.objects.count() == 0
