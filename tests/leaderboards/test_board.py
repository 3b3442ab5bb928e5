"""Leaderboards from stored scores: one row per model version (its latest finished run), 95%
intervals and hashes beside each score, averages that never mix bits per byte with accuracies,
filters, sorting, exports, the two-run comparison and the radar."""
import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.jobs.models import Job, JobStatus
from apps.leaderboards import board, services
from apps.leaderboards.models import Benchmark, EvaluationRun, Suite
from workers.tasks import catalog

pytestmark = pytest.mark.django_db

A_QUIZ = [True, True, True, True, False, False]  # 4/6
B_QUIZ = [False, True, False, True, False, False]  # 2/6
A_SUMS = [True, False, False, False]  # 1/4
B_SUMS = [True, True, True, False]  # 3/4


def prose(nll):
    return [{"nll": nll, "bytes": 40, "tokens": 10}, {"nll": nll * 2, "bytes": 40, "tokens": 10}]


@pytest.fixture
def setup(users, make_benchmark, make_suite, make_version, finished_run):
    owner, teammate = users["owner"], users["teammate"]
    quiz = make_benchmark(owner, "quiz")
    sums = make_benchmark(owner, "sums", shape="qa", dimension="math")
    text = make_benchmark(owner, "prose", shape="text", dimension="language")
    suite = make_suite(owner, [quiz, sums, text], weights=[1, 3, 1])
    a = make_version(owner, "alpha", parameter_count=1_000)
    b = make_version(teammate, "beta", kind="merged", parameter_count=5_000)
    run_a = finished_run(owner, suite, a, {quiz: A_QUIZ, sums: A_SUMS, text: prose(20.0)})
    run_b = finished_run(teammate, suite, b, {quiz: B_QUIZ, sums: B_SUMS, text: prose(10.0)})
    return {"quiz": quiz, "sums": sums, "text": text, "suite": suite, "a": a, "b": b, "run_a": run_a, "run_b": run_b}


def row_of(table, label):
    return next(row for row in table["rows"] if row["label"] == label)


def test_each_row_carries_scores_with_intervals_hashes_and_both_averages(users, setup):
    table = board.leaderboard(users["owner"], setup["suite"].suite)
    assert table["benchmarks"] == [setup["quiz"], setup["sums"], setup["text"]]
    assert table["dimensions"] == ["knowledge", "math"]  # language holds only bits per byte
    assert table["lower_is_better"] == [setup["text"].pk]
    alpha = row_of(table, "alpha v1")
    quiz = alpha["scores"][setup["quiz"].pk]
    low, high = catalog.wilson(4, 6)
    assert (quiz["score"], quiz["ci_low"], quiz["ci_high"]) == (pytest.approx(4 / 6), pytest.approx(low), pytest.approx(high))
    assert quiz["hash"] == setup["quiz"].version_hash and quiz["metric"] == "accuracy"
    assert quiz["contamination"] == "unknown"  # an imported model: no training lineage
    assert alpha["scores"][setup["text"].pk]["metric"] == "bits_per_byte"
    assert alpha["dimensions"] == {"knowledge": pytest.approx(4 / 6), "math": pytest.approx(0.25)}
    assert alpha["overall"] == pytest.approx((4 / 6 + 0.25) / 2)
    assert alpha["overall_weighted"] == pytest.approx((4 / 6 + 3 * 0.25) / 4)
    assert (alpha["kind"], alpha["owner"], alpha["size"], alpha["imported"]) == ("base", "owner", 1000, False)


