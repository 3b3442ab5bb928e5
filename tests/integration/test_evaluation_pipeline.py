"""Evaluation runs on a real Redis and real Celery workers (tests/stack.py), a tiny Llama registered
as a version and two benchmarks made as a user makes them (dataset uploads imported by the
Datasets job, benchmarks, suites and runs through the JSON API): a worker killed mid-run hands the
job to another one, which resumes from the cached predictions and ends with the scores and every
per-sample decision of an uninterrupted run; the same run requested twice is one run and one
leaderboard row; a changed scorer re-scores the cached predictions without running the model."""
from __future__ import annotations

import json
import os

import pytest
from django.conf import settings

from apps.jobs.models import Job, JobMetric, JobStatus
from apps.leaderboards.models import BenchmarkScore, EvaluationRun, SampleResult
from tests.leaderboards.conftest import api, data_dir, imported, make_version  # noqa: F401 (fixtures; data_dir is autouse)
from tests.reliability.conftest import finished
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LETTERS = "ABCD"
# Option texts as continuations (several tokens each), so a normalisation can change a decision.
MC_SCORER = {"paradigm": "likelihood", "continuation": "text"}
QA_SCORER = {"paradigm": "generation", "extractor": "gsm8k"}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """initializer_range=0.5 spreads the logits, so no decision hangs on float rounding; 1,024
    positions hold a GSM8K question in the tiny tokenizer's tokens (~270) and its answer."""
    from tests.fixtures.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("eval-pipeline") / "model", seed=0, initializer_range=0.5,
                            max_position_embeddings=1024)


@pytest.fixture
def suite(users, api):  # noqa: F811
    """The owner's suite of a multiple-choice benchmark (MMLU virology, 19 questions, likelihood)
    and a qa one (GSM8K, 20 questions, greedy generation), made through the API."""
    owner = users["owner"]
    mc_data = imported(owner, "mmlu/test/virology_test.csv", "multiple_choice", "virology")
    qa_data = imported(owner, "gsm8k/test.jsonl", "qa", "gsm8k")
    assert (mc_data.canonical, mc_data.rows, qa_data.canonical, qa_data.rows) == ("multiple_choice", 19, "qa", 20)
    made = {}
    for name, data, shape, scorer, dimension in (("mc", mc_data, "multiple_choice", MC_SCORER, "knowledge"),
                                                  ("qa", qa_data, "qa", QA_SCORER, "math")):
        response = api(owner, "post", "/api/benchmarks", {"name": name, "dataset_version_id": data.pk, "shape": shape,
                                                          "scorer": scorer, "dimension": dimension})
        assert response.status_code == 201, response.content
        made[name] = response.json()
    response = api(owner, "post", "/api/suites", {"name": "pipeline", "items": [
        {"benchmark_version_id": made["mc"]["latest"]["id"]}, {"benchmark_version_id": made["qa"]["latest"]["id"]}]})
    assert response.status_code == 201, response.content
    return {"id": response.json()["id"], "mc": made["mc"], "qa": made["qa"], "rows": {
        "mc": [json.loads(line) for line in mc_data.path.read_text(encoding="utf-8").splitlines()],
        "qa": [json.loads(line) for line in qa_data.path.read_text(encoding="utf-8").splitlines()]}}


def submit(api, user, body, status):  # noqa: F811
    response = api(user, "post", "/api/evaluations", body)
    assert response.status_code == status, response.content
    return response.json()


def samples_of(run_id: int, name: str) -> list[SampleResult]:
    score = BenchmarkScore.objects.get(run_id=run_id, benchmark_version__benchmark__name=name)
    return list(score.samples.order_by("index"))


def reference_run(job: Job) -> dict:
    """The same spec run uninterrupted, in this process, on a fresh prediction cache: the
    result and each benchmark's per-sample rows (read from the files the runner writes)."""
    from workers.core.kinds import run_core_job
    from workers.core.reporting import ConsoleReporter

    cache_dir = settings.EVALUATION_DIR / "reference"
    with open(os.devnull, "w") as quiet:
        result = run_core_job("evaluate", {**job.params, "cache_dir": str(cache_dir)}, ConsoleReporter(stream=quiet))
    samples = {name: [json.loads(line) for line in (cache_dir / bench["samples_file"]).read_text("utf-8").splitlines()]
               for name, bench in result["benchmarks"].items()}
    return {"result": result, "samples": samples}


