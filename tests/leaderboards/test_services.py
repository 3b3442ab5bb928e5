"""The leaderboards' services: benchmarks as versioned data (the hash decides), suites, and what
a submitted evaluation stores — parameters built from ids, one run per request, the target
resolved and recorded — with refusals that name the field and store nothing."""
import pytest
from django.http import Http404

from apps.datasets.models import DatasetVersionUse
from apps.jobs.models import Job, JobStatus
from apps.leaderboards import services
from apps.leaderboards.models import Benchmark, BenchmarkVersion, EvaluationRun, ExternalEndpoint, Suite, SuiteVersion
from apps.registry.models import ModelAlias, VersionUse
from tests.leaderboards.conftest import MC_ROWS

pytestmark = pytest.mark.django_db


# ---- benchmarks ------------------------------------------------------------------------------

def test_a_benchmark_version_holds_the_cores_definition_and_a_hash_over_the_data(users, make_benchmark):
    version = make_benchmark(users["owner"], template="Q: {question}\n{options}\nA:")
    definition = version.definition
    assert "data_path" not in definition  # added from the dataset version when a run is queued
    assert definition["template"] == "Q: {question}\n{options}\nA:" and definition["scorer"]["normalization"] == "none"
    assert len(version.version_hash) == 64 and version.number == 1
    assert version.benchmark.dimension == "knowledge" and version.benchmark.owner == users["owner"]


@pytest.mark.parametrize("change", [
    {"template": "Question: {question}\n{options}\nAnswer:"},
    {"scorer": {"paradigm": "likelihood", "normalization": "per-token"}},
    {"answer_template": " ({answer})"},
])
def test_editing_what_the_hash_covers_makes_a_new_version_and_the_old_keeps_its_hash(users, make_benchmark, change):
    first = make_benchmark(users["owner"])
    second = services.edit_benchmark(users["owner"], first.benchmark, **change)
    assert second.number == 2 and second.version_hash != first.version_hash
    first.refresh_from_db()
    assert first.version_hash == BenchmarkVersion.objects.get(pk=first.pk).version_hash


def test_new_data_makes_a_new_version(users, make_benchmark, make_dataset):
    first = make_benchmark(users["owner"])
    data = make_dataset(users["owner"], rows=MC_ROWS[:3], name="smaller")
    second = services.edit_benchmark(users["owner"], first.benchmark, dataset_version=data)
    assert second.number == 2 and second.dataset_version == data


def test_editing_only_labels_keeps_the_version_and_changes_the_labels(users, make_benchmark):
    first = make_benchmark(users["owner"])
    same = services.edit_benchmark(users["owner"], first.benchmark, title="A tiny quiz", dimension="reasoning",
                                   template=first.definition["template"])
    assert same == first and BenchmarkVersion.objects.count() == 1
    benchmark = Benchmark.objects.get(pk=first.benchmark_id)
    assert (benchmark.title, benchmark.dimension) == ("A tiny quiz", "reasoning")


def test_few_shot_rows_are_copied_by_index_from_the_named_version_and_change_the_hash(users, make_benchmark, make_dataset):
    dev = make_dataset(users["owner"], name="dev")
    zero = make_benchmark(users["owner"], name="zero")
    five = make_benchmark(users["owner"], name="two-shot", data=zero.dataset_version, fewshot_version=dev,
                          fewshot_rows=[3, 0])
    assert five.definition["fewshot"] == [MC_ROWS[3], MC_ROWS[0]]  # in the order given, fixed
    assert (five.fewshot_version, five.fewshot_rows) == (dev, [3, 0])
    assert five.version_hash != zero.version_hash


