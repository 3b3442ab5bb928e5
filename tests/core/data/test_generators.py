"""Built-in synthetic data sets: deterministic, exact, and in the shapes the importers expect."""
from __future__ import annotations

import ast
import json
import operator
import re
from fractions import Fraction

import pytest

from tests.fixtures.data import excerpt
from workers.core.data.generators import (
    arithmetic_word_problems,
    arithmetic_word_problems_zh,
    evaluate,
    is_held_out,
    tool_use_dialogues,
    write_jsonl,
)

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def exact(expression: str) -> Fraction:
    """An evaluator independent of the one under test."""
    def walk(node):
        if isinstance(node, ast.BinOp):
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp):
            return -walk(node.operand)
        return Fraction(node.value)

    return walk(ast.parse(expression, mode="eval").body)


def test_the_generators_are_deterministic_for_a_seed_and_prefix_stable():
    assert arithmetic_word_problems(50, seed=7) == arithmetic_word_problems(50, seed=7)
    assert arithmetic_word_problems(50, seed=7) != arithmetic_word_problems(50, seed=8)
    assert arithmetic_word_problems(20, seed=7) == arithmetic_word_problems(50, seed=7)[:20]
    for style in ("messages", "sharegpt"):
        assert tool_use_dialogues(30, seed=2, style=style) == tool_use_dialogues(30, seed=2, style=style)
        assert tool_use_dialogues(30, seed=2, style=style) != tool_use_dialogues(30, seed=3, style=style)


def test_word_problem_answers_are_exact_in_every_step_and_in_the_final_line():
    records = arithmetic_word_problems(300, seed=0)

    assert len({r["question"] for r in records}) > 250  # varied
    for record in records:
        assert set(record) == {"question", "answer", "meta"}
        final = re.fullmatch(r"(?s).*\n#### (-?\d+)", record["answer"])
        assert final, record["answer"]
        assert exact(record["meta"]["expression"]) == int(final.group(1))
        steps = re.findall(r"<<([^=<>]+)=(-?\d+)>>", record["answer"])
        assert steps
        for expression, value in steps:
            assert exact(expression) == int(value)


def test_chinese_word_problems_are_deterministic_prefix_stable_and_apart_from_the_english_ones():
    assert arithmetic_word_problems_zh(40, seed=5) == arithmetic_word_problems_zh(40, seed=5)
    assert arithmetic_word_problems_zh(40, seed=5) != arithmetic_word_problems_zh(40, seed=6)
    assert arithmetic_word_problems_zh(15, seed=5) == arithmetic_word_problems_zh(40, seed=5)[:15]
    assert arithmetic_word_problems_zh(0) == []
    with pytest.raises(ValueError):
        arithmetic_word_problems_zh(-1)


def test_chinese_word_problems_are_exact_chinese_and_varied():
    import langid

    records = arithmetic_word_problems_zh(300, seed=0)

    assert len({r["question"] for r in records}) > 250
    templates = {re.sub(r"\d+", "N", r["question"])[:6] for r in records}
    assert len(templates) >= 5  # several problem templates, not one
    for record in records:
        assert set(record) == {"question", "answer", "meta"}
        assert record["meta"]["generator"] == "arithmetic_word_problems_zh"
        final = re.fullmatch(r"(?s).*\n#### (-?\d+)", record["answer"])
        assert final, record["answer"]
        assert exact(record["meta"]["expression"]) == int(final.group(1)) == evaluate(record["meta"]["expression"])
        for expression, value in re.findall(r"<<([^=<>]+)=(-?\d+)>>", record["answer"]):
            assert exact(expression) == int(value)
        # Chinese text: the question is mostly CJK characters (digits aside) and reads as zh.
        letters = [c for c in record["question"] if not c.isdigit() and not c.isspace()]
        assert sum("\u4e00" <= c <= "\u9fff" for c in letters) / len(letters) > 0.8
        assert re.search(r"[a-zA-Z]", record["question"]) is None
    assert {langid.classify(r["question"])[0] for r in records[:50]} == {"zh"}


def test_the_generate_job_writes_a_chinese_qa_version(tmp_path):
    from workers.core.dataset_jobs import DatasetGenerateSpec, run_dataset_generate
    from workers.core.reporting import ConsoleReporter
    from workers.core.specs import build_spec

    out = tmp_path / "zh.jsonl"
    spec = build_spec(DatasetGenerateSpec, {"generator": "arithmetic_zh", "n": 12, "seed": 3, "output_path": str(out)})
    result = run_dataset_generate(spec, ConsoleReporter(stream=open("/dev/null", "w")))  # noqa: SIM115

    assert result["created"] and result["canonical"] == "qa" and result["rows"] == 12
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = arithmetic_word_problems_zh(12, seed=3)
    assert [(r["question"], r["answer"]) for r in rows] == [(e["question"], e["answer"]) for e in expected]


