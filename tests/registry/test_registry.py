"""The model registry: imports (with refusals that store nothing), lineage, merge, quantize,
aliases, delete rules and who may see what."""
import io
import json
import tarfile
import zipfile

import pytest

from apps.jobs.models import Job, JobStatus
from apps.registry import services
from apps.registry.models import AliasMove, ModelVersion, RegisteredModel, VersionKind
from tests.fixtures.tiny_models import heldout_text

pytestmark = pytest.mark.django_db(transaction=True)  # tasks run with a heartbeat thread


def run(job: Job) -> Job:
    """Run the job's task in this process, as a worker would."""
    from workers.tasks import registry

    task = {"model_import": registry.model_import, "model_merge": registry.model_merge,
            "model_quantize": registry.model_quantize}[job.kind]
    task.run(job.pk)
    job.refresh_from_db()
    return job


def import_folder(user, offer, name="tiny", **kwargs) -> ModelVersion:
    job = run(services.start_import(user, source="folder", folder=offer(name, **kwargs), model_name=name))
    assert job.status == JobStatus.SUCCEEDED, job.error
    return ModelVersion.objects.get(source_job=job)


def test_importing_a_hugging_face_folder_registers_a_base_version_with_its_facts(owner, offer):
    version = import_folder(owner, offer)
    assert (version.kind, version.number, version.source) == (VersionKind.BASE, 1, "import:folder")
    assert version.architecture == "LlamaForCausalLM" and version.context_length == 256
    assert version.parameter_count > 0 and version.has_chat_template
    names = version.file_names()
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert sum(f["size"] for f in version.files) == version.size_bytes
    assert all(len(f["sha256"]) == 64 for f in version.files)
    assert (version.path / "config.json").exists()
    assert RegisteredModel.objects.get(pk=version.model_id).architecture == "LlamaForCausalLM"


def test_a_job_registers_exactly_one_version_even_if_delivered_twice(owner, offer):
    version = import_folder(owner, offer)
    job = version.source_job
    from workers.tasks.registry import model_import

    assert model_import.run(job.pk) == "skipped"
    assert ModelVersion.objects.filter(source_job=job).count() == 1
    assert services.register_version(job, job.result) == version


@pytest.mark.parametrize("name, mutate, named", [
    ("pickled", lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle"), "pytorch_model.bin"),
    ("custom-code", lambda d: (d / "modeling_evil.py").write_text("import os\n"), "modeling_evil.py"),
    ("auto-map", lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                                      "auto_map": {"AutoModel": "x.Y"}})), "auto_map"),
])
def test_pickle_weights_and_custom_code_are_refused_and_nothing_is_stored(owner, offer, settings, name, mutate, named):
    job = run(services.start_import(owner, source="folder", folder=offer(name, mutate=mutate), model_name=name))
    assert job.status == JobStatus.FAILED
    assert named in job.error
    assert not ModelVersion.objects.exists()
    assert list(settings.MODEL_STORE_DIR.iterdir()) == []  # no version folder, no partial copy


@pytest.mark.parametrize("value", ["0/../../etc", "0/", "1/tiny", "../tiny", "0/tiny/../x"])
def test_a_folder_outside_the_offered_choices_is_refused_before_any_job(owner, offer, value):
    offer("tiny")
    with pytest.raises(services.RegistryError):
        services.start_import(owner, source="folder", folder=value, model_name="x")
    assert not Job.objects.exists()


