"""The cleaning job end to end: stage order, the report's arithmetic, canonical output written
atomically, progress and metrics, cancel, spec validation, every canonical format."""
import io
import json

import pytest

from workers.core.data.cleaning import STAGES, CleaningSpec, run_cleaning
from workers.core.data.schema import record_text
from workers.core.reporting import ConsoleReporter, JobCancelled
from workers.core.specs import SpecError, build_spec

EN = [
    "The river flows past the old mill and the children play on its banks in the summer.",
    "A good loaf of bread needs flour, water, salt and time, and the patience to let it rise.",
    "The train to the coast leaves at nine, and the journey takes about three hours with one change.",
    "Our team meets on Mondays to plan the week and to review what we learned from the last one.",
]
ZH = "今天天气很好，我们一起去公园散步吧。这个城市的历史非常悠久，有很多名胜古迹值得参观。"
EVAL_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
          "How many clips did Natalia sell altogether in April and May?")


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _mixed_input(tmp_path):
    texts = [
        EN[0],
        "Ｔｈｅ  garden   was quiet and the birds sang\x00 in the trees with the morning light.",  # normalize
        "Le jardin était calme et les oiseaux chantaient dans les arbres avec la lumière du matin.",  # language
        "Too short.",  # quality
        EN[1],
        EN[1].upper(),  # exact duplicate (case)
        EN[2].replace("nine", "ten"),  # near duplicate of the next... kept (first)
        EN[2],  # near duplicate of the previous line
        EN[3] + " Write to me at anna.schmidt@example.com or call 555-123-4567.",  # pii
        "Homework: " + EVAL_Q + " Show your work.",  # decontaminate
        ZH,
    ]
    return _write(tmp_path / "in.jsonl", [{"text": t, "meta": {"line": i, "source": "mix"}}
                                          for i, t in enumerate(texts, 1)])


@pytest.fixture
def reporter():
    return ConsoleReporter(stream=io.StringIO())


def test_every_stage_runs_in_order_and_the_report_adds_up(tmp_path, reporter):
    src = _mixed_input(tmp_path)
    evals = _write(tmp_path / "gsm8k.jsonl", [{"question": EVAL_Q, "answer": "72"}])
    out = tmp_path / "out.jsonl"
    report = run_cleaning(src, out, "text", CleaningSpec(languages="en,zh"), reporter,
                          eval_paths=[evals], eval_canonicals=["qa"])

    stages = report["stages"]
    assert [s["name"] for s in stages] == list(STAGES)
    assert all(s["enabled"] for s in stages)
    dropped = {s["name"]: s["drop_reasons"] for s in stages}
    assert dropped == {"normalize": {}, "language": {"language:fr": 1}, "quality": {"too_short": 1},
                       "dedup_exact": {"exact_duplicate": 1}, "dedup_near": {"near_duplicate": 1}, "pii": {},
                       "decontaminate": {"eval:gsm8k": 1}}
    assert report["input_docs"] == 11 and stages[0]["input_docs"] == 11
    previous = None
    for stage in stages:
        assert stage["input_docs"] == stage["kept_docs"] + stage["dropped_docs"]
        assert stage["dropped_docs"] == sum(stage["drop_reasons"].values())
        assert len(stage["examples"]) <= 5
        assert all(len(e["text"]) <= 300 and set(e) == {"line", "reason", "text"} for e in stage["examples"])
        if previous:
            assert stage["input_docs"] == previous["kept_docs"]
            assert stage["input_chars"] == previous["kept_chars"]
        previous = stage
    assert stages[0]["modified_docs"] == 1
    assert stages[1]["languages"] == {"en": 9, "fr": 1, "zh": 1}
    assert stages[5]["pii"] == {"email": 1, "phone": 1, "id_card": 0, "credit_card": 0, "ip": 0}

    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert report["output_docs"] == len(records) == stages[-1]["kept_docs"] == 6
    assert report["output_chars"] == sum(len(record_text(r, "text")) for r in records)
    assert [r["meta"]["line"] for r in records] == [1, 2, 5, 7, 9, 11]
    assert all(set(r) == {"text", "meta"} and r["meta"]["source"] == "mix" for r in records)
    assert records[1]["text"] == "The garden was quiet and the birds sang in the trees with the morning light."
    assert records[4]["text"].endswith("Write to me at [EMAIL] or call [PHONE].")
    assert lines[0] == src.read_text(encoding="utf-8").splitlines()[0]  # untouched: byte for byte