def test_the_rows_are_sorted_by_overall_best_first_and_by_any_column(users, setup):
    owner = users["owner"]
    assert [r["label"] for r in board.leaderboard(owner, setup["suite"])["rows"]] == ["beta v1", "alpha v1"]
    by_quiz = board.leaderboard(owner, setup["suite"], sort=f"bench:{setup['quiz'].pk}")
    assert [r["label"] for r in by_quiz["rows"]] == ["alpha v1", "beta v1"]
    lowest_bits = board.leaderboard(owner, setup["suite"], sort=str(setup["text"].pk), descending=False)
    assert [r["label"] for r in lowest_bits["rows"]] == ["beta v1", "alpha v1"]
    assert [r["label"] for r in board.leaderboard(owner, setup["suite"], sort="size")["rows"]] == ["beta v1", "alpha v1"]
    assert [r["label"] for r in board.leaderboard(owner, setup["suite"], sort="knowledge")["rows"]][0] == "alpha v1"
    with pytest.raises(services.RefusedInput) as refused:
        board.leaderboard(owner, setup["suite"], sort="__class__")
    assert refused.value.field == "sort"


def test_filters_by_kind_owner_size_and_date(users, setup):
    owner = users["owner"]

    def labels(**filters):
        return [r["label"] for r in board.leaderboard(owner, setup["suite"], **filters)["rows"]]

    assert labels(kind="merged") == ["beta v1"]
    assert labels(owner="owner") == ["alpha v1"]
    assert labels(size_max=2_000) == ["alpha v1"]
    assert labels(since=timezone.now().date() + timedelta(days=1)) == []
    assert labels(since=timezone.now().date()) == ["beta v1", "alpha v1"]


def test_one_row_per_model_version_from_its_latest_finished_run_and_unfinished_runs_never_appear(
        users, setup, finished_run, make_version):
    owner = users["owner"]
    newer = finished_run(owner, setup["suite"], setup["a"], {setup["quiz"]: [True] * 6, setup["sums"]: [True] * 4,
                                                             setup["text"]: prose(5.0)}, max_samples=6)
    Job.objects.filter(pk=newer.job_id).update(finished_at=timezone.now() + timedelta(seconds=5))
    for status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.RUNNING, JobStatus.QUEUED):
        finished_run(owner, setup["suite"], make_version(owner, f"never-{status.lower()}"), {}, status=status)
    table = board.leaderboard(owner, setup["suite"])
    assert sorted(r["label"] for r in table["rows"]) == ["alpha v1", "beta v1"]
    assert row_of(table, "alpha v1")["run"] == newer and row_of(table, "alpha v1")["overall"] == 1.0


def test_an_outsiders_runs_are_absent_and_the_owners_board_is_404_to_them(users, setup, make_benchmark, make_suite,
                                                                           make_version, finished_run):
    from django.http import Http404

    outsider = users["outsider"]
    with pytest.raises(Http404):
        board.leaderboard(outsider, setup["suite"].suite)
    # The outsider evaluates their own model on a built-in suite everyone may see.
    system = services.system_user()
    Suite.objects.filter(pk=setup["suite"].suite_id).update(owner=system)
    Benchmark.objects.update(owner=system)
    finished_run(outsider, setup["suite"], make_version(outsider, "secret-model"),
                 {setup["quiz"]: [True] * 6, setup["sums"]: [True] * 4, setup["text"]: prose(1.0)})
    assert "secret-model v1" not in [r["label"] for r in board.leaderboard(users["owner"], setup["suite"])["rows"]]
    assert [r["label"] for r in board.leaderboard(outsider, setup["suite"])["rows"]] == ["secret-model v1"]


def test_a_teammates_run_on_a_version_from_another_team_stays_hidden(users, setup, make_user, make_version, finished_run):
    """The teammate sees the owner's runs; a run of the owner's on a version that only the owner
    may see (shared with another team) must not reveal that version to the teammate."""
    from django.contrib.auth.models import Group

    owner, teammate = users["owner"], users["teammate"]
    stranger = make_user("stranger")
    group = Group.objects.create(name="other-team")
    owner.groups.add(group)
    stranger.groups.add(group)
    version = make_version(stranger, "strangers-model")
    finished_run(owner, setup["suite"], version, {setup["quiz"]: [True] * 6})
    assert "strangers-model v1" in [r["label"] for r in board.leaderboard(owner, setup["suite"])["rows"]]
    assert "strangers-model v1" not in [r["label"] for r in board.leaderboard(teammate, setup["suite"])["rows"]]


