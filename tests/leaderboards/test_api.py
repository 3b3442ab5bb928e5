"""Every /api endpoint of the leaderboards, as the owner, a teammate and an outsider: the owner
creates and changes, the teammate reads but may not change (403), the outsider gets 404 and
sees none of the owner's rows; refusals are 422 naming the field; no server path or secret is
ever shown."""
import csv
import io
from pathlib import Path

import pytest

from apps.jobs.models import Job
from apps.leaderboards.models import ArenaRatingSnapshot, ArenaVote, Benchmark, EvaluationRun, ExternalEndpoint, ImportedSummary, Suite

pytestmark = pytest.mark.django_db

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "opencompass" / "summary_demo.csv"


@pytest.fixture
def owned(users, make_benchmark, make_suite, make_version, finished_run):
    owner = users["owner"]
    quiz = make_benchmark(owner, "quiz")
    suite = make_suite(owner, [quiz])
    version = make_version(owner)
    run = finished_run(owner, suite, version, {quiz: [True, False, True, True]})
    return {"quiz": quiz, "suite": suite, "version": version, "run": run}


def test_benchmarks_are_created_read_and_edited_through_the_api(users, api, make_dataset, owned):
    owner, teammate, outsider = users["owner"], users["teammate"], users["outsider"]
    data = make_dataset(owner, name="more")
    created = api(owner, "post", "/api/benchmarks", {
        "name": "quiz2", "dataset_version_id": data.pk, "shape": "multiple_choice",
        "scorer": {"paradigm": "likelihood", "normalization": "per-character"}, "dimension": "exam",
        "fewshot_version_id": data.pk, "fewshot_rows": [0, 1]})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["latest"]["number"] == 1 and len(body["latest"]["definition"]["fewshot"]) == 2
    assert body["latest"]["metric"] == "accuracy" and len(body["latest"]["version_hash"]) == 64
    assert "data_path" not in body["latest"]["definition"]
    ident = body["id"]

    assert sorted(b["name"] for b in api(teammate, "get", "/api/benchmarks").json()) == ["quiz", "quiz2"]
    assert api(outsider, "get", "/api/benchmarks").json() == []
    assert api(teammate, "get", f"/api/benchmarks/{ident}").status_code == 200
    assert api(outsider, "get", f"/api/benchmarks/{ident}").status_code == 404
    version_id = body["latest"]["id"]
    assert api(teammate, "get", f"/api/benchmark-versions/{version_id}").json()["benchmark"] == "quiz2"
    assert api(outsider, "get", f"/api/benchmark-versions/{version_id}").status_code == 404

    assert api(teammate, "put", f"/api/benchmarks/{ident}", {"title": "mine"}).status_code == 403
    assert api(outsider, "put", f"/api/benchmarks/{ident}", {"title": "mine"}).status_code == 404
    same = api(owner, "put", f"/api/benchmarks/{ident}", {"title": "Exam quiz"})
    assert same.status_code == 200 and same.json()["title"] == "Exam quiz" and len(same.json()["versions"]) == 1
    edited = api(owner, "put", f"/api/benchmarks/{ident}", {"fewshot_version_id": None})
    assert [v["number"] for v in edited.json()["versions"]] == [2, 1]
    assert edited.json()["latest"]["definition"]["fewshot"] == [] and edited.json()["latest"]["fewshot_version_id"] is None


@pytest.mark.parametrize("change, detail", [
    ({"scorer": {"paradigm": "likelihood", "normalization": "cubic"}}, "scorer.normalization:"),
    ({"shape": "qa"}, "scorer.paradigm:"),
    ({"fewshot_rows": [0, 0]}, "fewshot_rows:"),
])
def test_a_refused_benchmark_is_a_422_naming_the_field(users, api, make_dataset, change, detail):
    data = make_dataset(users["owner"])
    payload = {"name": "quiz", "dataset_version_id": data.pk, "shape": "multiple_choice", "scorer": {"paradigm": "likelihood"},
               "fewshot_version_id": data.pk, "fewshot_rows": [0], **change}
    response = api(users["owner"], "post", "/api/benchmarks", payload)
    assert response.status_code == 422 and response.json()["detail"].startswith(detail), response.json()
    assert not Benchmark.objects.exists()


def test_a_benchmark_on_someone_elses_data_is_404(users, api, make_dataset):
    data = make_dataset(users["owner"])
    response = api(users["outsider"], "post", "/api/benchmarks", {"name": "x", "dataset_version_id": data.pk,
                                                                 "shape": "multiple_choice", "scorer": {"paradigm": "likelihood"}})
    assert response.status_code == 404 and not Benchmark.objects.exists()