@pytest.mark.parametrize("fields, field", [
    ({"fewshot_rows": [99]}, "fewshot_rows[0]"),
    ({"fewshot_rows": [1, 1]}, "fewshot_rows"),
    ({"fewshot_rows": list(range(33))}, "fewshot_rows"),
    ({"fewshot_rows": []}, "fewshot_rows"),
])
def test_bad_few_shot_rows_are_refused_naming_the_field(users, make_benchmark, make_dataset, fields, field):
    dev = make_dataset(users["owner"], name="dev", rows=MC_ROWS * 6)
    with pytest.raises(services.RefusedInput) as refused:
        make_benchmark(users["owner"], fewshot_version=dev, **fields)
    assert refused.value.field == field
    assert not Benchmark.objects.exists()


@pytest.mark.parametrize("fields, field", [
    ({"shape": "qa", "scorer": {"paradigm": "generation"}}, "dataset_version"),  # a multiple-choice version
    ({"template": "{question} {secret.__class__}"}, "template"),
    ({"scorer": {"paradigm": "likelihood", "normalization": "cubic"}}, "scorer.normalization"),
    ({"scorer": {"paradigm": "code"}}, "scorer.paradigm"),
    ({"dimension": "astrology"}, "dimension"),
    ({"name": "no spaces allowed"}, "name"),
])
def test_a_refused_benchmark_names_the_field_and_stores_nothing(users, make_dataset, fields, field):
    data = make_dataset(users["owner"])
    request = {"name": "quiz", "dataset_version": data, "shape": "multiple_choice", "scorer": {"paradigm": "likelihood"},
               "dimension": "knowledge", **fields}
    with pytest.raises(services.RefusedInput) as refused:
        services.create_benchmark(users["owner"], **request)
    assert refused.value.field == field
    assert not Benchmark.objects.exists() and not BenchmarkVersion.objects.exists()


def test_a_benchmark_name_is_unique_per_owner(users, make_benchmark):
    make_benchmark(users["owner"])
    with pytest.raises(services.RefusedInput) as refused:
        make_benchmark(users["owner"])
    assert refused.value.field == "name"
    make_benchmark(users["teammate"])  # another owner may use it


def test_a_benchmark_on_data_the_user_may_not_see_is_404(users, make_dataset):
    data = make_dataset(users["owner"])
    with pytest.raises(Http404):
        services.create_benchmark(users["outsider"], name="stolen", dataset_version=data, shape="multiple_choice",
                                  scorer={"paradigm": "likelihood"}, dimension="knowledge")
    assert not Benchmark.objects.exists()


def test_a_teammate_may_not_edit_the_owners_benchmark_and_only_staff_edit_built_ins(users, make_benchmark, make_user):
    version = make_benchmark(users["owner"])
    with pytest.raises(services.PermissionDenied):
        services.edit_benchmark(users["teammate"], version.benchmark, title="mine now")
    with pytest.raises(Http404):
        services.edit_benchmark(users["outsider"], version.benchmark, title="mine now")
    system = services.system_user()
    Benchmark.objects.filter(pk=version.benchmark_id).update(owner=system, builtin_key="quiz")
    builtin = Benchmark.objects.get(pk=version.benchmark_id)
    assert builtin in services.visible_benchmarks(users["outsider"])  # readable by every signed-in user
    with pytest.raises(services.PermissionDenied):
        services.edit_benchmark(users["owner"], builtin, title="mine now")
    staff = make_user("staff", is_staff=True)
    services.edit_benchmark(staff, builtin, title="Quiz (built in)")
    assert Benchmark.objects.get(pk=builtin.pk).title == "Quiz (built in)"


def test_the_system_user_cannot_sign_in():
    system = services.system_user()
    assert system.username == "puyu-system" and not system.is_active and not system.has_usable_password()
    assert services.system_user() == system


# ---- suites ----------------------------------------------------------------------------------

