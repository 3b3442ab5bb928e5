"""First run: the starter model is imported once per data dir as the system user, then given the
alias `starter` and a deployment that every signed-in user may chat with; deleting it is respected;
PUYU_STARTER=off skips it; the GGUF conversion happens once per machine, not once per data dir."""
import io
import shutil

import pytest
from django.core.management import call_command

from apps.accounts.system import system_user
from apps.jobs.models import Job, JobStatus
from apps.registry import services
from apps.registry.models import FirstRunRecord, ModelAlias, ModelVersion, RegisteredModel
from apps.serving.models import Deployment
from tests.registry.test_registry import run
from workers.core.modelstore import gguf

pytestmark = pytest.mark.django_db(transaction=True)  # tasks run with a heartbeat thread


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path, tiny_model_source):
    """The GGUF conversion (30-50 s with the real weights) replaced by a copy of the tiny Llama;
    the machine-wide cache in a temp dir. Returns the list of conversions made."""
    monkeypatch.setenv("PUYU_STARTER_CACHE", str(tmp_path / "machine-cache"))
    made = []

    def convert(gguf_path, out_dir, reporter, dtype=None):
        made.append(out_dir)
        shutil.copytree(tiny_model_source["model"], out_dir)
        return gguf.inspect_folder(out_dir)

    monkeypatch.setattr(gguf, "convert_gguf", convert)
    return made


def command(*args) -> str:
    out = io.StringIO()
    call_command("starter", *args, stdout=out)
    return out.getvalue()


def test_the_starter_is_imported_deployed_for_everyone_once_and_its_deletion_respected(fake_conversion, users, client):
    assert "Queued" in command()
    job = Job.objects.get(kind="model_import")
    assert job.owner == system_user()
    assert "set up before" in command()  # queued already: never a second job
    assert run(job).status == JobStatus.SUCCEEDED
    version = ModelVersion.objects.get(source_job=job)
    assert ModelAlias.objects.get(model=version.model, name="starter").version == version
    deployment = Deployment.objects.get(name="starter")
    assert (deployment.owner, deployment.alias, deployment.queue) == (system_user(), "starter", "serve")
    client.force_login(users["outsider"])  # any signed-in user may see (and so chat with) it, not stop it
    assert client.get(f"/deployments/{deployment.pk}/").status_code == 200
    state = deployment.state
    client.post(f"/deployments/{deployment.pk}/stop/")
    deployment.refresh_from_db()
    assert deployment.state == state != "stopped"

    Deployment.objects.all().delete()
    assert "set up before" in command() and not Deployment.objects.exists()


def test_deleting_the_starters_deployment_alias_version_model_and_import_job_is_respected(fake_conversion):
    assert "Queued" in command()
    job = Job.objects.get(kind="model_import")
    assert run(job).status == JobStatus.SUCCEEDED
    version = ModelVersion.objects.get(source_job=job)
    model = version.model
    Deployment.objects.filter(name="starter").delete()
    ModelAlias.objects.filter(model=model).delete()
    version.delete()
    model.delete()
    job.delete()
    imports = Job.objects.filter(kind="model_import")
    assert not RegisteredModel.objects.exists() and not imports.exists()
    assert "set up before" in command()
    assert not imports.exists() and not RegisteredModel.objects.exists() and not Deployment.objects.exists()
    FirstRunRecord.objects.filter(name="starter").delete()  # what the README says to do in the admin to get it back
    assert "Queued" in command() and imports.count() == 1


def test_a_data_dir_whose_starter_was_queued_before_the_record_existed_is_not_given_another(fake_conversion):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("apps.registry.migrations.0004_first_run_record")
    assert "Queued" in command()
    FirstRunRecord.objects.all().delete()  # as a database from before the record had it
    migration.record_a_starter_made_before(apps, None)
    assert "set up before" in command() and Job.objects.count() == 1


def test_puyu_starter_off_skips_it(monkeypatch, fake_conversion):
    monkeypatch.setenv("PUYU_STARTER", "off")
    assert "PUYU_STARTER=off" in command()
    assert not Job.objects.exists()


def test_the_conversion_happens_once_per_machine_and_a_new_data_dir_copies_it(fake_conversion, tmp_path):
    from workers.core.reporting import ConsoleReporter

    first = gguf.import_starter(gguf.find_starter_gguf(), tmp_path / "dir1" / "v1", ConsoleReporter())
    second = gguf.import_starter(gguf.find_starter_gguf(), tmp_path / "dir2" / "v1", ConsoleReporter())
    assert len(fake_conversion) == 1
    assert [f.sha256 for f in second.files] == [f.sha256 for f in first.files] and second.parameter_count > 0
    assert not (tmp_path / "dir2" / "v1.partial").exists()


def test_a_new_chat_opens_on_the_starter_deployment_for_any_user(users, client):
    from apps.playground.forms import ConversationForm
    from apps.registry.models import RegisteredModel

    system = system_user()
    model = RegisteredModel.objects.create(owner=system, name="SmolLM2-135M-Instruct")
    mine = Deployment.objects.create(owner=users["owner"], name="mine", model=model, alias="x", state="ready")
    starter = Deployment.objects.create(owner=system, name="starter", model=model, alias="starter", state="ready")
    assert ConversationForm(users["outsider"])["deployment"].value() == str(starter.pk)
    chosen = ConversationForm(users["owner"], initial={"deployment": str(mine.pk)})
    assert chosen["deployment"].value() == str(mine.pk)  # the page asked for another one
    client.force_login(users["outsider"])  # the page as drawn (its form passes deployment="" when none is asked for)
    assert f'<option value="{starter.pk}" selected>' in client.get("/playground/").content.decode()