def test_suites_through_the_api(users, api, owned, make_benchmark):
    owner, teammate, outsider = users["owner"], users["teammate"], users["outsider"]
    other = make_benchmark(owner, "other")
    created = api(owner, "post", "/api/suites", {"name": "pair", "items": [
        {"benchmark_version_id": owned["quiz"].pk, "weight": 2}, {"benchmark_version_id": other.pk}]})
    assert created.status_code == 201, created.content
    ident = created.json()["id"]
    assert [i["weight"] for i in created.json()["latest"]["items"]] == [2.0, 1.0]
    assert {s["name"] for s in api(teammate, "get", "/api/suites").json()} == {"core", "pair"}
    assert api(outsider, "get", "/api/suites").json() == []
    assert api(outsider, "get", f"/api/suites/{ident}").status_code == 404
    assert api(teammate, "put", f"/api/suites/{ident}", {"items": [{"benchmark_version_id": other.pk}]}).status_code == 403
    edited = api(owner, "put", f"/api/suites/{ident}", {"items": [{"benchmark_version_id": other.pk, "weight": 1}]})
    assert [v["number"] for v in edited.json()["versions"]] == [2, 1]
    bad = api(owner, "post", "/api/suites", {"name": "bad", "items": [{"benchmark_version_id": other.pk, "weight": 0}]})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("items[0].weight:")
    hidden = api(outsider, "post", "/api/suites", {"name": "x", "items": [{"benchmark_version_id": other.pk}]})
    assert hidden.status_code == 404 and Suite.objects.count() == 2


def test_evaluations_are_submitted_once_and_read_with_their_samples(users, api, owned, make_version):
    owner, teammate, outsider = users["owner"], users["teammate"], users["outsider"]
    newer = make_version(owner)
    body = {"suite_id": owned["suite"].suite_id, "model_version_id": newer.pk, "max_samples": 2}
    first = api(owner, "post", "/api/evaluations", body)
    assert first.status_code == 201, first.content
    run = first.json()
    assert run["target"] == "model" and run["job"]["kind"] == "evaluate" and run["model_version_id"] == newer.pk
    assert str(Path(owned["version"].path).parent) not in first.content.decode()  # no server path shown
    assert run["job"]["params"]["model_dir"].startswith("models/")
    again = api(owner, "post", "/api/evaluations", body)
    assert again.status_code == 200 and again.json()["id"] == run["id"]
    assert api(outsider, "post", "/api/evaluations", body).status_code == 404
    refused = api(owner, "post", "/api/evaluations", {**body, "max_new_tokens": 0})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("max_new_tokens:")
    both = api(owner, "post", "/api/evaluations", {**body, "suite_version_id": owned["suite"].pk})
    assert both.status_code == 422
    assert EvaluationRun.objects.count() == 2

    ident = owned["run"].pk
    assert {r["id"] for r in api(teammate, "get", "/api/evaluations").json()} == {ident, run["id"]}
    assert api(outsider, "get", "/api/evaluations").json() == []
    detail = api(teammate, "get", f"/api/evaluations/{ident}").json()
    assert detail["scores"][0]["score"] == 0.75 and detail["scores"][0]["version_hash"] == owned["quiz"].version_hash
    assert api(outsider, "get", f"/api/evaluations/{ident}").status_code == 404
    samples = api(teammate, "get", f"/api/evaluations/{ident}/samples?correct=false").json()
    assert samples["count"] == 1 and samples["items"][0]["index"] == 1 and samples["items"][0]["prompt"] == "prompt 1"
    page = api(owner, "get", f"/api/evaluations/{ident}/samples?benchmark_version={owned['quiz'].pk}&offset=1&limit=2").json()
    assert page["count"] == 4 and [s["index"] for s in page["items"]] == [1, 2]
    assert api(outsider, "get", f"/api/evaluations/{ident}/samples").status_code == 404