def test_progress_and_metrics_are_reported_per_stage(tmp_path, reporter):
    src = _write(tmp_path / "in.jsonl", [{"text": f"{EN[i % 4]} Record number {i}.", "meta": {"line": i}}
                                         for i in range(600)])
    run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(), reporter)
    funnel = [(name, step) for name, step, _ in reporter.metrics if name == "kept_after_stage"]
    assert funnel == [("kept_after_stage", i) for i in range(len(STAGES))]
    assert next(value for name, _, value in reporter.metrics if name == "kept_after_stage") == 600
    assert all(name in ("kept_after_stage", "records_kept") for name, _, _ in reporter.metrics)
    assert reporter.fractions == sorted(reporter.fractions) and reporter.fractions[-1] == 1.0
    assert "decontaminate: skipped (no evaluation sets selected)" in reporter.lines


def test_skipped_stages_pass_everything_through_and_say_so(tmp_path, reporter):
    src = _mixed_input(tmp_path)
    spec = CleaningSpec(normalize=False, quality=False, dedup_exact=False, dedup_near=False, pii=False,
                        decontaminate=False)
    report = run_cleaning(src, tmp_path / "out.jsonl", "text", spec, reporter)
    for stage in report["stages"]:
        if stage["name"] != "language":
            assert (stage["enabled"], stage["skipped"]) == (False, "turned off in the spec")
            assert stage["input_docs"] == stage["kept_docs"] == 11 and stage["dropped_docs"] == 0
    assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == src.read_text(encoding="utf-8")


class StopAfter(ConsoleReporter):
    def __init__(self, checks):
        super().__init__(stream=io.StringIO())
        self.checks = checks

    def should_stop(self):
        self.checks -= 1
        return self.checks < 0


def test_a_cancel_mid_run_raises_job_cancelled_and_leaves_nothing_at_the_output_path(tmp_path):
    src = _write(tmp_path / "in.jsonl", [{"text": f"{EN[i % 4]} Record {i}.", "meta": {"line": i}} for i in range(1000)])
    out = tmp_path / "clean" / "out.jsonl"
    reporter = StopAfter(checks=3)  # the start, after the model load, the first chunk of 256; stops at the 2nd
    with pytest.raises(JobCancelled):
        run_cleaning(src, out, "text", CleaningSpec(), reporter)
    assert reporter.checks < 0
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary file left either


