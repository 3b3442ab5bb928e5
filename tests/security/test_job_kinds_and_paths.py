"""The critical hole of issue #10 and its two walls.

1. The generic job API (`POST /api/jobs`) and forms submit only the kinds that touch no file;
   every other kind is created by its app's service, which derives each path from ids.
2. The core refuses any spec path outside the data-dir subtree its field may use (symlinks
   resolved), so even a job row with hand-made params (a bug in a service) cannot reach the
   rest of the disk: a real worker fails it with the field named and writes nothing.
3. What users see of a job (job page, /api/jobs, a run's spec.yaml) holds no server path and no
   secret.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from django.conf import settings

from apps.jobs import services
from apps.jobs.models import Job, JobStatus
from tests.stack import wait_for
from workers.core.kinds import CORE_JOBS
from workers.core.specs import SpecError, build_spec

INTERNAL_KINDS = ["model_import", "model_merge", "model_quantize", "dataset_import", "dataset_clean",
                  "dataset_generate", "train", "serve"]


def call(client, method, path, token, body=None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    return getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {token}", **kwargs)


def tree_state(root: Path) -> dict[str, str]:
    """Every folder and file under the data dir with its content hash (not the job logs, the test
    database, or the scheduler's bookkeeping, which change with every job). Compared as a dict,
    a failure names what changed."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("jobs", "staticfiles")]
        for name in dirnames:
            state[str(Path(dirpath, name).relative_to(root)) + "/"] = "dir"
        for name in filenames:
            if "sqlite" in name or name.endswith((".log", "-journal", "-wal", "-shm")) or name.startswith("celerybeat"):
                continue
            path = Path(dirpath, name)
            state[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest()
                                                  if path.is_file() and not path.is_symlink() else "link")
    return state


def tree_hash(state: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:12]


@pytest.fixture
def victims(users):
    """What an attacker would go for: the admin password file, another user's dataset version
    and model version, a checkpoint of another user's run, and the attacker's own version file."""
    data = settings.DATA_DIR
    planted = {
        "password": data / "admin_password.txt",
        "their_rows": settings.DATASET_STORE_DIR / "victim-rows.jsonl",
        "their_model": settings.MODEL_STORE_DIR / "victim-model",
        "their_checkpoint": data / "checkpoints" / "victim-run" / "checkpoint-5",
        "own_rows": settings.DATASET_STORE_DIR / "attacker-own.jsonl",
    }
    created = []
    if not planted["password"].exists():
        planted["password"].write_text("admin:s3cret-password\n")
        created.append(planted["password"])
    planted["their_rows"].write_text('{"text": "a private document"}\n')
    planted["their_model"].mkdir(parents=True, exist_ok=True)
    (planted["their_model"] / "config.json").write_text('{"model_type": "llama"}')
    planted["their_checkpoint"].mkdir(parents=True, exist_ok=True)
    (planted["their_checkpoint"] / "manifest.json").write_text('{"complete": true, "step": 5}')
    planted["own_rows"].write_text('{"text": "mine"}\n')
    created += [planted["their_rows"], planted["their_model"], planted["their_checkpoint"].parent, planted["own_rows"]]
    yield planted
    import shutil

    for path in created:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def repros(victims) -> dict[str, dict]:
    """The repros of the issue, as an attacker would post them to /api/jobs."""
    return {
        "model_import rmtree of every model version": {
            "kind": "model_import", "params": {"source": "starter", "output_dir": str(settings.MODEL_STORE_DIR)}},
        "dataset_import of the admin password into the caller's own version": {
            "kind": "dataset_import", "params": {"path": str(victims["password"]), "filename": "x.txt", "format": "text",
                                                 "output_path": str(victims["own_rows"])}},
        "dataset_clean of another user's version": {
            "kind": "dataset_clean", "params": {"input_path": str(victims["their_rows"]), "canonical": "text",
                                                "output_path": str(settings.DATASET_STORE_DIR / "stolen.jsonl")}},
        "model_import of another user's model": {
            "kind": "model_import", "params": {"source": "folder", "path": str(victims["their_model"]),
                                               "output_dir": str(settings.MODEL_STORE_DIR / "stolen")}},
        "train on another user's data, checkpoint and tokenizer": {
            "kind": "train", "params": {"method": "pretrain", "tokenizer": str(victims["their_model"]),
                                        "train_files": [str(victims["their_rows"])],
                                        "resume_from": str(victims["their_checkpoint"]),
                                        "output_dir": str(settings.MODEL_STORE_DIR / "stolen"),
                                        "checkpoint_dir": str(settings.DATA_DIR / "checkpoints" / "stolen")}},
    }


# ---- wall 1: the generic API and forms ----------------------------------------------------

@pytest.mark.promise("generic job API refuses internal kinds")
@pytest.mark.parametrize("kind", INTERNAL_KINDS)
def test_the_generic_api_refuses_every_internal_kind_with_a_422_naming_kind_and_where_to_go(client, users, api_token, kind):
    response = call(client, "post", "/api/jobs", api_token(users["owner"]), {"kind": kind, "params": {}})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("kind:") and "created only through" in detail and "/api/" in detail
    assert not Job.objects.exists()


@pytest.mark.promise("generic job API refuses internal kinds")
def test_the_generic_forms_offer_only_diagnostics_and_probe(client, users):
    client.force_login(users["owner"])
    assert client.get("/jobs/new/probe/").status_code == 200
    for kind in INTERNAL_KINDS:
        assert client.post(f"/jobs/new/{kind}/", {"queue": "cpu"}).status_code == 404
    assert not Job.objects.exists()


@pytest.mark.promise("generic job API refuses internal kinds")
def test_the_openapi_document_lists_only_the_generic_kinds_for_new_jobs(client):
    schema = client.get("/api/openapi.json").json()
    body = schema["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[-1]
    assert schema["components"]["schemas"][ref]["properties"]["kind"]["enum"] == ["diagnostics", "probe"]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.promise("generic job API refuses internal kinds")
def test_each_repro_of_the_issue_through_the_api_with_a_real_worker_is_refused_and_the_data_dir_is_unchanged(
        stack, client, users, api_token, victims, promise_figure):
    stack.worker("cpu0", "gpu,cpu")
    token = api_token(users["outsider"])
    # The worker is really there and takes the jobs that are allowed.
    control = call(client, "post", "/api/jobs", token, {"kind": "probe", "params": {"seconds": 0}})
    assert control.status_code == 201
    wait_for(lambda: Job.objects.get(pk=control.json()["id"]).status == JobStatus.SUCCEEDED, 60, 0.1, "the probe to run")
    before = tree_state(settings.DATA_DIR)
    for name, body in repros(victims).items():
        response = call(client, "post", "/api/jobs", token, body)
        assert response.status_code == 422, name
        assert response.json()["detail"].startswith("kind:"), name
    assert Job.objects.count() == 1  # only the probe
    assert tree_state(settings.DATA_DIR) == before
    assert (settings.MODEL_STORE_DIR / "victim-model" / "config.json").exists()
    promise_figure(f"{len(repros(victims))} repros refused with 422; data dir {len(before)} entries, "
                   f"hash {tree_hash(before)} before and after")


# ---- wall 2: the core, even for a job row no service checked ------------------------------

def hand_made_rows(victims) -> list[dict]:
    """Job rows a buggy service could store: each reaches outside the subtree its field may use.
    (Another user's file *inside* the right subtree is the first wall's business: only the
    services know who may see what, and they derive every path from visible ids.)"""
    data = settings.DATA_DIR
    return [
        {"kind": "model_import", "params": {"source": "starter", "output_dir": str(settings.MODEL_STORE_DIR)}},
        {"kind": "dataset_import", "params": {"path": str(victims["password"]), "filename": "x.txt", "format": "text",
                                              "output_path": str(victims["own_rows"])}},
        {"kind": "dataset_clean", "params": {"input_path": str(data / "secret_key"), "canonical": "text",
                                             "output_path": str(settings.DATASET_STORE_DIR / "stolen.jsonl")}},
        {"kind": "model_import", "params": {"source": "folder", "path": str(victims["their_model"]),
                                            "output_dir": str(settings.MODEL_STORE_DIR / "stolen")}},
        {"kind": "train", "params": {"method": "pretrain", "train_files": [str(victims["password"])],
                                     "output_dir": str(settings.MODEL_STORE_DIR / "stolen"),
                                     "checkpoint_dir": str(data / "checkpoints" / "stolen")}},
        {"kind": "train", "params": {"method": "pretrain", "train_files": [str(victims["their_rows"])],
                                     "resume_from": str(victims["their_model"]),
                                     "output_dir": str(settings.MODEL_STORE_DIR / "stolen"),
                                     "checkpoint_dir": str(data / "checkpoints" / "stolen")}},
    ]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.promise("core refuses paths outside the data dir")
def test_a_job_row_with_hand_made_paths_fails_on_the_real_worker_naming_the_field_and_writes_nothing(
        stack, users, victims, promise_figure):
    """A bug in a service that stored such rows: the worker's own spec check refuses each one
    before it touches a file."""
    stack.worker("cpu0", "gpu,cpu")
    before = tree_state(settings.DATA_DIR)
    jobs = []
    for body in hand_made_rows(victims):
        job = Job.objects.create(owner=users["outsider"], kind=body["kind"], params=body["params"], queue="cpu",
                                 max_attempts=1, celery_task_id=f"job-hand-made-{len(jobs)}")
        assert services.dispatch(job.pk)
        jobs.append(job)
    wait_for(lambda: all(Job.objects.get(pk=j.pk).status == JobStatus.FAILED for j in jobs), 120, 0.2,
             "every hand-made job to fail")
    for job in jobs:
        job.refresh_from_db()
        assert "refused: the path must lie inside" in job.error, (job.kind, job.error, stack.log("cpu0")[-2000:])
        assert str(settings.DATA_DIR) not in job.error  # the error shows no server path
    assert tree_state(settings.DATA_DIR) == before
    assert (settings.MODEL_STORE_DIR / "victim-model" / "config.json").exists()
    promise_figure(f"{len(jobs)} hand-made jobs FAILED on the worker naming the field; data dir hash "
                   f"{tree_hash(before)} before and after")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A data dir of the test's own, with the subtrees, a file outside them, and symlinks inside
    the store that point out of it."""
    data = tmp_path / "data"
    for sub in ("models", "datasets", "uploads", "checkpoints", "import"):
        (data / sub).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    (data / "admin_password.txt").write_text("s3cret")
    for sub in ("models", "datasets", "uploads", "checkpoints", "import"):
        (data / sub / "link-out").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("PUYU_DATA_DIR", str(data))
    monkeypatch.delenv("PUYU_MODEL_IMPORT_DIRS", raising=False)
    return data


def valid_params(data: Path) -> dict[str, dict]:
    """One accepted spec per kind (paths where its service puts them)."""
    m, d, u, c = (f"{data}/{sub}" for sub in ("models", "datasets", "uploads", "checkpoints"))
    return {
        "dataset_import": {"path": f"{u}/upload.jsonl", "filename": "a.jsonl", "output_path": f"{d}/v1.jsonl",
                           "tokenizer_dir": f"{m}/tok"},
        "dataset_clean": {"input_path": f"{d}/v1.jsonl", "canonical": "text", "output_path": f"{d}/v2.jsonl",
                          "eval_paths": [f"{d}/eval.jsonl"], "eval_canonicals": ["qa"]},
        "dataset_generate": {"output_path": f"{d}/gen.jsonl"},
        "model_import:folder": {"source": "folder", "path": f"{data}/import/tiny", "output_dir": f"{m}/new"},
        "model_import:archive": {"source": "archive", "path": f"{u}/model.zip", "output_dir": f"{m}/new"},
        "model_merge": {"base_dir": f"{m}/base", "adapter_dir": f"{m}/adapter", "output_dir": f"{m}/merged"},
        "model_quantize": {"source_dir": f"{m}/base", "output_dir": f"{m}/q"},
        "train": {"base_model_dir": f"{m}/base", "train_files": [f"{d}/v1.jsonl"], "eval_files": [f"{d}/eval.jsonl"],
                  "resume_from": f"{c}/run/checkpoint-5", "output_dir": f"{m}/trained", "checkpoint_dir": f"{c}/run2"},
        "train:pretrain": {"method": "pretrain", "tokenizer": f"{m}/tok", "train_files": [f"{d}/v1.jsonl"],
                           "output_dir": f"{m}/trained", "checkpoint_dir": f"{c}/run2"},
    }


# (spec, field, the subtree its service uses, is a list)
PATH_FIELDS = [
    ("dataset_import", "path", "uploads", False), ("dataset_import", "output_path", "datasets", False),
    ("dataset_import", "tokenizer_dir", "models", False),
    ("dataset_clean", "input_path", "datasets", False), ("dataset_clean", "output_path", "datasets", False),
    ("dataset_clean", "eval_paths", "datasets", True),
    ("dataset_generate", "output_path", "datasets", False),
    ("model_import:folder", "path", "import", False), ("model_import:archive", "path", "uploads", False),
    ("model_import:folder", "output_dir", "models", False),
    ("model_merge", "base_dir", "models", False), ("model_merge", "adapter_dir", "models", False),
    ("model_merge", "output_dir", "models", False),
    ("model_quantize", "source_dir", "models", False), ("model_quantize", "output_dir", "models", False),
    ("train", "base_model_dir", "models", False), ("train", "train_files", "datasets", True),
    ("train", "eval_files", "datasets", True), ("train", "resume_from", "checkpoints", False),
    ("train", "output_dir", "models", False), ("train", "checkpoint_dir", "checkpoints", False),
    ("train:pretrain", "tokenizer", "models", False),
]

# Each entry: what a value looks like, given the data dir and the field's own subtree.
TRAVERSAL_CORPUS = {
    "dot-dot out of the subtree": "{data}/{sub}/../admin_password.txt",
    "dot-dot out of the data dir": "{data}/{sub}/../../outside/passwd",
    "backslash dot-dot": "{data}/{sub}/..\\..\\admin_password.txt",
    "percent-encoded dot-dot": "{data}/{sub}/%2e%2e%2fadmin_password.txt",
    "double-encoded dot-dot": "{data}/{sub}/%252e%252e%252fadmin_password.txt",
    "absolute outside": "/etc/passwd",
    "the data dir's own files": "{data}/admin_password.txt",
    "the whole subtree": "{data}/{sub}",
    "the whole subtree, trailing slash": "{data}/{sub}/",
    "another subtree": "{data}/{other}/x",
    "file URL": "file://{data}/{sub}/x",
    "NUL byte": "{data}/{sub}/x\x00.jsonl",
    "newline": "{data}/{sub}/x\n/etc/passwd",
    "relative": "{sub}/x",
    "home": "~/x",
    "symlink in the store pointing out": "{data}/{sub}/link-out/passwd",
}


def attack(params: dict, field: str, is_list: bool, value: str) -> dict:
    return {**params, field: [value] if is_list else value}


def spec_class(key: str):
    return CORE_JOBS[key.split(":")[0]].spec_class


def test_the_valid_specs_of_the_corpus_are_accepted(data_dir):
    for key, params in valid_params(data_dir).items():
        build_spec(spec_class(key), params)  # the refusals below are due to the one bad value


@pytest.mark.promise("core refuses paths outside the data dir")
@pytest.mark.parametrize("name", list(TRAVERSAL_CORPUS))
@pytest.mark.parametrize("key, field, sub, is_list", PATH_FIELDS, ids=[f"{k}.{f}" for k, f, _, _ in PATH_FIELDS])
def test_every_spec_path_field_refuses_the_traversal_corpus(data_dir, key, field, sub, is_list, name):
    other = "checkpoints" if sub != "checkpoints" else "models"
    value = TRAVERSAL_CORPUS[name].format(data=data_dir, sub=sub, other=other)
    with pytest.raises(SpecError) as info:
        build_spec(spec_class(key), attack(valid_params(data_dir)[key], field, is_list, value))
    assert info.value.field == (f"{field}[0]" if is_list else field)
    assert str(data_dir) not in str(info.value) and "/etc" not in str(info.value)  # no server path in the error


@pytest.mark.promise("core refuses paths outside the data dir")
def test_a_store_that_is_itself_a_symlink_to_another_disk_still_works(tmp_path, monkeypatch):
    """Operators move `models/` to a bigger disk with a symlink: its paths stay inside."""
    data, disk = tmp_path / "data", tmp_path / "big-disk"
    data.mkdir()
    disk.mkdir()
    (data / "models").symlink_to(disk, target_is_directory=True)
    monkeypatch.setenv("PUYU_DATA_DIR", str(data))
    build_spec(spec_class("model_quantize"), {"source_dir": f"{data}/models/a", "output_dir": f"{data}/models/b"})
    with pytest.raises(SpecError):
        build_spec(spec_class("model_quantize"), {"source_dir": f"{data}/models/a", "output_dir": str(disk)})


def test_an_import_folder_configured_by_the_server_may_be_read_but_not_a_symlink_out_of_it(data_dir, tmp_path, monkeypatch):
    imports = tmp_path / "shared-models"
    (imports / "tiny").mkdir(parents=True)
    (imports / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    monkeypatch.setenv("PUYU_MODEL_IMPORT_DIRS", str(imports))
    params = {"source": "folder", "output_dir": f"{data_dir}/models/new"}
    build_spec(spec_class("model_import"), {**params, "path": str(imports / "tiny")})
    with pytest.raises(SpecError, match="import folder"):
        build_spec(spec_class("model_import"), {**params, "path": str(imports / "escape")})


@pytest.mark.parametrize("kind, params, field", [
    ("probe", {"seconds": 3601}, "seconds"),
    ("diagnostics", {"steps": 10_000, "min_step_seconds": 600}, "min_step_seconds"),
])
def test_how_long_a_generic_job_may_hold_a_worker_is_bounded(kind, params, field):
    with pytest.raises(SpecError) as info:
        build_spec(CORE_JOBS[kind].spec_class, params)
    assert info.value.field == field


def test_a_training_job_may_not_launch_more_processes_than_the_limit(data_dir, monkeypatch):
    params = valid_params(data_dir)["train"]
    build_spec(spec_class("train"), {**params, "num_processes": 8})
    with pytest.raises(SpecError) as info:
        build_spec(spec_class("train"), {**params, "num_processes": 9})
    assert info.value.field == "num_processes" and "8" in info.value.reason
    monkeypatch.setenv("PUYU_MAX_TRAIN_PROCESSES", "16")  # a bigger node
    build_spec(spec_class("train"), {**params, "num_processes": 16})


# ---- what users see ------------------------------------------------------------------------

REDIS_WITH_PASSWORD = "redis://:hunter2-redis-password@127.0.0.1:6390/0"
ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:tmp|etc|home|root|var|srv|work|usr|mnt|opt|data)\b")


def assert_no_server_path_or_secret(text: str) -> None:
    assert str(settings.DATA_DIR) not in text
    assert "hunter2" not in text and "redis://" not in text
    assert not ABSOLUTE.search(text), ABSOLUTE.search(text)


@pytest.fixture
def shown_jobs(users):
    """A training run, a dataset job and a replica job as stored: absolute paths, and (as older
    replica rows had) the Redis URL with its password."""
    from apps.registry.models import RegisteredModel
    from apps.training.models import TrainingRun

    owner = users["owner"]
    ckpt = settings.DATA_DIR / "checkpoints" / "run-uid"
    train = services.submit_job(owner, "train", {
        "base_model_dir": str(settings.MODEL_STORE_DIR / "base-uid"), "train_files": [str(settings.DATASET_STORE_DIR / "v1.jsonl")],
        "resume_from": str(ckpt / "checkpoint-5"), "output_dir": str(settings.MODEL_STORE_DIR / "out-uid"),
        "checkpoint_dir": str(ckpt), "max_steps": 3})
    TrainingRun.objects.create(job=train, method="sft", finetune="lora", checkpoint_dir=str(ckpt),
                               target_model=RegisteredModel.objects.create(owner=owner, name="m"),
                               restarted_from=str(ckpt / "checkpoint-5"))
    Job.objects.filter(pk=train.pk).update(result={"resumed_from": str(ckpt / "checkpoint-5"), "facts": {"path": "/etc/x"}})
    clean = services.submit_job(owner, "dataset_clean", {
        "input_path": str(settings.DATASET_STORE_DIR / "v1.jsonl"), "canonical": "text",
        "output_path": str(settings.DATASET_STORE_DIR / "v2.jsonl")})
    serve = Job.objects.create(owner=owner, kind="serve", queue="serve", params={
        "deployment_id": 1, "replica_id": "r1", "redis_url": REDIS_WITH_PASSWORD,
        "model_dir": str(settings.MODEL_STORE_DIR / "base-uid"), "served_name": "chat"})
    return {"train": train, "clean": clean, "serve": serve}


@pytest.mark.promise("job params never show server paths or secrets")
def test_job_params_in_the_api_hold_no_server_path_and_no_redis_url(client, users, api_token, shown_jobs):
    token = api_token(users["teammate"])
    listed = call(client, "get", "/api/jobs", token)
    assert listed.status_code == 200 and listed.json()["count"] == 3
    assert_no_server_path_or_secret(listed.content.decode())
    one = call(client, "get", f"/api/jobs/{shown_jobs['train'].pk}", token).json()
    assert one["params"]["output_dir"] == "models/out-uid" and one["params"]["train_files"] == ["datasets/v1.jsonl"]
    assert one["result"]["resumed_from"] == "checkpoints/run-uid/checkpoint-5"
    serve = call(client, "get", f"/api/jobs/{shown_jobs['serve'].pk}", token).json()
    assert "redis_url" not in serve["params"] and serve["params"]["model_dir"] == "models/base-uid"
    assert_no_server_path_or_secret(call(client, "get", f"/api/training/runs/{shown_jobs['train'].pk}", token).content.decode())


@pytest.mark.promise("job params never show server paths or secrets")
def test_the_job_pages_and_the_runs_spec_yaml_hold_no_server_path_and_no_redis_url(client, users, shown_jobs, promise_figure):
    import yaml

    client.force_login(users["teammate"])
    for job in shown_jobs.values():
        page = client.get(f"/jobs/{job.pk}/")
        assert page.status_code == 200
        assert_no_server_path_or_secret(page.content.decode())
    run_page = client.get(f"/training/{shown_jobs['train'].pk}/")
    assert run_page.status_code == 200
    assert_no_server_path_or_secret(run_page.content.decode())
    spec = client.get(f"/training/{shown_jobs['train'].pk}/spec.yaml")
    assert spec.status_code == 200
    assert_no_server_path_or_secret(spec.content.decode())
    assert yaml.safe_load(spec.content)["checkpoint_dir"] == "checkpoints/run-uid"
    # What the worker runs stays absolute.
    assert Job.objects.get(pk=shown_jobs["train"].pk).params["output_dir"] == str(settings.MODEL_STORE_DIR / "out-uid")
    promise_figure("3 job pages, a run page, spec.yaml, /api/jobs, /api/jobs/{id}, a run: 0 absolute paths, 0 Redis URLs")
