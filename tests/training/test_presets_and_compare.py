"""Presets (built-in read-only, users' own team-visible; YAML export/import with errors that name
the line and field) and the compare view (downsampled curves, a diff of only what differs)."""
import pytest

from apps.jobs.models import JobMetric
from apps.training import compare, presets, services
from apps.training.models import TrainingPreset, TrainingRun

pytestmark = pytest.mark.django_db


def test_a_preset_exported_as_yaml_imports_back_to_the_same_fields(users):
    owner = users["owner"]
    saved = presets.save(owner, name="my-lora", description="small and quick",
                         fields={"learning_rate": 1e-4, "lora_r": 8, "lora_targets": ["q_proj", "v_proj"], "packing": False})
    text = presets.export_yaml(saved.name, saved.fields, saved.description)
    saved.delete()
    again = presets.import_yaml(owner, text)
    assert (again.name, again.description, again.fields) == ("my-lora", "small and quick", saved.fields)


def test_a_built_in_preset_exports_and_imports_as_a_user_preset(client, users):
    client.force_login(users["owner"])
    response = client.get("/training/presets/builtin:sft-lora-small/export/")
    assert response.status_code == 200
    imported = presets.import_yaml(users["owner"], response.content.decode())
    assert imported.fields == {k: v for k, v in presets.builtin_presets()["sft-lora-small"].items()}


@pytest.mark.parametrize("text, field, line", [
    ("name: x\nfields:\n  learning_rate: 0.001\n  lerning_rate: 0.1\n", "lerning_rate", 4),
    ("name: x\nfields:\n  batch_size: eight\n", "batch_size", 3),
    ("name: x\nfields:\n  max_steps: 3\n  output_dir: /etc\n", "output_dir", 4),
    ("name: x\ncolour: red\nfields: {}\n", "colour", 2),
    ("name: x\nfields:\n  - 1\n", "fields", 3),
    ("name: x\nfields:\n  lora_r: [1,\n", "yaml", 4),
    ("fields:\n  lora_r: 4\n", "name", 1),
])
def test_import_errors_name_the_line_and_the_field(users, text, field, line):
    with pytest.raises(services.TrainingError) as refused:
        presets.import_yaml(users["owner"], text)
    assert refused.value.field == field
    assert f"line {line}" in refused.value.reason
    assert not TrainingPreset.objects.exists()


def test_the_import_form_shows_the_error_with_its_line(client, users):
    client.force_login(users["owner"])
    response = client.post("/training/presets/import/", {"yaml": "name: x\nfields:\n  batch_size: eight\n"})
    assert response.status_code == 422
    assert "batch_size: line 3: must be an integer" in response.content.decode()


def test_presets_are_team_visible_clonable_and_only_the_owner_edits(client, users, api_token):
    mine = presets.save(users["owner"], name="shared", fields={"lora_r": 8})
    client.force_login(users["teammate"])
    assert "shared" in client.get("/training/presets/").content.decode()
    client.post(f"/training/presets/{mine.pk}/", {"name": "hijacked", "fields_yaml": "lora_r: 2\n"})
    mine.refresh_from_db()
    assert (mine.name, mine.fields) == ("shared", {"lora_r": 8})
    client.post(f"/training/presets/{mine.pk}/clone/")
    assert TrainingPreset.objects.get(owner=users["teammate"]).fields == {"lora_r": 8}
    client.get("/training/presets/")  # shows (and so consumes) the flash messages of the teammate's session
    client.force_login(users["outsider"])
    assert "shared" not in client.get("/training/presets/").content.decode()
    assert client.get(f"/training/presets/{mine.pk}/").status_code == 404
    assert client.get(f"/training/presets/{mine.pk}/export/").status_code == 404
    assert client.post(f"/training/presets/{mine.pk}/clone/").status_code == 404
    assert not TrainingPreset.objects.filter(owner=users["outsider"]).exists()
    outsider = f"Bearer {api_token(users['outsider'])}"
    assert client.get(f"/api/training/presets/{mine.pk}/export", HTTP_AUTHORIZATION=outsider).status_code == 404
    names = [p["name"] for p in client.get("/api/training/presets", HTTP_AUTHORIZATION=outsider).json()]
    assert "shared" not in names and "sft-lora-small" in names  # built-ins are for everyone


def test_presets_through_the_api_round_trip_and_refuse_with_field_errors(client, users, api_token):
    auth = f"Bearer {api_token(users['owner'])}"
    created = client.post("/api/training/presets", {"name": "api", "fields": {"lora_r": 8, "seed": 3}},
                          content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert created.status_code == 201, created.content
    text = client.get(f"/api/training/presets/{created.json()['key']}/export", HTTP_AUTHORIZATION=auth).content.decode()
    TrainingPreset.objects.all().delete()
    imported = client.post("/api/training/presets/import", {"yaml": text}, content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert imported.status_code == 201 and imported.json()["fields"] == {"lora_r": 8, "seed": 3}
    bad = client.post("/api/training/presets", {"name": "bad", "fields": {"seed": "x"}}, content_type="application/json",
                      HTTP_AUTHORIZATION=auth)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "seed"


# ---- compare ---------------------------------------------------------------------------------

def test_downsampling_keeps_at_most_400_points_with_the_extremes_and_the_ends():
    steps = list(range(10_000))
    values = [1.0] * 10_000
    values[1234], values[7777] = 50.0, -3.0
    xs, ys = compare.downsample(steps, values)
    assert len(xs) <= compare.MAX_POINTS and xs == sorted(xs)
    assert (xs[0], xs[-1]) == (0, 9999) and 1234 in xs and 7777 in xs and max(ys) == 50.0 and min(ys) == -3.0
    assert compare.downsample([1, 2], [3.0, 4.0]) == ([1, 2], [3.0, 4.0])


@pytest.fixture
def two_runs(users, make_base, make_dataset, fake_preflight, lora_request):
    base, data = make_base(users["owner"]), make_dataset(users["owner"])
    runs = []
    for lr in (1e-4, 3e-4):
        job = services.submit(users["owner"], lora_request(base, [data], fields={"learning_rate": lr}))
        JobMetric.objects.bulk_create([JobMetric(job=job, name="loss", step=s, value=5 - s / 1000) for s in range(1, 1001)])
        runs.append(TrainingRun.objects.get(job=job))
    return runs


def test_the_compare_view_overlays_downsampled_curves_and_diffs_only_what_differs(client, users, two_runs):
    client.force_login(users["teammate"])
    ids = ",".join(str(r.job_id) for r in two_runs)
    response = client.get(f"/training/compare/?jobs={ids}")
    assert response.status_code == 200
    curves = response.context["curves"]
    assert [len(s["steps"]) <= 400 for s in curves["loss"]] == [True, True]
    diff = {row["field"]: row["values"] for row in response.context["diff"]}
    assert diff == {"learning_rate": [1e-4, 3e-4]}  # paths and equal fields are left out


def test_an_outsider_cannot_compare_runs_they_may_not_see(client, users, two_runs):
    client.force_login(users["outsider"])
    assert client.get(f"/training/compare/?jobs={two_runs[0].job_id}").status_code == 404
