"""The leaderboards pages through the Django test client: who sees what (owner and teammate read,
the outsider gets 404, a teammate cannot change), the leaderboard's sorting, filters and exports,
the evaluate form and the run page, the per-sample drill-down (model output is escaped), benchmarks
and suites, the OpenCompass import, the arena, and the model card and training run page links.

Runs are made as the worker would leave them: submitted through the service, then marked
SUCCEEDED with their scores and samples stored (no model runs here). Fixtures: conftest.py."""
from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from apps.jobs.models import JobMetric, JobStatus
from apps.leaderboards import services
from apps.leaderboards.models import (
    ArenaVote, Benchmark, BenchmarkScore, BenchmarkVersion, EvaluationRun, ImportedSummary, SampleResult, Suite)

MC_ROWS = [{"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2), str(i), "7"], "answer": "A"}
           for i in range(6)]
QA_ROWS = [{"question": f"Tom has {i} apples and buys 2. How many now?", "answer": str(i + 2)} for i in range(6)]
XSS = "<script>alert('pwned')</script>"


def finish(run: EvaluationRun, bv: BenchmarkVersion, correct: list[bool], *, output: str = "", score=None) -> EvaluationRun:
    """The run as the worker leaves it: SUCCEEDED, one score and its samples stored."""
    from workers.tasks import catalog

    job = run.job
    job.status, job.progress = JobStatus.SUCCEEDED, 1.0
    job.started_at = job.finished_at = timezone.now()
    job.save()
    right = sum(correct)
    low, high = catalog.wilson(right, len(correct))
    stored = BenchmarkScore.objects.create(run=run, benchmark_version=bv, metric="accuracy",
                                           score=right / len(correct) if score is None else score,
                                           ci_low=low, ci_high=high, n=len(correct), correct=right,
                                           extra={"cached": 0, "computed": len(correct)})
    for index, ok in enumerate(correct):
        SampleResult.objects.create(
            score=stored, index=index, correct=ok, prompt=f"Question {index}\nA. 1\nB. 2\nAnswer:", output=output,
            extracted="A" if ok else "B", reference="A",
            detail={"option_logprobs": [-0.5, -1.5, -2.0, -3.0] if ok else [-1.5, -0.5, -2.0, -3.0],
                    "option_scores": [-0.5, -1.5, -2.0, -3.0] if ok else [-1.5, -0.5, -2.0, -3.0]})
    return run


@pytest.fixture
def world(users, make_version, make_dataset):
    owner = users["owner"]
    data = make_dataset(owner, "multiple_choice", name="arith-mc", rows=MC_ROWS)
    qa = make_dataset(owner, "qa", name="arith-qa", rows=QA_ROWS)
    bv = services.create_benchmark(owner, name="arith", dataset_version=data, shape="multiple_choice",
                                   scorer={"paradigm": "likelihood"}, dimension="math", title="Arithmetic (MC)")
    suite_version = services.create_suite(owner, name="core", items=[(bv, 1.0)], description="the checks")
    small = make_version(owner, name="small")
    big = make_version(owner, name="big", parameter_count=2_000_000_000)
    weak = finish(services.submit_evaluation(owner, suite_version=suite_version, model_version=small), bv,
                  [True, False, False, True, False, False], output=XSS)
    strong = finish(services.submit_evaluation(owner, suite_version=suite_version, model_version=big), bv,
                    [True, True, True, True, False, True])
    return {"owner": owner, "data": data, "qa": qa, "bv": bv, "benchmark": bv.benchmark, "suite_version": suite_version,
            "suite": suite_version.suite, "small": small, "big": big, "weak": weak, "strong": strong}


def pages(w) -> list[str]:
    """Every page that shows one owned object (or lists them)."""
    run, bv, suite = w["weak"], w["bv"], w["suite"]
    return [f"/leaderboards/suites/{suite.pk}/board/", f"/leaderboards/suites/{suite.pk}/board.csv",
            f"/leaderboards/suites/{suite.pk}/board.json", f"/leaderboards/suites/{suite.pk}/",
            f"/leaderboards/runs/{run.pk}/", f"/leaderboards/runs/{run.pk}/progress/",
            f"/leaderboards/runs/{run.pk}/benchmarks/{bv.pk}/samples/",
            f"/leaderboards/runs/{run.pk}/benchmarks/{bv.pk}/samples/1/",
            f"/leaderboards/benchmarks/{bv.benchmark_id}/",
            f"/leaderboards/compare/?a={w['weak'].pk}&b={w['strong'].pk}"]


def test_the_owner_and_a_teammate_see_every_page_and_an_outsider_gets_404(client, users, world):
    for name in ("owner", "teammate"):
        client.force_login(users[name])
        for path in pages(world):
            assert client.get(path).status_code == 200, f"{name} {path}"
    client.force_login(users["outsider"])
    for path in pages(world):
        assert client.get(path).status_code == 404, f"outsider {path}"


def test_lists_show_only_what_the_user_may_see_with_an_empty_state_that_says_what_to_do(client, users, world):
    client.force_login(users["outsider"])
    for path, empty, link in (("/leaderboards/benchmarks/", "benchmarks-empty", "/leaderboards/benchmarks/new/"),
                              ("/leaderboards/suites/", "suites-empty", "/leaderboards/suites/new/"),
                              ("/leaderboards/runs/", "No evaluation yet", "/leaderboards/evaluate/"),
                              ("/leaderboards/import/", "imports-empty", "summary_*.csv"),
                              ("/leaderboards/arena/", "ratings-empty", "Playground")):
        html = client.get(path).content.decode()
        assert empty in html and link in html, path
        assert "arith" not in html, path
    client.force_login(users["teammate"])
    html = client.get("/leaderboards/").content.decode()
    assert f'/leaderboards/suites/{world["suite"].pk}/board/' in html and "Import OpenCompass results" in html
    assert re.search(r"<td>owner</td><td>1</td><td>2</td>", html)  # one benchmark, two ranked runs
    assert client.get("/leaderboards/benchmarks/").content.decode().count("arith") >= 1


def test_the_leaderboards_section_is_a_real_page_in_the_nav(client, users):
    client.force_login(users["owner"])
    html = client.get("/leaderboards/").content.decode()
    for button in ("Evaluate a model", "Benchmarks", "Suites", "Import OpenCompass results", "Arena"):
        assert button in html
    assert 'href="/leaderboards/"' in client.get("/").content.decode()
    assert client.get("/s/leaderboards/").status_code == 404  # no "coming" page any more


def _labels(html: str) -> list[str]:
    return re.findall(r'<tr class="[^"]*" data-label="([^"]+)"', html)


def test_the_leaderboard_sorts_on_the_server_and_every_link_works_without_script(client, users, world):
    client.force_login(users["owner"])
    url = f"/leaderboards/suites/{world['suite'].pk}/board/"
    html = client.get(url).content.decode()
    assert _labels(html) == [str(world["big"]), str(world["small"])]  # best overall first
    assert "83.3" in html and "33.3" in html  # 5/6 and 2/6 in percent, each with its interval
    assert world["bv"].short_hash[:8] in html
    worst_first = client.get(url + "?sort=overall&order=asc").content.decode()
    assert _labels(worst_first) == [str(world["small"]), str(world["big"])]
    by_name = client.get(url + "?sort=label&order=asc").content.decode()
    assert _labels(by_name) == sorted(_labels(by_name), key=str.lower)
    by_benchmark = client.get(url + f"?sort=bench:{world['bv'].pk}&order=asc").content.decode()
    assert _labels(by_benchmark)[0] == str(world["small"])
    # The heading links carry the sort in the query string.
    assert f"sort=bench%3A{world['bv'].pk}" in html or f"sort=bench:{world['bv'].pk}" in html
    bad = client.get(url + "?sort=nonsense")
    assert bad.status_code == 200 and "sort: must be one of" in bad.content.decode()


def test_the_leaderboard_filters_by_size_kind_owner_and_date(client, users, world):
    client.force_login(users["owner"])
    url = f"/leaderboards/suites/{world['suite'].pk}/board/"
    assert _labels(client.get(url + "?size_max=1000000000").content.decode()) == [str(world["small"])]
    assert _labels(client.get(url + "?kind=merged").content.decode()) == []
    assert "No row matches these filters" in client.get(url + "?kind=merged").content.decode()
    assert len(_labels(client.get(url + "?kind=base&owner=owner").content.decode())) == 2
    assert _labels(client.get(url + "?since=2999-01-01").content.decode()) == []
    invalid = client.get(url + "?since=yesterday").content.decode()
    assert "since:" in invalid and len(_labels(invalid)) == 2  # the bad filter is named and left out


def test_exports_are_csv_and_json_downloads_with_the_same_filters(client, users, world):
    client.force_login(users["owner"])
    base = f"/leaderboards/suites/{world['suite'].pk}/board"
    csv_response = client.get(base + ".csv?size_max=1000000000")
    assert csv_response["Content-Type"].startswith("text/csv")
    assert "attachment" in csv_response["Content-Disposition"]
    lines = csv_response.content.decode().strip().splitlines()
    assert len(lines) == 2 and str(world["small"]) in lines[1]
    data = client.get(base + ".json").json()
    assert [row["label"] for row in data["rows"]] == [str(world["big"]), str(world["small"])]
    assert client.get(base + ".xml").status_code == 404


def test_imported_opencompass_rows_are_marked_imported_on_the_board(client, users, world):
    client.force_login(users["owner"])
    csv_text = "dataset,version,metric,mode,internlm2-7b\narith,abc123,accuracy,ppl,71.5\n"
    response = client.post("/leaderboards/import/", {"summary": SimpleUploadedFile("summary_1.csv", csv_text.encode())})
    summary = ImportedSummary.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/leaderboards/import/{summary.pk}/"
    assert "71.50" in client.get(response["Location"]).content.decode()
    html = client.get(f"/leaderboards/suites/{world['suite'].pk}/board/").content.decode()
    assert "internlm2-7b" in html and 'class="status imported"' in html


def test_a_bad_summary_csv_is_refused_naming_the_line_and_column_and_stores_nothing(client, users):
    client.force_login(users["owner"])
    bad = "dataset,version,metric,mode,m1\nmmlu,x,accuracy,gen,not-a-number\n"
    response = client.post("/leaderboards/import/", {"summary": SimpleUploadedFile("summary_2.csv", bad.encode())})
    assert response.status_code == 422
    html = response.content.decode()
    assert "summary:" in html and re.search(r"line 2", html)
    assert not ImportedSummary.objects.exists()


def test_the_radar_and_compare_two_come_from_the_chosen_rows(client, users, world):
    client.force_login(users["owner"])
    weak, strong = world["weak"], world["strong"]
    html = client.get(f"/leaderboards/suites/{world['suite'].pk}/board/?runs={weak.pk}&runs={strong.pk}").content.decode()
    assert 'class="plotly-figure"' in html and 'id="radar-chart-figure"' in html and "<script>" not in html
    compare = client.get(f"/leaderboards/compare/?runs={weak.pk}&runs={strong.pk}").content.decode()
    assert "McNemar" in compare and "no significant difference" in compare  # 3 discordant pairs out of 6
    # The samples where they differ link to both sides' sample pages.
    assert f"/leaderboards/runs/{weak.pk}/benchmarks/{world['bv'].pk}/samples/1/" in compare
    assert f"/leaderboards/runs/{strong.pk}/benchmarks/{world['bv'].pk}/samples/1/" in compare
    one = client.get(f"/leaderboards/compare/?runs={weak.pk}&suite={world['suite'].pk}", HTTP_REFERER="https://evil.example/")
    assert one.status_code == 302 and one["Location"] == f"/leaderboards/suites/{world['suite'].pk}/board/"


def test_the_sample_page_escapes_the_model_output_and_shows_each_options_likelihood(client, users, world):
    client.force_login(users["teammate"])
    run, bv = world["weak"], world["bv"]
    response = client.get(f"/leaderboards/runs/{run.pk}/benchmarks/{bv.pk}/samples/1/")
    html = response.content.decode()
    assert XSS not in html
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert '<pre class="sample-text" id="sample-prompt">Question 1\nA. 1\nB. 2\nAnswer:</pre>' in html
    assert "incorrect" in html and "-1.5000" in html and "chosen" in html and "reference" in html
    assert "<script>" not in html.split("</head>")[1].replace('<script src="', "")  # only static scripts


def test_the_sample_list_filters_correct_and_incorrect_and_paginates(client, users, world):
    client.force_login(users["owner"])
    url = f"/leaderboards/runs/{world['weak'].pk}/benchmarks/{world['bv'].pk}/samples/"
    everything = client.get(url).content.decode()
    assert "All (6)" in everything and "Correct (2)" in everything and "Incorrect (4)" in everything
    wrong = client.get(url + "?correct=0").content.decode()
    assert wrong.count('class="verdict wrong"') == 4 and 'class="verdict right"' not in wrong
    assert client.get(url + "?page=999").status_code == 200  # the last page, not an error


def test_the_evaluate_form_is_prefilled_from_a_version_and_goes_to_the_run_page(client, users, world, make_version):
    owner = users["owner"]
    client.force_login(owner)
    fresh = make_version(owner, name="fresh")
    form = client.get(f"/leaderboards/evaluate/?target=v:{fresh.pk}&suite={world['suite'].pk}").content.decode()
    assert f'<option value="v:{fresh.pk}" selected>' in form
    assert f'<option value="{world["suite_version"].pk}" selected>' in form
    for help_text in ("Default 256, range 1–8192", "0 or blank = every row"):
        assert help_text in form
    response = client.post("/leaderboards/evaluate/", {"target": f"v:{fresh.pk}", "suite": world["suite_version"].pk,
                                                       "max_samples": 3, "max_new_tokens": 32})
    run = EvaluationRun.objects.get(model_version=fresh)
    assert response.status_code == 302 and response["Location"] == f"/leaderboards/runs/{run.pk}/"
    assert run.settings["max_samples"] == 3 and run.job.status == JobStatus.QUEUED
    page = client.get(response["Location"]).content.decode()
    assert 'id="benchmark-progress"' in page and 'hx-trigger="every 3s"' in page and "job_live.js" in page


def test_evaluate_errors_name_the_field_and_store_nothing(client, users, world):
    client.force_login(users["owner"])
    before = EvaluationRun.objects.count()
    response = client.post("/leaderboards/evaluate/", {"target": f"v:{world['small'].pk}", "suite": world["suite_version"].pk,
                                                       "max_new_tokens": 99999})
    assert response.status_code == 422 and "max_new_tokens:" in response.content.decode()
    outsider_version = world["small"]
    client.force_login(users["outsider"])
    response = client.post("/leaderboards/evaluate/", {"target": f"v:{outsider_version.pk}", "suite": world["suite_version"].pk,
                                                       "max_new_tokens": 16})
    assert response.status_code == 422 and "target:" in response.content.decode()
    assert EvaluationRun.objects.count() == before


def test_the_run_page_shows_live_progress_per_benchmark_from_the_jobs_metrics(client, users, world, make_version):
    owner = users["owner"]
    client.force_login(owner)
    run = services.submit_evaluation(owner, suite_version=world["suite_version"], model_version=make_version(owner, name="live"))
    job = run.job
    job.status, job.started_at = JobStatus.RUNNING, timezone.now() - timezone.timedelta(seconds=30)
    job.save()
    name = next(iter(run.settings["benchmarks"]))
    for step, value in ((2, 0.5), (3, 2 / 3)):
        JobMetric.objects.create(job=job, name=f"{name}/accuracy", step=step, value=value)
    html = client.get(f"/leaderboards/runs/{run.pk}/progress/").content.decode()
    row = re.search(r'<tr data-benchmark="[^"]+" data-state="running">.*?</tr>', html, re.S).group(0)
    assert '<span class="done">3</span> / 6' in row
    assert "66.7 [" in row  # the running accuracy with its interval
    assert re.search(r"<td>\d+ s</td>", row)  # 3 samples in 30 s: 30 s to go
    job.status = JobStatus.FAILED
    job.save()
    done = client.get(f"/leaderboards/runs/{run.pk}/progress/").content.decode()
    assert "hx-trigger" not in done and "not on the leaderboard" in done


def test_the_finished_run_page_lists_scores_with_intervals_hashes_and_sample_links(client, users, world):
    client.force_login(users["teammate"])
    run, bv = world["strong"], world["bv"]
    html = client.get(f"/leaderboards/runs/{run.pk}/").content.decode()
    assert 'id="score-table"' in html and bv.short_hash in html and "83.3 [" in html
    assert f"/leaderboards/runs/{run.pk}/benchmarks/{bv.pk}/samples/" in html
    assert 'class="flag unknown"' in html  # an imported base model has no lineage


def test_benchmarks_are_made_and_edited_through_the_form_and_a_new_hash_makes_a_new_version(client, users, world):
    owner = users["owner"]
    client.force_login(owner)
    new = client.get("/leaderboards/benchmarks/new/").content.decode()
    assert str(world["qa"].pk) in new and "{question}" in new
    response = client.post("/leaderboards/benchmarks/new/", {
        "name": "word-problems", "dataset_version": world["qa"].pk, "template": "Q: {question}\nA:",
        "answer_template": " {answer}", "fewshot_version": world["qa"].pk, "fewshot_rows": "0, 1", "fewshot_separator": "\n\n",
        "paradigm": "generation", "extractor": "final_number", "dimension": "math"})
    benchmark = Benchmark.objects.get(name="word-problems")
    assert response.status_code == 302 and response["Location"] == f"/leaderboards/benchmarks/{benchmark.pk}/"
    version = benchmark.versions.get()
    assert version.fewshot_rows == [0, 1] and version.definition["scorer"]["extractor"] == "final_number"
    detail = client.get(response["Location"]).content.decode()
    assert version.short_hash in detail and "Q: {question}" in detail and "extractor=final_number" in detail
    edit = f"/leaderboards/benchmarks/{benchmark.pk}/edit/"
    assert "Q: {question}" in client.get(edit).content.decode()  # the form starts from the latest version
    fields = {"dataset_version": world["qa"].pk, "template": "Question: {question}\nAnswer:", "answer_template": " {answer}",
              "fewshot_separator": "\n\n", "paradigm": "generation", "extractor": "final_number", "dimension": "math"}
    assert client.post(edit, fields).status_code == 302
    assert benchmark.versions.count() == 2
    assert client.post(edit, {**fields, "title": "renamed"}).status_code == 302
    assert benchmark.versions.count() == 2  # a label is not a new version
    crlf = {**fields, "template": fields["template"].replace("\n", "\r\n"), "fewshot_separator": "\r\n\r\n"}
    assert client.post(edit, crlf).status_code == 302
    assert benchmark.versions.count() == 2  # a browser's CRLF line breaks are the same prompt


def test_benchmark_form_errors_name_the_field(client, users, world):
    client.force_login(users["owner"])
    response = client.post("/leaderboards/benchmarks/new/", {
        "name": "broken", "dataset_version": world["data"].pk, "template": "{question} {nonsense}",
        "answer_template": " {answer}", "paradigm": "likelihood", "dimension": "math"})
    assert response.status_code == 422
    assert re.search(r"template: .*nonsense", response.content.decode())
    response = client.post("/leaderboards/benchmarks/new/", {
        "name": "broken", "dataset_version": world["data"].pk, "fewshot_rows": "0, x", "paradigm": "likelihood",
        "dimension": "math"})
    assert "fewshot_rows: " in response.content.decode()
    assert not Benchmark.objects.filter(name="broken").exists()


def test_a_teammate_can_read_but_not_change_a_benchmark_or_a_suite(client, users, world):
    client.force_login(users["teammate"])
    benchmark, suite = world["benchmark"], world["suite"]
    assert "edit-benchmark" not in client.get(f"/leaderboards/benchmarks/{benchmark.pk}/").content.decode()
    assert client.get(f"/leaderboards/benchmarks/{benchmark.pk}/edit/").status_code == 302
    assert client.post(f"/leaderboards/benchmarks/{benchmark.pk}/edit/", {"template": "x"}).status_code == 403
    assert client.post(f"/leaderboards/suites/{suite.pk}/edit/", {f"w_{world['bv'].pk}": 2}).status_code == 403
    assert benchmark.versions.count() == 1 and suite.versions.count() == 1
    client.force_login(users["outsider"])
    assert client.get(f"/leaderboards/benchmarks/{benchmark.pk}/edit/").status_code == 404
    assert client.post(f"/leaderboards/suites/{suite.pk}/edit/").status_code == 404


def test_suites_are_made_and_edited_with_weights(client, users, world):
    owner = users["owner"]
    client.force_login(owner)
    qa_version = services.create_benchmark(owner, name="qa", dataset_version=world["qa"], shape="qa",
                                           scorer={"paradigm": "generation"}, dimension="reasoning")
    form = client.get("/leaderboards/suites/new/").content.decode()
    assert f'name="w_{qa_version.pk}"' in form and f'name="w_{world["bv"].pk}"' in form
    nothing = client.post("/leaderboards/suites/new/", {"name": "empty"})
    assert nothing.status_code == 422 and "items: give at least one benchmark a weight" in nothing.content.decode()
    response = client.post("/leaderboards/suites/new/", {"name": "release checks", f"w_{qa_version.pk}": "2",
                                                         f"w_{world['bv'].pk}": "0.5"})
    suite = Suite.objects.get(name="release checks")
    assert response.status_code == 302
    assert sorted(suite.versions.get().items.values_list("weight", flat=True)) == [0.5, 2.0]
    edit = client.post(f"/leaderboards/suites/{suite.pk}/edit/", {f"w_{qa_version.pk}": "1"})
    assert edit.status_code == 302 and suite.versions.count() == 2
    assert "v2" in client.get(f"/leaderboards/suites/{suite.pk}/").content.decode()
    # A benchmark's new version is offered instead of the old one; a suite's edit form keeps what it holds.
    newer = services.edit_benchmark(owner, qa_version.benchmark, template="Q: {question}\nA:")
    offered = client.get("/leaderboards/suites/new/").content.decode()
    assert f'name="w_{newer.pk}"' in offered and f'name="w_{qa_version.pk}"' not in offered
    kept = client.get(f"/leaderboards/suites/{suite.pk}/edit/").content.decode()
    assert f'name="w_{qa_version.pk}"' in kept and f'name="w_{newer.pk}"' in kept


def test_arena_recompute_queues_a_job_and_never_computes_in_the_request(client, users, world):
    owner = users["owner"]
    client.force_login(owner)
    refused = client.post("/leaderboards/arena/recompute/", follow=True)
    assert "votes: there are no votes" in refused.content.decode()
    ArenaVote.objects.create(voter=owner, model_a=world["small"], model_b=world["big"], outcome="b")
    response = client.post("/leaderboards/arena/recompute/")
    assert response.status_code == 302
    job = owner.jobs.get(kind="arena_ratings")
    assert job.status == JobStatus.QUEUED
    html = client.get("/leaderboards/arena/").content.decode()
    assert f"/jobs/{job.pk}/" in html and "disabled" in html


def test_the_arena_page_shows_ratings_intervals_and_the_win_rate_heatmap(client, users, world):
    from apps.jobs.models import Job
    from apps.leaderboards.models import ArenaRatingSnapshot

    owner = users["owner"]
    job = Job.objects.create(owner=owner, kind="arena_ratings", status=JobStatus.SUCCEEDED, params={})
    small, big = world["small"], world["big"]
    ArenaRatingSnapshot.objects.create(job=job, votes=3, ratings=[
        {"version_id": big.pk, "label": str(big), "rating": 1034.2, "low": 990.1, "high": 1080.5, "votes": 3, "wins": 2,
         "losses": 1, "ties": 0, "both_bad": 0},
        {"version_id": small.pk, "label": str(small), "rating": 965.8, "low": 920.0, "high": 1010.0, "votes": 3, "wins": 1,
         "losses": 2, "ties": 0, "both_bad": 1}],
        win_rate={str(big.pk): {str(small.pk): 0.667}, str(small.pk): {str(big.pk): 0.333}})
    client.force_login(users["teammate"])
    html = client.get("/leaderboards/arena/").content.decode()
    assert "1034" in html and "[990, 1081]" in html and 'id="win-rate-chart-figure"' in html
    client.force_login(users["outsider"])
    assert str(big) not in client.get("/leaderboards/arena/").content.decode()


def test_the_model_card_shows_its_scores_and_an_evaluate_button(client, users, world):
    client.force_login(users["teammate"])
    big = world["big"]
    card = client.get(f"/models/{big.model_id}/").content.decode()
    assert 'id="evaluation-scores"' in card and "83.3 [" in card and world["bv"].short_hash[:8] in card
    assert f"/leaderboards/evaluate/?target=v:{big.pk}" in card
    page = client.get(f"/models/versions/{big.pk}/").content.decode()
    assert f"/leaderboards/runs/{world['strong'].pk}/" in page and f"?target=v:{big.pk}" in page


def test_a_finished_training_run_offers_evaluate_this_version(client, users, world):
    from apps.jobs.models import Job
    from apps.registry.models import ModelVersion
    from apps.training.models import TrainingRun

    owner = users["owner"]
    job = Job.objects.create(owner=owner, kind="train", status=JobStatus.SUCCEEDED, params={}, queue="gpu")
    TrainingRun.objects.create(job=job, method="sft", finetune="full", base_version=world["small"],
                               target_model=world["small"].model)
    version = ModelVersion.objects.create(model=world["small"].model, number=9, kind="base", source="train",
                                          source_job=job, created_by=owner)
    client.force_login(owner)
    html = client.get(f"/training/{job.pk}/").content.decode()
    assert f'href="/leaderboards/evaluate/?target=v:{version.pk}"' in html and "Evaluate this version" in html
    # A LoRA run registers an adapter: it is evaluated as trained, on its base (not merged).
    version.kind, version.parent = "adapter", world["small"]
    version.save()
    assert f'href="/leaderboards/evaluate/?target=v:{version.pk}"' in client.get(f"/training/{job.pk}/").content.decode()


def test_no_page_shows_a_server_path(client, users, world, settings):
    client.force_login(users["owner"])
    data_dir = str(settings.DATA_DIR)
    for path in pages(world) + ["/leaderboards/", "/leaderboards/evaluate/", "/leaderboards/benchmarks/new/",
                                f"/models/versions/{world['big'].pk}/"]:
        assert data_dir not in client.get(path).content.decode(), path


def test_the_benchmark_forms_choices_are_the_ones_the_core_knows():
    """The form's labelled choices are written out for people; the core decides what is valid."""
    from apps.leaderboards import forms
    from workers.core.evaluation import spec
    from workers.core.evaluation.extract import EXTRACTORS
    from workers.core.evaluation.likelihood import NORMALIZATIONS
    from workers.core.inference.chat import NAMED_TEMPLATES

    assert [p for p, _ in forms.PARADIGMS] == list(spec.PARADIGMS)
    assert {p: set(f) for p, f in forms.SCORER_FIELDS.items()} == {p: set(s) for p, s in spec.SCORER_SETTINGS.items()}
    assert {e for e, _ in forms.EXTRACTORS} == set(EXTRACTORS)
    assert [n for n, _ in forms.NORMALIZATIONS] == list(NORMALIZATIONS)
    assert {t for t, _ in forms.CHAT_TEMPLATES} == {""} | set(NAMED_TEMPLATES)
    assert set(forms.EVAL_SHAPES) == set(spec.SHAPES)
    grouped = [name for _, names in forms.BenchmarkForm.GROUPS for name in names]
    assert sorted(grouped) == sorted(forms.BenchmarkForm.base_fields)  # the page shows every field once


def test_an_agent_benchmark_shows_its_tool_call_and_argument_accuracy_beside_the_final_answer_score(client, world):
    score = world["weak"].scores.get()
    score.extra |= {"tool_call_accuracy": 0.96, "tool_call_accuracy_low": 0.902, "tool_call_accuracy_high": 0.984,
                    "argument_accuracy": 0.71, "argument_accuracy_low": 0.615, "argument_accuracy_high": 0.789}
    score.save()
    client.force_login(world["owner"])
    page = client.get(f"/leaderboards/runs/{world['weak'].pk}/").content.decode()
    assert "tool calls 96.0 [90.2, 98.4] · arguments 71.0 [61.5, 78.9]" in page
    other = client.get(f"/leaderboards/runs/{world['strong'].pk}/").content.decode()
    assert "agent-metrics" not in other  # not an agent benchmark