def test_tool_dialogues_call_the_calculator_and_the_tool_returns_the_exact_result():
    records = tool_use_dialogues(200, seed=0)

    assert any(len(r["messages"]) > 4 for r in records) and any(len(r["messages"]) == 4 for r in records)
    for record in records:
        messages = record["messages"]
        assert [m["role"] for m in messages[-4:]] == ["user", "assistant", "tool", "assistant"]
        assert messages[0]["role"] == "user"
        (call,) = messages[-3]["tool_calls"]
        assert call["type"] == "function" and call["function"]["name"] == "calculator"
        arguments = json.loads(call["function"]["arguments"])  # a JSON string, as the schema says
        result = exact(arguments["expression"])
        assert arguments["expression"] in messages[-4]["content"]
        assert json.loads(messages[-2]["content"]) == {"result": int(result)} and result.denominator == 1
        assert messages[-2]["name"] == "calculator"
        assert str(int(result)) in messages[-1]["content"]
        (tool,) = record["tools"]
        assert tool["type"] == "function" and tool["function"]["name"] == "calculator"
        parameters = tool["function"]["parameters"]
        assert parameters["type"] == "object" and parameters["required"] == ["expression"]
        assert parameters["properties"]["expression"]["type"] == "string"


def test_the_agent_benchmarks_held_out_calculations_never_appear_in_a_generated_training_set():
    from workers.core.evaluation.builtins import BUILTIN_SETS

    held_out = [r["meta"]["expression"] for r in tool_use_dialogues(100, seed=2026, split="test")]
    assert len(set(held_out)) > 90 and all(is_held_out(e) for e in held_out)
    assert [row["question"] for row in BUILTIN_SETS["tool_use"].make()] == [
        r["messages"][-4]["content"] for r in tool_use_dialogues(100, seed=2026, split="test")]
    for seed in (0, 1, 2026):  # the benchmark's own seed too: the split, not the seed, keeps them apart
        training = [r["meta"]["expression"] for r in tool_use_dialogues(1000, seed=seed)]
        assert not set(training) & set(held_out) and not any(is_held_out(e) for e in training)
    with pytest.raises(ValueError, match="split"):
        tool_use_dialogues(1, split="validation")


def test_the_sharegpt_style_has_the_glaive_shape():
    records = tool_use_dialogues(50, seed=0, style="sharegpt")
    plain = tool_use_dialogues(50, seed=0)

    for record, canonical in zip(records, plain):
        assert set(record) == {"conversations", "tools"}
        roles = [turn["from"] for turn in record["conversations"]]
        assert set(roles) <= {"human", "gpt", "function_call", "observation"}
        assert roles[-4:] == ["human", "function_call", "observation", "gpt"]
        assert all(isinstance(turn["value"], str) and set(turn) == {"from", "value"} for turn in record["conversations"])
        call = json.loads(record["conversations"][-3]["value"])
        assert call["name"] == "calculator" and isinstance(call["arguments"], dict)
        assert record["conversations"][-2]["value"] == canonical["messages"][-2]["content"]
        tools = json.loads(record["tools"])  # a JSON string holding a list of functions, as in glaive
        assert [t["name"] for t in tools] == ["calculator"] and "parameters" in tools[0]
    demo = json.loads(excerpt("llamafactory_demo/glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    assert set(demo[0]) == set(records[0])  # the shape of the real glaive demo file
    assert {t["from"] for d in demo for t in d["conversations"]} >= {t["from"] for r in records for t in r["conversations"]}
    assert isinstance(demo[0]["tools"], str) and set(json.loads(demo[0]["tools"])[0]) >= set(json.loads(records[0]["tools"])[0])


def test_the_calculator_evaluates_exactly_and_refuses_anything_but_arithmetic():
    assert evaluate("(3 + 4) * 12 - 10 / 4") == Fraction(163, 2)
    with pytest.raises(ValueError):
        evaluate("__import__('os').system('true')")
    with pytest.raises(ValueError):
        evaluate("1 / 0")
    # A model's tool call is evaluated too: overflow, deep nesting and huge inputs are ValueErrors.
    for hostile in ("1e400 * 2", "-" * 5000 + "1", "(" * 300 + "1" + ")" * 300, "1 + " * 400 + "1", "2 ** 10", ""):
        with pytest.raises(ValueError):
            evaluate(hostile)


def test_write_jsonl_writes_one_object_per_line_and_reads_back(tmp_path):
    records = arithmetic_word_problems(5, seed=1) + [{"text": "床前明月光"}]
    path = tmp_path / "sub" / "out.jsonl"

    write_jsonl(records, path)

    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    assert "床前明月光" in lines[-1]  # not ASCII-escaped
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]