def test_a_suite_is_versioned_by_its_items_and_weights(users, make_benchmark, make_suite):
    a, b = make_benchmark(users["owner"], "a"), make_benchmark(users["owner"], "b")
    first = make_suite(users["owner"], [a, b], weights=[1, 3])
    assert [(i.benchmark_version, i.weight) for i in first.items.all()] == [(a, 1.0), (b, 3.0)]
    assert services.edit_suite(users["owner"], first.suite, [(b, 3), (a, 1)]) == first  # the same items
    second = services.edit_suite(users["owner"], first.suite, [(a, 2), (b, 3)])
    assert second.number == 2 and SuiteVersion.objects.count() == 2


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf"), "1", True])
def test_a_suite_weight_must_be_a_positive_number(users, make_benchmark, weight):
    version = make_benchmark(users["owner"])
    with pytest.raises(services.RefusedInput) as refused:
        services.create_suite(users["owner"], name="core", items=[(version, weight)])
    assert refused.value.field == "items[0].weight" and not Suite.objects.exists()


def test_a_suite_is_bounded_and_lists_each_version_once(users, make_benchmark):
    version = make_benchmark(users["owner"])
    for items, field in (([(version, 1)] * 65, "items"), ([(version, 1), (version, 2)], "items[1]"), ([], "items")):
        with pytest.raises(services.RefusedInput) as refused:
            services.create_suite(users["owner"], name="core", items=items)
        assert refused.value.field == field
    assert not Suite.objects.exists()


def test_a_suite_may_hold_only_benchmarks_the_user_may_see(users, make_benchmark):
    theirs = make_benchmark(users["owner"])
    with pytest.raises(Http404):
        services.create_suite(users["outsider"], name="core", items=[(theirs, 1)])


# ---- evaluation runs -------------------------------------------------------------------------

@pytest.fixture
def setup(users, make_benchmark, make_suite, make_version):
    owner = users["owner"]
    quiz = make_benchmark(owner)
    suite = make_suite(owner, [quiz])
    return {"quiz": quiz, "suite": suite, "version": make_version(owner)}


def test_a_run_is_built_from_ids_with_one_shared_prediction_cache(users, setup, settings):
    run = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"],
                                     max_samples=4, batch_size=2)
    params = run.job.params
    assert (run.job.kind, run.job.queue, run.target) == ("evaluate", "gpu", "model")
    assert params["target"] == "model" and params["model_dir"] == str(setup["version"].path)
    assert params["cache_dir"] == str(settings.EVALUATION_DIR / "cache")
    bench = params["benchmarks"][0]
    assert bench["data_path"] == str(setup["quiz"].dataset_version.path) and bench["name"] == "quiz"
    assert (params["max_samples"], params["batch_size"]) == (4, 2)
    assert run.settings["benchmarks"] == {"quiz": setup["quiz"].pk}
    assert run.target_label == "tiny v1" and run.job.title == "Evaluate tiny v1 on core v1"
    assert list(VersionUse.objects.filter(job=run.job).values_list("version", "role")) == [(setup["version"].pk, "evaluate")]
    assert list(DatasetVersionUse.objects.filter(job=run.job).values_list("version", "role")) == [
        (setup["quiz"].dataset_version_id, "benchmark")]
    other = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"])
    assert other.job.params["cache_dir"] == params["cache_dir"]  # shared across runs


def test_the_same_request_twice_is_one_run_until_it_fails(users, setup):
    first = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"])
    again = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"],
                                       batch_size=16)  # the batch size does not change what is measured
    assert again == first and again.reused and not first.reused
    assert EvaluationRun.objects.count() == 1 and Job.objects.count() == 1
    Job.objects.filter(pk=first.job_id).update(status=JobStatus.SUCCEEDED)
    assert services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"]) == first
    Job.objects.filter(pk=first.job_id).update(status=JobStatus.FAILED)
    retried = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"])
    assert retried != first and EvaluationRun.objects.count() == 2
    fewer = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"],
                                       max_samples=2)
    assert fewer not in (first, retried)  # a setting that changes the scores is another request


