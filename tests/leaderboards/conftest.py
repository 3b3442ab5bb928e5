"""Fixtures for the leaderboards: a data dir of each test's own, dataset and model versions with
real files where the core reads them, benchmarks and suites, and finished runs with stored
scores (for boards, comparisons and access tests that need no model)."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from django.utils import timezone

from tests.conftest import own_data_dir

# A tiny multiple-choice set (hand-made): four options, the answer a letter.
MC_ROWS = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "answer": "B"},
    {"question": "Which is a colour?", "choices": ["red", "run", "rain", "rock"], "answer": "A"},
    {"question": "The capital of France is", "choices": ["Rome", "Berlin", "Paris", "Madrid"], "answer": "C"},
    {"question": "Water freezes at", "choices": ["50 C", "100 C", "10 C", "0 C"], "answer": "D"},
    {"question": "How many legs has a spider?", "choices": ["6", "8", "10", "4"], "answer": "B"},
    {"question": "Opposite of hot?", "choices": ["cold", "warm", "big", "fast"], "answer": "A"},
]
QA_ROWS = [{"question": f"What is {a} + {b}?", "answer": f"#### {a + b}"} for a, b in ((1, 2), (3, 4), (5, 6), (7, 8))]
TEXT_ROWS = [{"text": "To be, or not to be, that is the question."}, {"text": "All the world's a stage."}]
ROWS = {"multiple_choice": MC_ROWS, "qa": QA_ROWS, "text": TEXT_ROWS,
        "chat": [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, settings, monkeypatch):
    """Each test's own data dir (the core confines every spec path to PUYU_DATA_DIR)."""
    return own_data_dir(tmp_path, settings, monkeypatch)


def imported(user, relative: str, fmt: str, name: str):
    """A dataset version made as a user makes one: the licensed excerpt (tests/fixtures/data)
    uploaded and imported by the Datasets job (run here, as the registry and datasets tests do)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from apps.datasets import services as datasets
    from apps.datasets.models import DatasetVersion
    from apps.jobs.models import JobStatus
    from tests.fixtures.data import excerpt
    from workers.tasks.datasets import dataset_import

    path = excerpt(relative)
    _, job = datasets.upload_file(user, SimpleUploadedFile(path.name, path.read_bytes()), dataset_name=name, fmt=fmt)
    dataset_import.run(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return DatasetVersion.objects.get(source_job=job)


@pytest.fixture
def make_dataset():
    """A dataset version with its JSONL written where the version says."""
    from apps.datasets.models import Dataset, DatasetVersion

    def make(user, canonical="multiple_choice", name=None, rows=None, parent=None, source_job=None):
        rows = ROWS[canonical] if rows is None else rows
        dataset, _ = Dataset.objects.get_or_create(owner=user, name=name or f"{canonical}-set")
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        version = DatasetVersion.objects.create(
            dataset=dataset, number=dataset.versions.count() + 1, source="upload", source_format=canonical,
            canonical=canonical, sha256=hashlib.sha256(body).hexdigest(), rows=len(rows), size_bytes=len(body),
            parent=parent, source_job=source_job, created_by=user)
        version.path.write_bytes(body)
        return version

    return make


@pytest.fixture
def make_version():
    """A registered model version (no files unless `source` names a model folder to copy)."""
    from apps.registry.models import ModelVersion, RegisteredModel

    def make(user, name="tiny", kind="base", parameter_count=100_000, parent=None, source_job=None, source=None):
        model, _ = RegisteredModel.objects.get_or_create(owner=user, name=name)
        version = ModelVersion.objects.create(model=model, number=model.versions.count() + 1, kind=kind, parent=parent,
                                              source="import:folder", source_job=source_job,
                                              architecture="LlamaForCausalLM", parameter_count=parameter_count,
                                              created_by=user)
        if source is not None:
            shutil.copytree(source, version.path)
        else:
            version.path.mkdir(parents=True)  # the submit checks the folder is there
        return version

    return make


LIKELIHOOD = {"paradigm": "likelihood"}


@pytest.fixture
def make_benchmark(make_dataset):
    """A benchmark (its first version) on a fresh dataset version of the shape's records."""
    from apps.leaderboards import services

    def make(user, name="quiz", shape="multiple_choice", scorer=None, dimension="knowledge", data=None, **fields):
        data = data or make_dataset(user, shape, name=f"{name}-data")
        scorer = scorer or {"multiple_choice": LIKELIHOOD, "qa": {"paradigm": "generation", "extractor": "gsm8k"},
                            "text": {"paradigm": "perplexity"}}[shape]
        return services.create_benchmark(user, name=name, dataset_version=data, shape=shape, scorer=scorer,
                                         dimension=dimension, **fields)

    return make


@pytest.fixture
def make_suite():
    from apps.leaderboards import services

    def make(user, versions, name="core", weights=None):
        weights = weights or [1.0] * len(versions)
        return services.create_suite(user, name=name, items=list(zip(versions, weights)))

    return make


@pytest.fixture
def finished_run():
    """A run of `version` on `suite_version` marked finished with the given scores stored:
    {benchmark version: [per-sample correct (bool) or {"nll", "bytes"}]}."""
    from apps.jobs.models import Job, JobStatus
    from apps.leaderboards import services
    from apps.leaderboards.models import BenchmarkScore, SampleResult
    from workers.tasks.catalog import wilson

    def make(user, suite_version, version, samples, status=JobStatus.SUCCEEDED, **submit):
        run = services.submit_evaluation(user, suite_version=suite_version, model_version=version, **submit)
        Job.objects.filter(pk=run.job_id).update(status=status, finished_at=timezone.now())
        if status != JobStatus.SUCCEEDED:
            return run
        for bv, values in samples.items():
            perplexity = isinstance(values[0], dict)
            if perplexity:
                nll, size = sum(v["nll"] for v in values), sum(v["bytes"] for v in values)
                fields = {"metric": "bits_per_byte", "score": nll / (0.6931471805599453 * size), "n": len(values)}
            else:
                right = sum(values)
                low, high = wilson(right, len(values))
                fields = {"metric": "accuracy", "score": right / len(values), "ci_low": low, "ci_high": high,
                          "n": len(values), "correct": right}
            score = BenchmarkScore.objects.create(run=run, benchmark_version=bv, **fields)
            SampleResult.objects.bulk_create([
                SampleResult(score=score, index=i, prompt=f"prompt {i}", output=f"out {i}", reference="ref",
                             correct=None if perplexity else bool(v), detail=v if perplexity else {})
                for i, v in enumerate(values)])
        run.refresh_from_db()
        return run

    return make


@pytest.fixture
def api(client, api_token):
    """call(user, method, path, body=None) through the JSON API with the user's token."""
    def call(user, method, path, body=None, **extra):
        kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
        return getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {api_token(user)}", **kwargs, **extra)

    return call