def test_a_line_that_is_not_a_canonical_record_fails_with_its_line_number(tmp_path, reporter):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine, a record of the right shape."}\n{"txt": "wrong"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="in.jsonl line 2: not a canonical text record"):
        run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(), reporter)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("fmt, record, expected", [
    ("qa", {"question": "Ｑ：What  is   two plus two, the sum of the numbers?", "answer": "It is 4.\x00 Call 555-123-4567."},
     {"question": "Q：What is two plus two, the sum of the numbers?", "answer": "It is 4. Call [PHONE]."}),
    ("multiple_choice", {"question": "Which  of these is the capital of France and of the French?",
                         "choices": ["Paris\u200b", "Ｌｙｏｎ"], "answer": "A", "subject": "geo  graphy"},
     {"question": "Which of these is the capital of France and of the French?", "choices": ["Paris", "Lyon"],
      "answer": "A", "subject": "geo  graphy"}),
    ("preference", {"prompt": [{"role": "user", "content": "Write  to me at a.b@example.com about the weather."}],
                    "chosen": [{"role": "assistant", "content": "The weather is fine and the sun is out today."}],
                    "rejected": [{"role": "assistant", "content": "No.  "}]},
     {"prompt": [{"role": "user", "content": "Write to me at [EMAIL] about the weather."}],
      "chosen": [{"role": "assistant", "content": "The weather is fine and the sun is out today."}],
      "rejected": [{"role": "assistant", "content": "No."}]}),
    ("code", {"task_id": "t/1", "prompt": 'def add(a,  b):\r\n    """Add two numbers; mail x@y.org."""\r\n',
              "tests": "assert add(1,  2) == 3\n", "entry_point": "add", "canonical_solution": "    return a+b\n"},
     {"task_id": "t/1", "prompt": 'def add(a,  b):\n    """Add two numbers; mail [EMAIL]."""\n',
      "tests": "assert add(1,  2) == 3\n", "entry_point": "add", "canonical_solution": "    return a+b\n"}),
])
def test_each_format_is_cleaned_where_its_text_lives_and_keeps_its_structure(tmp_path, reporter, fmt, record, expected):
    src = _write(tmp_path / "in.jsonl", [{**record, "meta": {"line": 1}}])
    run_cleaning(src, tmp_path / "out.jsonl", fmt, CleaningSpec(), reporter)
    assert json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8")) == {**expected, "meta": {"line": 1}}


def test_an_empty_input_gives_an_empty_output_and_a_report_of_zeros(tmp_path, reporter):
    src = tmp_path / "in.jsonl"
    src.write_text("", encoding="utf-8")
    report = run_cleaning(src, tmp_path / "out.jsonl", "chat", CleaningSpec(), reporter)
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert (report["input_docs"], report["output_docs"], report["output_chars"]) == (0, 0, 0)
    assert all(s["input_docs"] == s["kept_docs"] == 0 for s in report["stages"])


def test_evaluation_sets_need_a_known_format_each(tmp_path, reporter):
    src = _write(tmp_path / "in.jsonl", [{"text": EN[0]}])
    evals = _write(tmp_path / "e.jsonl", [{"question": EVAL_Q, "answer": "72"}])
    with pytest.raises(ValueError, match="1 evaluation sets but 0 canonical formats"):
        run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(), reporter, eval_paths=[evals])
    with pytest.raises(ValueError, match="unknown canonical format 'gsm8k'"):
        run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(), reporter, eval_paths=[evals],
                     eval_canonicals=["gsm8k"])
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("params, field", [
    ({"near_threshold": 1.5}, "near_threshold"),
    ({"min_chars": 50, "max_chars": 10}, "max_chars"),
    ({"num_perm": 4}, "num_perm"),
    ({"max_digit_ratio": -0.1}, "max_digit_ratio"),
    ({"require_stop_words": 9}, "require_stop_words"),
    ({"decontam_ngram": 1}, "decontam_ngram"),
    ({"num_perm": "128"}, "num_perm"),
    ({"dedup": True}, "dedup"),
])
def test_a_bad_spec_is_refused_with_the_field_named(params, field):
    with pytest.raises(SpecError) as err:
        build_spec(CleaningSpec, params)
    assert err.value.field == field


def test_run_cleaning_validates_the_spec_it_is_given(tmp_path, reporter):
    with pytest.raises(SpecError):
        run_cleaning(tmp_path / "missing.jsonl", tmp_path / "out.jsonl", "text", CleaningSpec(num_perm=1), reporter)


def test_the_live_progress_message_says_what_each_stage_has_dropped_so_far():
    from types import SimpleNamespace

    from workers.core.data.cleaning.pipeline import _live_message

    stages = [SimpleNamespace(name="quality", dropped_docs=12), SimpleNamespace(name="pii", dropped_docs=0),
              SimpleNamespace(name="dedup_near", dropped_docs=3)]
    assert _live_message(512, 2000, 497, stages) == "cleaning: 512/2000 records, 497 kept (quality −12, dedup_near −3)"