def test_a_teammate_asking_for_the_same_run_gets_the_owners(users, setup):
    first = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"])
    assert services.submit_evaluation(users["teammate"], suite_version=setup["suite"], model_version=setup["version"]) == first


def test_an_alias_is_resolved_at_submit_and_recorded(users, setup, make_version):
    owner = users["owner"]
    newer = make_version(owner)
    alias = ModelAlias.objects.create(model=newer.model, name="prod", version=newer, updated_by=owner)
    run = services.submit_evaluation(owner, suite_version=setup["suite"], alias=alias)
    assert (run.model_version, run.alias_name) == (newer, "prod")
    assert run.job.params["model_dir"] == str(newer.path)
    alias.version = setup["version"]
    alias.save()
    run.refresh_from_db()
    assert run.model_version == newer  # the run keeps what the alias meant when it was asked


@pytest.fixture
def deployment(users, setup):
    from apps.serving.models import Deployment

    return Deployment.objects.create(owner=users["owner"], name="chat", model=setup["version"].model,
                                     version=setup["version"], state="ready")


def test_a_deployment_is_evaluated_as_served_at_its_current_version(users, setup, deployment, make_benchmark, make_suite):
    from apps.serving.models import Deployment

    owner, version = users["owner"], setup["version"]
    sums = make_suite(owner, [make_benchmark(owner, "sums", shape="qa")], name="sums")
    run = services.submit_evaluation(owner, suite_version=sums, deployment=deployment, queue="cpu")
    params = run.job.params
    assert (params["target"], params["deployment_id"], params["target_revision"]) == ("deployment", deployment.pk,
                                                                                       str(version.uid))
    assert params["model_dir"] == "" and run.model_version == version and run.deployment == deployment
    assert run.target_label == f"owner/chat (serving {version})"
    Deployment.objects.filter(pk=deployment.pk).update(state="stopped")
    with pytest.raises(services.RefusedInput) as refused:
        services.submit_evaluation(owner, suite_version=sums, deployment=deployment, max_samples=3)
    assert refused.value.field == "deployment"


def test_a_deployment_target_is_refused_a_benchmark_that_needs_the_weights(users, setup, deployment):
    with pytest.raises(services.RefusedInput) as refused:
        services.submit_evaluation(users["owner"], suite_version=setup["suite"], deployment=deployment)
    assert refused.value.field == "benchmarks[0].scorer.paradigm" and "weights" in refused.value.reason
    assert not Job.objects.exists()


def test_an_endpoint_must_be_enabled_and_on_the_allowlist(users, setup, make_benchmark, make_suite, settings, monkeypatch):
    owner = users["owner"]
    endpoint = ExternalEndpoint.objects.create(name="provider", base_url="https://api.example.com/v1/",
                                               model_name="big-model", api_key="sk-secret")
    with pytest.raises(services.RefusedInput) as refused:
        services.submit_evaluation(owner, suite_version=setup["suite"], endpoint=endpoint)
    assert refused.value.field == "endpoint" and "allowlist" in refused.value.reason
    settings.EVAL_ENDPOINT_ALLOWLIST = ["https://api.example.com/v1"]
    monkeypatch.setenv("PUYU_EVAL_ENDPOINT_ALLOWLIST", "https://api.example.com/v1")
    arithmetic = make_suite(owner, [make_benchmark(owner, "sums", shape="qa")], name="sums")
    run = services.submit_evaluation(owner, suite_version=arithmetic, endpoint=endpoint, queue="cpu")
    params = run.job.params
    assert (params["target"], params["endpoint_model"]) == ("endpoint", "big-model")
    assert "sk-secret" not in str(params) and services.run_secrets(run.job) == {"api_key": "sk-secret"}
    assert run.model_version is None and run.target_label == "provider (big-model)"
    ExternalEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)
    with pytest.raises(services.RefusedInput):
        services.submit_evaluation(owner, suite_version=arithmetic, endpoint=endpoint, max_samples=1)


