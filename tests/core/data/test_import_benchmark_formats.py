"""A benchmark is added by uploading it as a dataset: each published layout (MMLU, C-Eval and
CMMLU CSV, GSM8K, ARC, HumanEval and MBPP JSON Lines) imports, through the same sniff, validate
and write_normalized an upload goes through, from a small hand-made file into the canonical
multiple_choice, qa or code records; MBPP's tests run in the sandbox's HumanEval check; and a bad
row in these layouts is refused naming its line and field."""
import json

import pytest

from tests.core.data.fixtures.import_support import fixture
from workers.core import sandbox
from workers.core.data import formats
from workers.core.data.formats import DataFileError


def upload(path, tmp_path, fmt=None):
    """Import `path` as an upload does and return the records written."""
    report = formats.validate(path, path.name, fmt)
    assert (report.errors, report.valid) == ([], report.total), report.errors
    out = tmp_path / "version" / "data.jsonl"
    result = formats.write_normalized(path, path.name, fmt, out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert result.rows == len(records) == report.total
    return records


def jsonl(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def refusal(path, fmt=None):
    with pytest.raises(DataFileError) as caught:
        formats.write_normalized(path, path.name, fmt, path.parent / "out" / "data.jsonl")
    assert not (path.parent / "out" / "data.jsonl").exists()
    return caught.value


@pytest.mark.parametrize("name, fmt, keys", [
    ("mmlu_style.csv", "multiple_choice", {"question", "choices", "answer", "meta"}),
    ("ceval_style.csv", "multiple_choice", {"question", "choices", "answer", "meta"}),
    ("cmmlu_style.csv", "multiple_choice", {"question", "choices", "answer", "meta"}),
    ("gsm8k_style.jsonl", "qa", {"question", "answer", "meta"}),
    ("arc_style.jsonl", "multiple_choice", {"question", "choices", "answer", "meta"}),
    ("humaneval_style.jsonl", "code", {"task_id", "prompt", "tests", "entry_point", "canonical_solution", "meta"}),
    ("mbpp_style.jsonl", "code", {"task_id", "prompt", "tests", "entry_point", "canonical_solution", "meta"}),
])
def test_each_benchmark_layout_is_detected_and_imports_to_its_canonical_shape(name, fmt, keys, tmp_path):
    assert formats.sniff(fixture(name), name).format == fmt
    records = upload(fixture(name), tmp_path)
    assert len(records) >= 3
    assert all(set(r) == keys for r in records)
    if fmt == "multiple_choice":
        assert all(r["answer"] in "ABCDE"[:len(r["choices"])] for r in records)


def test_a_headerless_mmlu_csv_reads_question_four_choices_and_the_answer_letter(tmp_path):
    first = upload(fixture("mmlu_style.csv"), tmp_path)[0]
    assert first == {"question": "Which gas do plants take in to make sugar?",
                     "choices": ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "answer": "B", "meta": {"line": 1}}


def test_a_ceval_csv_keeps_its_id_and_ignores_the_explanation_even_when_empty(tmp_path):
    first, second, third = upload(fixture("ceval_style.csv"), tmp_path)
    assert first == {"question": "水在标准大气压下的沸点是多少摄氏度？", "choices": ["50", "90", "100", "120"],
                     "answer": "C", "meta": {"line": 2, "id": "0"}}
    assert second["answer"] == "D"  # its explanation cell is empty
    assert third["choices"][0] == "7天，5个"  # a quoted cell with a comma stays one choice


def test_a_cmmlu_csv_reads_its_capitalised_columns_and_its_unnamed_index_column_is_no_error(tmp_path):
    found = formats.sniff(fixture("cmmlu_style.csv"), "cmmlu_style.csv")
    assert found.fields == ["", "Question", "A", "B", "C", "D", "Answer"]
    first, second, _ = upload(fixture("cmmlu_style.csv"), tmp_path)
    assert first == {"question": "中国的首都是哪座城市？", "choices": ["上海", "北京", "广州", "深圳"], "answer": "B",
                     "meta": {"line": 2}}
    assert second["answer"] == "C"


def test_gsm8k_keeps_the_worked_answer_with_its_final_number_after_the_hashes(tmp_path):
    first = upload(fixture("gsm8k_style.jsonl"), tmp_path)[0]
    assert first["question"].startswith("A baker makes 4 trays")
    assert first["answer"].endswith("\n#### 14") and "<<4*6=24>>" in first["answer"]


def test_arc_choices_are_ordered_by_label_and_the_answer_key_becomes_a_letter(tmp_path):
    letters, numbers, five = upload(fixture("arc_style.jsonl"), tmp_path)
    assert letters == {"question": "Which tool is best for measuring the mass of a rock?",
                       "choices": ["a ruler", "a balance", "a thermometer", "a magnifier"], "answer": "B",
                       "meta": {"line": 1, "id": "Hand_0001"}}
    # labels "3", "1", "2", "4" in the file: ordered 1..4, answerKey "1" is the first → A
    assert numbers["choices"] == ["it becomes a solid", "it gets hotter", "it turns into gas", "it disappears"]
    assert numbers["answer"] == "A"
    assert (len(five["choices"]), five["answer"]) == (5, "C")


def test_arc_as_hugging_face_copies_it_with_parallel_text_and_label_lists_imports_the_same(tmp_path):
    path = jsonl(tmp_path, "arc_hf.jsonl", [{"id": "Hand_9", "question": "Which is a liquid at room temperature?",
                                            "choices": {"text": ["ice", "water", "steam"], "label": ["1", "2", "3"]},
                                            "answerKey": "2"}])
    assert upload(path, tmp_path) == [{"question": "Which is a liquid at room temperature?",
                                       "choices": ["ice", "water", "steam"], "answer": "B",
                                       "meta": {"line": 1, "id": "Hand_9"}}]


def test_humaneval_keeps_prompt_solution_and_entry_point_and_its_test_becomes_tests(tmp_path):
    first = upload(fixture("humaneval_style.jsonl"), tmp_path)[0]
    assert first["task_id"] == "Hand/0" and first["entry_point"] == "double"
    assert first["prompt"].startswith("def double(x: int) -> int:\n")
    assert first["tests"].endswith("def check(candidate):\n    assert candidate(3) == 6\n    assert candidate(0) == 0\n"
                                   "    assert candidate(-2) == -4\n")
    assert first["canonical_solution"] == "    return 2 * x\n"


def test_mbpp_becomes_a_humaneval_problem_prompted_with_its_text_and_first_assert(tmp_path):
    vowels, gap, hypotenuse = upload(fixture("mbpp_style.jsonl"), tmp_path)
    assert vowels == {
        "task_id": "901",
        "prompt": '"""\nWrite a function to count the vowels in a string.\nassert count_vowels(\'hello\') == 2\n"""\n',
        "tests": ("def check(candidate):\n    assert count_vowels('hello') == 2\n    assert count_vowels('SKY') == 0\n"
                  "    assert count_vowels('Aeiou') == 5\n"),
        "entry_point": "count_vowels",
        "canonical_solution": "def count_vowels(s):\n    return sum(1 for ch in s.lower() if ch in 'aeiou')",
        "meta": {"line": 1},
    }
    assert gap["entry_point"] == "largest_gap"  # the function the asserts call, not the helper defined first
    assert hypotenuse["tests"].startswith("from math import isclose\n\n\ndef check(candidate):\n")


@pytest.fixture(scope="module")
def available():
    reason = sandbox.check_available()
    if reason is not None:
        pytest.skip(reason)


def test_an_imported_mbpp_solution_passes_the_sandbox_check_and_a_wrong_one_fails(available, tmp_path):
    for problem in upload(fixture("mbpp_style.jsonl"), tmp_path):
        right = sandbox.check_program(problem["prompt"], problem["canonical_solution"], problem["tests"],
                                      problem["entry_point"], timeout=10)
        assert (right.passed, right.result) == (True, "passed"), problem["task_id"]
        head, _, tail = problem["canonical_solution"].rpartition("return ")  # the solution's own return
        wrong = f"{head}return 1 + {tail}"
        outcome = sandbox.check_program(problem["prompt"], wrong, problem["tests"], problem["entry_point"], timeout=10)
        assert (outcome.passed, outcome.result) == (False, "failed: AssertionError"), problem["task_id"]


def test_an_imported_humaneval_solution_passes_the_sandbox_check(available, tmp_path):
    for problem in upload(fixture("humaneval_style.jsonl"), tmp_path):
        outcome = sandbox.check_program(problem["prompt"], problem["canonical_solution"], problem["tests"],
                                        problem["entry_point"], timeout=10)
        assert outcome.passed, (problem["task_id"], outcome.result)


def arc(key="B", labels="ABCD"):
    return {"id": "x", "question": {"stem": "Pick one.", "choices": [{"text": f"choice {lab}", "label": lab}
                                                                    for lab in labels]}, "answerKey": key}


def mbpp(**change):
    row = {"task_id": 1, "text": "Write a function to add one.", "code": "def add_one(x):\n    return x + 1",
           "test_list": ["assert add_one(1) == 2"], "test_setup_code": ""}
    return {**row, **change}


@pytest.mark.parametrize("name, rows, line, field, reason", [
    ("arc.jsonl", [arc(), arc(key="F")], 2, "answerKey",
     "answer not among the labels ('F' but the labels are A, B, C, D)"),
    ("arc.jsonl", [arc(labels="AAB")], 1, "question.choices", "duplicate label"),
    ("arc.jsonl", [arc(), {"question": {"stem": "No label.", "choices": [{"text": "a"}, {"text": "b"}]},
                           "answerKey": "A"}], 2, "question.choices[0].label", "missing field"),
    ("mbpp.jsonl", [mbpp(), mbpp(code="add_one = lambda x: x + 1")], 2, "code", "no function definition"),
    ("mbpp.jsonl", [mbpp(test_list=["assert add_one(1) == 2", "assert add_one(1) =="])], 1, "test_list[1]",
     "not valid Python"),
    ("mbpp.jsonl", [mbpp(test_list=[])], 1, "test_list", "empty list"),
    ("gsm8k.jsonl", [{"question": "1 + 1?", "answer": "#### 2"}, {"question": "2 + 2?"}], 2, "answer",
     "missing field"),
])
def test_a_bad_row_in_a_json_lines_benchmark_is_refused_naming_its_line_and_field(tmp_path, name, rows, line, field,
                                                                                   reason):
    error = refusal(jsonl(tmp_path, name, rows))
    assert error.line == line
    assert f"field {field!r}: {reason}" in str(error)


def test_a_bad_row_in_a_cmmlu_csv_names_the_files_own_capitalised_column(tmp_path):
    path = tmp_path / "cmmlu.csv"
    path.write_text(",Question,A,B,C,D,Answer\n0,一加一？,1,2,3,4,B\n1,二加二？,2,3,4,5,E\n", encoding="utf-8")
    error = refusal(path)
    assert error.line == 3 and "field 'Answer': answer out of range" in str(error)


def test_a_ceval_row_missing_a_choice_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "ceval.csv"
    path.write_text("id,question,A,B,C,D,answer,explanation\n0,q?,a,b,c,d,A,\n1,q?,a,b,c,B,\n", encoding="utf-8")
    error = refusal(path)
    assert error.line == 3 and "wrong number of columns" in str(error)