def test_too_many_active_jobs_is_a_429(users, api, owned, make_version, settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 0
    response = api(users["owner"], "post", "/api/evaluations", {"suite_version_id": owned["suite"].pk,
                                                                "model_version_id": make_version(users["owner"]).pk})
    assert response.status_code == 429


def test_an_endpoint_run_never_shows_the_key(users, api, make_benchmark, make_suite, settings, monkeypatch):
    settings.EVAL_ENDPOINT_ALLOWLIST = ["https://api.example.com/v1"]
    monkeypatch.setenv("PUYU_EVAL_ENDPOINT_ALLOWLIST", "https://api.example.com/v1")
    endpoint = ExternalEndpoint.objects.create(name="provider", base_url="https://api.example.com/v1", model_name="m",
                                               api_key="sk-very-secret")
    suite = make_suite(users["owner"], [make_benchmark(users["owner"], "sums", shape="qa")])
    response = api(users["owner"], "post", "/api/evaluations", {"suite_version_id": suite.pk, "endpoint_id": endpoint.pk,
                                                                "queue": "cpu"})
    assert response.status_code == 201, response.content
    assert "sk-very-secret" not in response.content.decode() and "sk-very-secret" not in str(Job.objects.get().params)


def test_the_leaderboard_and_its_exports(users, api, owned):
    owner, teammate, outsider = users["owner"], users["teammate"], users["outsider"]
    suite_id = owned["suite"].suite_id
    table = api(teammate, "get", f"/api/leaderboards/{suite_id}").json()
    assert [r["label"] for r in table["rows"]] == ["tiny v1"]
    assert table["rows"][0]["scores"][str(owned["quiz"].pk)]["ci_low"] is not None
    exported = api(teammate, "get", f"/api/leaderboards/{suite_id}?format=csv")
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    assert "attachment" in exported["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    assert rows[1][0] == "tiny v1" and float(rows[1][rows[0].index("overall")]) == 0.75
    assert api(owner, "get", f"/api/leaderboards/{suite_id}?kind=merged").json()["rows"] == []
    assert api(owner, "get", f"/api/leaderboards/{suite_id}?version=1").status_code == 200
    assert api(owner, "get", f"/api/leaderboards/{suite_id}?version=9").status_code == 404
    assert api(owner, "get", f"/api/leaderboards/{suite_id}?format=xml").status_code == 422
    assert api(owner, "get", f"/api/leaderboards/{suite_id}?sort=nope").json()["detail"].startswith("sort:")
    assert api(outsider, "get", f"/api/leaderboards/{suite_id}").status_code == 404
    assert api(outsider, "get", f"/api/leaderboards/{suite_id}?format=csv").status_code == 404


def test_compare_and_radar(users, api, owned, make_version, finished_run):
    owner = users["owner"]
    other = finished_run(owner, owned["suite"], make_version(owner, "other"), {owned["quiz"]: [False, False, True, True]})
    compared = api(users["teammate"], "get", f"/api/evaluations/compare?a={owned['run'].pk}&b={other.pk}")
    assert compared.status_code == 200, compared.content
    item = compared.json()["benchmarks"][0]
    assert item["test"]["name"] == "mcnemar" and [d["index"] for d in item["differing"]] == [0]
    assert api(users["outsider"], "get", f"/api/evaluations/compare?a={owned['run'].pk}&b={other.pk}").status_code == 404
    radar = api(owner, "get", f"/api/evaluations/radar?runs={owned['run'].pk}&runs={other.pk}").json()
    assert radar["dimensions"] == ["knowledge"] and [s["values"] for s in radar["series"]] == [[0.75], [0.5]]


def test_importing_an_opencompass_summary(users, api, client, api_token):
    with open(DEMO, "rb") as fh:
        response = client.post("/api/leaderboards/import", {"file": fh},
                               HTTP_AUTHORIZATION=f"Bearer {api_token(users['owner'])}")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["models"] == ["internlm2-chat-1.8b-hf", "qwen1.5-1.8b-chat-hf"] and "gsm8k" in body["datasets"]
    bad = io.BytesIO(b"dataset,version,metric,mode,a\nx,v,m,gen,abc\n")
    bad.name = "summary.csv"
    refused = client.post("/api/leaderboards/import", {"file": bad}, HTTP_AUTHORIZATION=f"Bearer {api_token(users['owner'])}")
    assert refused.status_code == 422 and refused.json()["detail"].startswith("file: line 2, column 5")
    assert ImportedSummary.objects.count() == 1


def test_arena_votes_and_ratings(users, api, make_version):
    owner, outsider = users["owner"], users["outsider"]
    a, b = make_version(owner, "a"), make_version(owner, "b")
    assert api(owner, "post", "/api/arena/ratings").status_code == 422  # no votes yet
    voted = api(owner, "post", "/api/arena/votes", {"model_a_id": a.pk, "model_b_id": b.pk, "outcome": "a"})
    assert voted.status_code == 201 and voted.json()["outcome"] == "a"
    assert api(owner, "post", "/api/arena/votes", {"model_a_id": a.pk, "model_b_id": b.pk,
                                                   "outcome": "maybe"}).json()["detail"].startswith("outcome:")
    assert api(outsider, "post", "/api/arena/votes", {"model_a_id": a.pk, "model_b_id": b.pk,
                                                      "outcome": "a"}).status_code == 404
    assert [v["id"] for v in api(owner, "get", "/api/arena/votes").json()] == [voted.json()["id"]]
    assert api(outsider, "get", "/api/arena/votes").json() == [] and ArenaVote.objects.count() == 1
    assert api(owner, "get", "/api/arena/ratings").json()["ratings"] == []
    job = api(owner, "post", "/api/arena/ratings")
    assert job.status_code == 201 and job.json()["kind"] == "arena_ratings"
    assert job.json()["params"]["votes_path"].startswith("evaluations/arena/")
    ArenaRatingSnapshot.objects.create(job_id=job.json()["id"], votes=1, win_rate={str(a.pk): {str(b.pk): 1.0}},
                                       ratings=[{"version_id": a.pk, "label": "a v1", "rating": 1100.0}])
    shown = api(users["teammate"], "get", "/api/arena/ratings").json()
    assert shown["votes"] == 1 and shown["ratings"][0]["label"] == "a v1" and shown["job_id"] == job.json()["id"]
    assert api(outsider, "get", "/api/arena/ratings").json()["ratings"] == []