def test_the_csv_and_json_exports_hold_every_score_with_its_hash_and_no_formula(users, setup):
    EvaluationRun.objects.filter(pk=setup["run_a"].pk).update(target_label='=HYPERLINK("x")')
    table = board.leaderboard(users["owner"], setup["suite"])
    rows = list(csv.reader(io.StringIO(board.leaderboard_csv(table))))
    header = rows[0]
    quiz_column = header.index(f"quiz [{setup['quiz'].version_hash[:12]}] accuracy")
    assert header[quiz_column + 1].endswith("ci_low") and header[quiz_column + 3].endswith("contamination")
    alpha = next(r for r in rows[1:] if "HYPERLINK" in r[0])
    assert alpha[0].startswith("'=")  # a spreadsheet shows it as text
    assert float(alpha[quiz_column]) == pytest.approx(4 / 6) and alpha[quiz_column + 3] == "unknown"
    data = board.leaderboard_json(table)
    assert data["suite"]["name"] == "core" and data["dimensions"] == ["knowledge", "math"]
    assert [b["lower_is_better"] for b in data["benchmarks"]] == [False, False, True]
    assert data["rows"][1]["scores"][str(setup["quiz"].pk)]["hash"] == setup["quiz"].version_hash
    assert data["rows"][1]["run_id"] == setup["run_a"].pk and isinstance(data["rows"][1]["date"], str)


def test_compare_uses_mcnemar_on_right_and_wrong_and_a_paired_bootstrap_on_bits_per_byte(users, setup):
    result = board.compare(users["owner"], setup["run_a"], setup["run_b"])
    by_bench = {item["benchmark_version"]: item for item in result["benchmarks"]}
    quiz = by_bench[setup["quiz"]]
    expected = catalog.mcnemar(A_QUIZ, B_QUIZ)
    assert quiz["test"]["name"] == "mcnemar" and quiz["test"]["p_value"] == pytest.approx(expected["p_value"])
    assert (quiz["test"]["only_a"], quiz["test"]["only_b"]) == (2, 0)
    assert [d["index"] for d in quiz["differing"]] == [0, 2] and quiz["differing_count"] == 2
    assert quiz["differing"][0]["a"]["correct"] is True and quiz["differing"][0]["b"]["correct"] is False
    assert quiz["differing"][0]["prompt"] == "prompt 0"
    bits = by_bench[setup["text"]]
    assert bits["test"]["name"] == "paired_bootstrap" and bits["test"]["difference"] > 0  # A has more bits per byte
    assert bits["a"]["metric"] == "bits_per_byte" and bits["n"] == 2


def test_compare_and_radar_refuse_unfinished_or_invisible_runs(users, setup, finished_run, make_version):
    from django.http import Http404

    running = finished_run(users["owner"], setup["suite"], make_version(users["owner"], "busy"), {},
                           status=JobStatus.RUNNING)
    with pytest.raises(services.RefusedInput) as refused:
        board.compare(users["owner"], setup["run_a"], running)
    assert refused.value.field == "b"
    with pytest.raises(Http404):
        board.compare(users["outsider"], setup["run_a"], setup["run_b"])
    with pytest.raises(Http404):
        board.radar(users["outsider"], [setup["run_a"]])


def test_the_radar_has_one_value_per_dimension_and_run(users, setup):
    chart = board.radar(users["owner"], [setup["run_a"], setup["run_b"]])
    assert chart["dimensions"] == ["knowledge", "math"]
    assert chart["series"][0] == {"label": "alpha v1", "run_id": setup["run_a"].pk, "values": [pytest.approx(4 / 6), 0.25]}
    assert chart["series"][1]["values"] == [pytest.approx(2 / 6), 0.75]