def upload_archive(client, token, files: dict[str, bytes], name="model.zip", model_name="from-archive"):
    buffer = io.BytesIO()
    if name.endswith(".zip"):
        with zipfile.ZipFile(buffer, "w") as archive:
            for member, data in files.items():
                archive.writestr(member, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for member, data in files.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    buffer.name = name
    buffer.seek(0)
    return client.post("/api/models/import/archive", {"archive": buffer, "model_name": model_name},
                       HTTP_AUTHORIZATION=f"Bearer {token}")


def folder_files(folder) -> dict[str, bytes]:
    return {f"tiny/{p.relative_to(folder)}": p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("archive_name", ["model.zip", "model.tar.gz"])
def test_an_uploaded_archive_is_imported_through_the_api(client, owner, api_token, tiny_model_source, settings, archive_name):
    response = upload_archive(client, api_token(owner), folder_files(tiny_model_source["model"]), archive_name)
    assert response.status_code == 201, response.content
    job = run(Job.objects.get(pk=response.json()["id"]))
    assert job.status == JobStatus.SUCCEEDED, job.error
    version = ModelVersion.objects.get(source_job=job)
    assert version.source == "import:archive" and "config.json" in version.file_names()
    assert list(settings.UPLOAD_DIR.glob("*.zip")) + list(settings.UPLOAD_DIR.glob("*.tar.gz")) == []  # upload cleaned up


def test_an_archive_with_a_parent_directory_member_is_refused_and_nothing_is_stored(client, owner, api_token, tiny_model_source, settings):
    files = {**folder_files(tiny_model_source["model"]), "../evil.txt": b"owned"}
    job = run(Job.objects.get(pk=upload_archive(client, api_token(owner), files).json()["id"]))
    assert job.status == JobStatus.FAILED and "../evil.txt" in job.error
    assert not ModelVersion.objects.exists()
    assert not (settings.DATA_DIR / "evil.txt").exists() and not (settings.MODEL_STORE_DIR.parent / "evil.txt").exists()
    assert list(settings.MODEL_STORE_DIR.iterdir()) == []


def test_an_upload_that_is_not_an_archive_is_refused_with_the_reason(client, owner, api_token):
    buffer = io.BytesIO(b"not a model")
    buffer.name = "weights.bin"
    response = client.post("/api/models/import/archive", {"archive": buffer, "model_name": "x"},
                           HTTP_AUTHORIZATION=f"Bearer {api_token(owner)}")
    assert response.status_code == 422 and "upload one of .zip, .tar, .tar.gz, .tgz" in response.json()["detail"]


def test_a_hub_import_on_an_offline_machine_fails_with_a_clear_reason(owner, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = run(services.start_import(owner, source="hub", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", model_name="hub"))
    assert job.status == JobStatus.FAILED
    assert "cannot reach the model hub" in job.error and "offline" in job.error


def test_an_adapter_imports_as_an_adapter_and_merges_into_a_version_with_lineage(owner, offer):
    base = import_folder(owner, offer, "base")
    job = run(services.start_import(owner, source="folder", folder=offer("lora", source="adapter"), model_name="lora",
                                    base_version=base))
    adapter = ModelVersion.objects.get(source_job=job)
    assert adapter.kind == VersionKind.ADAPTER and adapter.adapter_config["r"] == 4 and adapter.parent == base
    merge = run(services.start_merge(owner, adapter))
    assert merge.status == JobStatus.SUCCEEDED, merge.error
    merged = ModelVersion.objects.get(source_job=merge)
    assert (merged.kind, merged.parent, merged.adapter, merged.model) == (VersionKind.MERGED, base, adapter, adapter.model)
    assert merged.architecture == "LlamaForCausalLM" and merged.parameter_count == base.parameter_count


def test_only_an_adapter_with_a_base_can_be_merged(owner, offer):
    base = import_folder(owner, offer)
    with pytest.raises(services.RegistryError, match="only adapters can be merged"):
        services.start_merge(owner, base)
    orphan = ModelVersion.objects.get(source_job=run(services.start_import(
        owner, source="folder", folder=offer("lora", source="adapter"), model_name="orphan")))
    assert orphan.kind == VersionKind.ADAPTER and orphan.parent is None
    with pytest.raises(services.RegistryError, match="adapter with a base version"):
        services.start_merge(owner, orphan)


def test_a_full_model_imported_with_a_base_chosen_keeps_no_parent(owner, offer):
    base = import_folder(owner, offer, "base")
    other = ModelVersion.objects.get(source_job=run(services.start_import(
        owner, source="folder", folder=offer("full"), model_name="full", base_version=base)))
    assert (other.kind, other.parent) == (VersionKind.BASE, None)


def test_quantizing_records_the_size_and_the_perplexity_change(owner, offer):
    base = import_folder(owner, offer, source="trained")  # random weights would keep any perplexity
    job = run(services.start_quantize(owner, base, "int8", eval_text=heldout_text()[:2000]))
    assert job.status == JobStatus.SUCCEEDED, job.error
    quantized = ModelVersion.objects.get(source_job=job)
    assert quantized.kind == VersionKind.QUANTIZED and quantized.parent == base
    assert quantized.quantization["bits"] == 8
    assert quantized.size_bytes < base.size_bytes
    evaluation = quantized.evaluation
    assert set(evaluation) == {"perplexity_before", "perplexity_after", "perplexity_delta"}
    assert evaluation["perplexity_before"] < 512 / 3  # trained: far below uniform over the 512-token vocabulary
    assert evaluation["perplexity_delta"] == pytest.approx(evaluation["perplexity_after"] - evaluation["perplexity_before"], abs=2e-4)
    assert abs(evaluation["perplexity_delta"]) < 0.02 * evaluation["perplexity_before"]


def test_nf4_quantization_on_a_machine_without_a_gpu_fails_with_a_clear_reason(owner, offer):
    base = import_folder(owner, offer)
    job = services.start_quantize(owner, base, "nf4")
    assert job.queue == "gpu"
    job = run(job)
    assert job.status == JobStatus.FAILED and "needs a CUDA GPU" in job.error


def test_moving_an_alias_is_recorded_with_who_and_when(owner, offer, client):
    first = import_folder(owner, offer, "m1")
    second = run(services.start_import(owner, source="folder", folder=offer("m2"), model=first.model))
    second = ModelVersion.objects.get(source_job=second)
    assert second.number == 2
    services.move_alias(owner, first.model, "production", first)
    services.move_alias(owner, first.model, "production", second)
    services.move_alias(owner, first.model, "production", second)  # no-op: already there
    moves = list(AliasMove.objects.filter(alias__name="production").order_by("id"))
    assert [(m.from_version, m.to_version, m.moved_by) for m in moves] == [(None, first, owner), (first, second, owner)]
    client.force_login(owner)
    page = client.get(f"/models/{first.model_id}/").content.decode()
    assert "moved <b>production</b> from tiny v1 to tiny v2" in page.replace("m1 v", "tiny v")


def test_delete_is_refused_while_an_alias_a_derived_version_or_a_running_job_uses_the_version(owner, offer, settings):
    base = import_folder(owner, offer)
    services.move_alias(owner, base.model, "candidate", base)
    with pytest.raises(services.RegistryError, match="alias 'candidate' points to it"):
        services.delete_version(owner, base)
    base.aliases.all().delete()
    job = services.start_quantize(owner, base, "int8")  # queued: it will read the version
    with pytest.raises(services.RegistryError, match="uses it as source"):
        services.delete_version(owner, base)
    run(job)
    with pytest.raises(services.RegistryError, match="was derived from it"):
        services.delete_version(owner, base)
    quantized = ModelVersion.objects.get(source_job=job)
    path = quantized.path
    services.delete_version(owner, quantized)
    assert not path.exists() and not ModelVersion.objects.filter(pk=quantized.pk).exists()
    assert base.path.exists()


def test_owner_and_teammate_see_versions_files_and_downloads_and_the_outsider_gets_404(client, users, offer, api_token):
    version = import_folder(users["owner"], offer)
    urls = [f"/models/{version.model_id}/", f"/models/versions/{version.pk}/", f"/models/versions/{version.pk}/files/config.json",
            f"/models/versions/{version.pk}/download/"]
    for name, expected in (("owner", 200), ("teammate", 200), ("outsider", 404)):
        client.force_login(users[name])
        for url in urls:
            assert client.get(url).status_code == expected, (name, url)
        token = api_token(users[name], name)
        for url in (f"/api/versions/{version.pk}", f"/api/models/{version.model_id}", f"/api/versions/{version.pk}/download"):
            assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == expected, (name, url)
    response = client.delete(f"/api/versions/{version.pk}", HTTP_AUTHORIZATION=f"Bearer {api_token(users['teammate'], 't2')}")
    assert response.status_code == 403
    assert ModelVersion.objects.filter(pk=version.pk).exists()


def test_a_file_not_recorded_in_the_version_cannot_be_fetched(client, owner, offer):
    version = import_folder(owner, offer)
    client.force_login(owner)
    assert client.get(f"/models/versions/{version.pk}/files/../../secret_key").status_code == 404
    assert client.get(f"/models/versions/{version.pk}/files/nothing.json").status_code == 404


def test_an_exported_archive_holds_the_version_files_and_loads_in_plain_transformers(client, owner, offer, tmp_path):
    version = import_folder(owner, offer)
    client.force_login(owner)
    response = client.get(f"/models/versions/{version.pk}/download/")
    assert response.status_code == 200 and response.streaming
    data = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / "tiny-v1"
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == version.file_names()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert sum(p.numel() for p in model.parameters()) == version.parameter_count


def test_the_model_list_searches_and_filters(client, users, offer):
    import_folder(users["owner"], offer, "alpha-chat")
    RegisteredModel.objects.create(owner=users["teammate"], name="beta-base", architecture="Qwen2ForCausalLM")
    RegisteredModel.objects.create(owner=users["outsider"], name="gamma-secret")
    client.force_login(users["owner"])

    def names(query=""):
        page = client.get(f"/models/?{query}").content.decode()
        return {n for n in ("alpha-chat", "beta-base", "gamma-secret") if n in page}

    assert names() == {"alpha-chat", "beta-base"}
    assert names("q=alpha") == {"alpha-chat"}
    assert names("architecture=Qwen2ForCausalLM") == {"beta-base"}
    assert names("kind=base") == {"alpha-chat"}
    assert names("owner=teammate") == {"beta-base"}
    assert names("size=large") == set()
    assert names("size=small") == {"alpha-chat"}


@pytest.mark.slow
def test_the_packaged_starter_model_is_converted_once_into_a_chat_model_that_answers(owner):
    from workers.tasks.registry import model_import

    job = run(services.start_import(owner, source="starter", model_name="SmolLM2-135M-Instruct"))
    assert job.status == JobStatus.SUCCEEDED, job.error
    version = ModelVersion.objects.get(source_job=job)
    assert version.architecture == "LlamaForCausalLM" and version.has_chat_template
    assert 130_000_000 < version.parameter_count < 140_000_000
    assert not any(f["path"].endswith(".gguf") for f in version.files)
    weights = sorted(version.path.glob("*.safetensors"))
    assert weights
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in weights]

    model_import.run(job.pk)  # the same message delivered again: the finished job does not convert twice
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert ModelVersion.objects.filter(model=version.model).count() == 1
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in weights] == stamps
    assert job.log_lines.filter(message__startswith="importing the packaged starter model").count() == 1

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(version.path, local_files_only=True)  # safetensors, no GGUF
    tokenizer = AutoTokenizer.from_pretrained(version.path, local_files_only=True)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_the_model_card_draws_the_lineage_from_import_jobs_to_the_merged_version(client, owner, offer):
    from apps.registry.lineage import lineage_nodes

    base = import_folder(owner, offer, "base")
    adapter = ModelVersion.objects.get(source_job=run(services.start_import(
        owner, source="folder", folder=offer("lora", source="adapter"), model_name="lora", base_version=base)))
    merged = ModelVersion.objects.get(source_job=run(services.start_merge(owner, ModelVersion.objects.get(pk=adapter.pk))))
    nodes, edges = lineage_nodes(base, owner)
    assert {f"v{base.pk}", f"v{adapter.pk}", f"v{merged.pk}", f"j{base.source_job_id}"} <= set(nodes)
    assert (f"v{base.pk}", f"v{merged.pk}") in edges and (f"v{adapter.pk}", f"v{merged.pk}") in edges
    client.force_login(owner)
    page = client.get(f"/models/versions/{merged.pk}/").content.decode()
    assert 'id="lineage-graph"' in page and "Merge into" not in page and "Merged" in page
    adapter_page = client.get(f"/models/versions/{adapter.pk}/").content.decode()
    assert 'id="merge-button"' in adapter_page and 'id="delete-button" disabled' in adapter_page


def test_an_upload_over_the_size_limit_is_refused_before_it_is_stored(client, owner, api_token, tiny_model_source, settings):
    settings.MAX_UPLOAD_BYTES = 10_000
    response = upload_archive(client, api_token(owner), folder_files(tiny_model_source["model"]))
    assert response.status_code == 400
    assert list(settings.UPLOAD_DIR.glob("*.zip")) == [] and not Job.objects.exists()


def test_retrying_a_failed_import_runs_it_again_into_a_fresh_folder_and_registers_once(owner, offer, import_dir):
    from apps.jobs import services as job_services

    value = offer("flaky", mutate=lambda d: (d / "training_args.bin").write_bytes(b"x"))
    failed = run(services.start_import(owner, source="folder", folder=value, model_name="flaky"))
    assert failed.status == JobStatus.FAILED
    (import_dir / "flaky" / "training_args.bin").unlink()  # the user fixes the folder
    again = run(job_services.retry_job(failed, owner))
    assert again.status == JobStatus.SUCCEEDED, again.error
    assert again.retry_of == failed and again.params["output_dir"] != failed.params["output_dir"]
    version = ModelVersion.objects.get(source_job=again)
    assert version.model.name == "flaky" and ModelVersion.objects.count() == 1


def test_an_archive_import_refused_before_its_job_leaves_no_archive_behind(client, owner, api_token, tiny_model_source, settings):
    from apps.registry.models import RegisteredModel

    RegisteredModel.objects.create(owner=owner, name="taken")
    response = upload_archive(client, api_token(owner), folder_files(tiny_model_source["model"]), model_name="taken")
    assert response.status_code in (400, 422) and "taken" in response.json()["detail"]
    assert not Job.objects.exists() and list(settings.UPLOAD_DIR.iterdir()) == []