def test_a_killed_workers_evaluation_resumes_from_the_cached_predictions_with_the_decisions_of_an_uninterrupted_run(
        stack, users, api, make_version, tiny_llama, suite):  # noqa: F811
    owner = users["owner"]
    version = make_version(owner, source=tiny_llama)
    for name in ("gpu0", "gpu1"):  # the second one takes the job over
        stack.worker(name, "gpu")
    stack.beat()  # the reaper hands a lost worker's job on once its (3 s, tests/env_plugin.py) lease expires
    body = {"suite_id": suite["id"], "model_version_id": version.pk, "max_new_tokens": 32, "batch_size": 2}
    run = submit(api, owner, body, 201)
    job = Job.objects.get(pk=run["job"]["id"])

    # SIGKILL once some qa predictions are cached (the running accuracy is a metric per batch,
    # written after the batch is committed to the cache): the multiple-choice benchmark is done.
    wait_for(lambda: JobMetric.objects.filter(job=job, name="qa/accuracy", step__gte=4).exists(), 240, 0.02,
             f"two qa batches\n{stack.log('gpu0')[-3000:]}\n{stack.log('gpu1')[-3000:]}")
    killed = Job.objects.get(pk=job.pk).lease_owner.split("@")[0]
    stack.kill(killed)
    done_at_kill = max(JobMetric.objects.filter(job=job, name="qa/accuracy").values_list("step", flat=True))
    assert done_at_kill < 20, "the run finished before the kill: make it longer"
    reference = reference_run(job)  # meanwhile: the lease expires, the other worker resumes

    survivor = "gpu1" if killed == "gpu0" else "gpu0"
    job = finished(job, stack, worker=survivor)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2 and job.lease_owner.startswith(f"{survivor}@")
    log = list(job.log_lines.values_list("message", flat=True))
    assert any(line.startswith("worker lost") for line in log)
    resumed = job.result["benchmarks"]
    assert (resumed["mc"]["cached"], resumed["mc"]["computed"]) == (19, 0)
    assert done_at_kill <= resumed["qa"]["cached"] < 20 and resumed["qa"]["computed"] == 20 - resumed["qa"]["cached"]
    qa_hash = suite["qa"]["latest"]["version_hash"]
    assert f"qa: 20 samples, {resumed['qa']['cached']} cached (benchmark {qa_hash[:12]})" in log
    assert EvaluationRun.objects.get(pk=run["id"]).scores.get(benchmark_version__benchmark__name="qa").extra["cached"] \
        == resumed["qa"]["cached"]

    assert reference["result"]["model_hash"] == job.result["model_hash"]
    for name, n in (("mc", 19), ("qa", 20)):
        mine, theirs = resumed[name], reference["result"]["benchmarks"][name]
        assert theirs["computed"] == n and theirs["cached"] == 0  # the reference ran the model on every row
        assert {k: mine[k] for k in ("score", "ci_low", "ci_high", "n", "correct", "benchmark_hash")} \
            == {k: theirs[k] for k in ("score", "ci_low", "ci_high", "n", "correct", "benchmark_hash")}
        stored, expected = samples_of(run["id"], name), reference["samples"][name]
        assert [s.index for s in stored] == list(range(n))
        assert [(s.prompt, s.extracted, s.reference, s.correct) for s in stored] \
            == [(e["prompt"], e["extracted"] or "", e["reference"], e["correct"]) for e in expected]
        if name == "mc":
            for sample, row in zip(stored, expected):
                assert sample.detail["option_logprobs"] == pytest.approx(row["option_logprobs"], abs=1e-5)
        else:  # greedy outputs, the same text whether the batch ran before or after the kill
            assert [s.output for s in stored] == [e["output"] for e in expected]


def test_the_same_run_requested_twice_is_one_run_and_one_row_and_a_changed_scorer_rescores_without_the_model(
        stack, users, api, make_version, tiny_llama, suite):  # noqa: F811
    owner = users["owner"]
    version = make_version(owner, source=tiny_llama)
    body = {"suite_id": suite["id"], "model_version_id": version.pk, "max_samples": 6, "max_new_tokens": 8,
            "batch_size": 3}
    first = submit(api, owner, body, 201)
    assert submit(api, owner, body, 200)["id"] == first["id"]  # queued: the same run
    stack.worker("gpu0", "gpu")
    job = finished(Job.objects.get(pk=first["job"]["id"]), stack)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert submit(api, owner, body, 200)["id"] == first["id"]  # succeeded: still the same run
    assert EvaluationRun.objects.count() == 1 and Job.objects.filter(kind="evaluate").count() == 1
    board = api(owner, "get", f"/api/leaderboards/{suite['id']}").json()
    assert [row["run_id"] for row in board["rows"]] == [first["id"]]
    assert {b["name"] for b in board["benchmarks"]} == {"mc", "qa"}
    assert all(job.result["benchmarks"][name]["computed"] == 6 for name in ("mc", "qa"))

    # Per-character normalisation: a new benchmark version (a new hash), the same model outputs.
    old_hash = suite["mc"]["latest"]["version_hash"]
    response = api(owner, "put", f"/api/benchmarks/{suite['mc']['id']}",
                   {"scorer": {**MC_SCORER, "normalization": "per-character"}})
    assert response.status_code == 200, response.content
    edited = response.json()["latest"]
    assert edited["number"] == 2 and edited["version_hash"] != old_hash
    response = api(owner, "put", f"/api/suites/{suite['id']}", {"items": [
        {"benchmark_version_id": edited["id"]}, {"benchmark_version_id": suite["qa"]["latest"]["id"]}]})
    assert response.status_code == 200, response.content
    rescored = submit(api, owner, body, 201)  # the suite's latest version: a new run
    job = finished(Job.objects.get(pk=rescored["job"]["id"]), stack)
    assert job.status == JobStatus.SUCCEEDED, job.error
    result = job.result["benchmarks"]
    assert (result["mc"]["computed"], result["mc"]["cached"]) == (0, 6)  # re-scored from the cache
    assert (result["qa"]["computed"], result["qa"]["cached"]) == (0, 6)
    assert result["mc"]["benchmark_hash"] == edited["version_hash"]
    assert "mc: 6 samples, 6 cached" in " ".join(job.log_lines.values_list("message", flat=True))
    # Each new decision is the per-character argmax of the log-likelihoods the first run stored;
    # the first run's score keeps its version and hash.
    before, after = samples_of(first["id"], "mc"), samples_of(rescored["id"], "mc")
    assert len(before) == len(after) == 6
    for old, new, row in zip(before, after, suite["rows"]["mc"]):
        assert new.detail["option_logprobs"] == old.detail["option_logprobs"]
        per_char = [lp / len(" " + choice) for lp, choice in zip(old.detail["option_logprobs"], row["choices"])]
        assert new.extracted == LETTERS[max(range(len(per_char)), key=per_char.__getitem__)]
        assert new.correct == (new.extracted == row["answer"])
    assert BenchmarkScore.objects.get(run_id=first["id"], benchmark_version__benchmark__name="mc") \
        .benchmark_version.version_hash == old_hash