@pytest.mark.parametrize("fields, field", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"batch_size": 5000}, "batch_size"),
    ({"max_samples": "all"}, "max_samples"),
    ({"queue": "nowhere"}, "queue"),
])
def test_a_refused_submission_names_the_field_and_stores_nothing(users, setup, fields, field):
    with pytest.raises(services.RefusedInput) as refused:
        services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"], **fields)
    assert refused.value.field == field
    assert not Job.objects.exists() and not EvaluationRun.objects.exists() and not VersionUse.objects.exists()


def test_a_run_needs_exactly_one_target_and_an_adapter_runs_on_its_base(users, setup, make_version):
    with pytest.raises(services.RefusedInput) as refused:
        services.submit_evaluation(users["owner"], suite_version=setup["suite"])
    assert refused.value.field == "target"
    orphan = make_version(users["owner"], name="orphan", kind="adapter")
    with pytest.raises(services.RefusedInput) as refused:
        services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=orphan)
    assert refused.value.field == "model_version" and "base model" in refused.value.reason
    assert not Job.objects.exists()
    adapter = make_version(users["owner"], name="lora", kind="adapter", parent=setup["version"])
    run = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=adapter)
    assert run.job.params["model_dir"] == str(setup["version"].path) and run.job.params["adapter_dir"] == str(adapter.path)
    # both folders are in use while the run is active: neither can be deleted under it
    assert set(VersionUse.objects.filter(job=run.job).values_list("version_id", flat=True)) == {adapter.pk, setup["version"].pk}


def test_an_outsider_cannot_evaluate_what_they_may_not_see(users, setup, make_version, make_benchmark, make_suite):
    outsider = users["outsider"]
    with pytest.raises(Http404):  # the owner's suite
        services.submit_evaluation(outsider, suite_version=setup["suite"], model_version=make_version(outsider))
    mine = make_suite(outsider, [make_benchmark(outsider)], name="mine")
    with pytest.raises(Http404):  # the owner's model
        services.submit_evaluation(outsider, suite_version=mine, model_version=setup["version"])
    assert not Job.objects.exists()


def test_a_suite_shared_with_a_team_cannot_leak_another_teams_benchmark(users, setup, make_version, make_suite):
    """The teammate may see the owner's benchmark; an outsider in the teammate's other team may
    see the teammate's suite but must not run the owner's data through it."""
    from django.contrib.auth.models import Group

    teammate, outsider = users["teammate"], users["outsider"]
    suite = make_suite(teammate, [setup["quiz"]], name="shared")
    other = Group.objects.create(name="other")
    teammate.groups.add(other)
    outsider.groups.add(other)
    with pytest.raises(Http404):
        services.submit_evaluation(outsider, suite_version=suite, model_version=make_version(outsider, name="o"))


def test_retrying_a_failed_run_queues_the_same_request_again(users, setup):
    from apps.jobs.services import retry_job

    run = services.submit_evaluation(users["owner"], suite_version=setup["suite"], model_version=setup["version"])
    Job.objects.filter(pk=run.job_id).update(status=JobStatus.FAILED)
    job = retry_job(Job.objects.get(pk=run.job_id), users["owner"])
    again = EvaluationRun.objects.get(job=job)
    assert job.retry_of_id == run.job_id and again.request_key == run.request_key
    assert job.params["benchmarks"] == run.job.params["benchmarks"]


def test_the_builtin_benchmarks_command_queues_the_job_once_per_data_dir(settings):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("builtin_benchmarks", stdout=out)
    job = Job.objects.get(kind="benchmark_builtins")
    assert "Queued" in out.getvalue() and job.queue == "cpu" and job.owner.username == "puyu-system"
    assert all(path.startswith(str(settings.DATASET_STORE_DIR) + "/") for path in job.params["outputs"].values())
    call_command("builtin_benchmarks", stdout=io.StringIO())
    assert Job.objects.filter(kind="benchmark_builtins").count() == 1
