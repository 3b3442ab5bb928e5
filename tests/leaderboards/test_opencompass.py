"""Importing an OpenCompass summary CSV: its scores are stored as published, its rows sit on the
leaderboard marked "imported", and a bad file is refused with its line and column, storing
nothing."""
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.leaderboards import board, opencompass
from apps.leaderboards.models import ImportedScore, ImportedSummary
from apps.leaderboards.services import RefusedInput

pytestmark = pytest.mark.django_db

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "opencompass" / "summary_demo.csv"
HEADER = "dataset,version,metric,mode,model-a,model-b\n"


def upload(text: str | bytes, name="summary_20240101_000000.csv"):
    return SimpleUploadedFile(name, text if isinstance(text, bytes) else text.encode(), content_type="text/csv")


def test_a_published_summary_is_stored_score_by_score_without_its_separator_rows(users):
    summary = opencompass.import_summary(users["owner"], upload(DEMO.read_bytes(), "summary_demo.csv"))
    assert summary.filename == "summary_demo.csv" and summary.owner == users["owner"]
    scores = {(s.dataset, s.model_name): s for s in summary.scores.all()}
    assert len(scores) == 6 * 2  # six datasets, two models; the three separator rows are skipped
    gsm8k = scores[("gsm8k", "internlm2-chat-1.8b-hf")]
    assert (gsm8k.version, gsm8k.metric, gsm8k.mode, gsm8k.value) == ("1d7fe4", "accuracy", "gen", 38.59)
    assert scores[("quiz", "qwen1.5-1.8b-chat-hf")].value is None  # "-": not evaluated
    assert scores[("openai_humaneval", "qwen1.5-1.8b-chat-hf")].metric == "humaneval_pass@1"


def test_imported_rows_join_the_board_where_a_dataset_matches_a_benchmark(users, make_benchmark, make_suite, make_version,
                                                                        finished_run):
    owner = users["owner"]
    quiz = make_benchmark(owner, "quiz")
    suite = make_suite(owner, [quiz])
    finished_run(owner, suite, make_version(owner), {quiz: [True, False, False, False]})
    opencompass.import_summary(owner, upload(DEMO.read_bytes()))
    rows = board.leaderboard(owner, suite)["rows"]
    assert [(r["label"], r["imported"]) for r in rows] == [("internlm2-chat-1.8b-hf", True), ("tiny v1", False)]
    imported = rows[0]["scores"][quiz.pk]
    assert imported["score"] == pytest.approx(0.625)  # 62.50 % as a fraction, like ours
    assert (imported["ci_low"], imported["hash"], imported["contamination"]) == (None, "", "unknown")
    assert rows[0]["kind"] == "imported" and rows[0]["overall"] == pytest.approx(0.625)
    assert [r["label"] for r in board.leaderboard(owner, suite, kind="imported")["rows"]] == ["internlm2-chat-1.8b-hf"]
    assert [r["imported"] for r in board.leaderboard(users["teammate"], suite)["rows"]] == [True, False]  # a teammate's import


def test_an_outsiders_import_never_reaches_the_owners_board(users, make_benchmark, make_suite):
    quiz = make_benchmark(users["owner"], "quiz")
    suite = make_suite(users["owner"], [quiz])
    opencompass.import_summary(users["outsider"], upload(DEMO.read_bytes()))
    assert board.leaderboard(users["owner"], suite)["rows"] == []


@pytest.mark.parametrize("text, where", [
    ("model,version,metric,mode,a\n", "line 1, column 1"),
    ("dataset,version,metric\n", "line 1, column 4"),
    ("dataset,version,metric,mode\n", "line 1"),
    (HEADER.replace("model-b", "model-a"), "line 1, column 6"),
    (HEADER + "gsm8k,1d7fe4,accuracy,gen,38.59,41.09\nmmlu,4d595a,accuracy,gen,4x.2,-\n", "line 3, column 5"),
    (HEADER + "gsm8k,1d7fe4,accuracy,gen,38.59,nan\n", "line 2, column 6"),
    (HEADER + "gsm8k,1d7fe4,accuracy,gen,38.59\n", "line 2"),
    (HEADER + ",1d7fe4,accuracy,gen,1,2\n", "line 2, column 1"),
    (HEADER + "ceval,1d9f5e,naive_average,gen,1,2\n" + "x" * 300 + ",v,m,gen,1,2\n", "line 3, column 1"),
    (HEADER + "a,b,c,gen,1,\"2\x00\"\n", "line 2"),
    (HEADER + "sep,-,-,-,-,-\n", "no scores"),
    ("", "empty"),
])
def test_a_bad_summary_is_refused_naming_the_line_and_column_and_stores_nothing(users, text, where):
    with pytest.raises(RefusedInput) as refused:
        opencompass.import_summary(users["owner"], upload(text))
    assert refused.value.field == "file" and where in refused.value.reason, refused.value.reason
    assert not ImportedSummary.objects.exists() and not ImportedScore.objects.exists()


def test_a_summary_is_bounded_before_it_is_parsed(users):
    too_many_models = "dataset,version,metric,mode," + ",".join(f"m{i}" for i in range(51)) + "\n"
    too_many_rows = HEADER + "d,v,accuracy,gen,1,2\n" * 5001
    for text, reason in ((too_many_models, "at most 50"), (too_many_rows, "more than 5,000 rows"),
                         (HEADER + "x" * (1024 * 1024), "at most 1,048,576"), (b"dataset\xff,version\n", "UTF-8")):
        with pytest.raises(RefusedInput) as refused:
            opencompass.import_summary(users["owner"], upload(text))
        assert reason in refused.value.reason, refused.value.reason
    assert not ImportedSummary.objects.exists()
