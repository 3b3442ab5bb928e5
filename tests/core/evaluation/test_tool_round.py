"""Agent benchmarks run one tool round: the model's calculator call runs with the playground's
calculator, the result goes back in the model's chat template, and the reply after it is scored;
tool-call, argument and final-answer accuracy are reported apart.

The model's replies here are scripted (a random tiny model never writes a tool call, and the
tools block alone is longer than its context); the prompts are rendered by the real target with
the tiny model's tokenizer, exactly as an evaluation renders them. The real model's run is
bench/tool_use.py (README figures)."""
from __future__ import annotations

import json

from tests.core.evaluation.helpers import model_spec, write_rows
from workers.core.data.generators import CALCULATOR_TOOL
from workers.core.evaluation.runner import _summary, predict, request_prompt, score_sample
from workers.core.evaluation.spec import prediction_hash
from workers.core.evaluation.targets import LocalTarget

ROWS = [{"question": "What is 123 * 45?", "answer": "#### 5535"},
        {"question": "What is (17 + 4) * 3?", "answer": "#### 63"},
        {"question": "What is 1000 - 1?", "answer": "#### 999"},
        {"question": "What is 7 * 8?", "answer": "#### 56"},
        {"question": "What is 2 + 2?", "answer": "#### 4"}]


def call(expression: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "calculator", "arguments": {"expression": expression}}) + "\n</tool_call>"


FIRST = {  # question -> the model's first reply
    "What is 123 * 45?": call("123 * 45"),  # right call, then the right answer
    "What is (17 + 4) * 3?": call("17 + 4 * 3"),  # wrong expression, faithful answer
    "What is 1000 - 1?": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1000 - 1"</tool_call>',  # broken
    "What is 7 * 8?": "7 * 8 = 56. The answer is 56.",  # no call, right in text
    "What is 2 + 2?": call("__import__('os').getcwd()"),  # refused by the calculator
}
FINAL = {"5535": "123 * 45 is 5535.", "29": "The answer is 29."}  # observation result -> final reply


class Scripted:
    """The target's own prompt rendering, with scripted replies in place of the model's."""

    def __init__(self, tiny):
        folder, model, tokenizer = tiny
        self.target = LocalTarget(folder, seed=0, generator="generate", model=model, tokenizer=tokenizer)
        self.calls = []

    def prompt(self, *args):
        return self.target.prompt(*args)

    def generate(self, prompts, max_new_tokens, tools=None):
        self.calls.append((prompts, tools))
        out = []
        for p in prompts:
            last = p.messages[-1]
            if last["role"] == "user":
                out.append(FIRST[next(q for q in FIRST if q in last["content"])])
            elif last["content"].startswith("error:"):
                out.append("I could not compute that.")
            else:
                out.append(FINAL[str(json.loads(last["content"])["result"])])
        return out


def matches(sample: dict, expected: dict) -> bool:
    return {k: sample.get(k) for k in expected} == expected


def _definition(tiny, tmp_path, extractor="tool_call"):
    raw = {"name": "tools", "shape": "qa", "data_path": write_rows(tmp_path / "t.jsonl", ROWS), "template": "{question}",
           "chat": True, "tools": [CALCULATOR_TOOL], "scorer": {"paradigm": "generation", "extractor": extractor},
           "dimension": "agent"}
    return model_spec(tiny, tmp_path, [raw]).benchmarks[0]  # checked, with every default filled in


def _run(tiny, tmp_path):
    target, definition = Scripted(tiny), _definition(tiny, tmp_path)
    prompts = [request_prompt(target, "benchmarks[0]", definition, row) for row in ROWS]
    raws = predict(target, definition, ROWS, prompts, 64)
    samples = [score_sample(definition, row, p.text, raw) for row, p, raw in zip(ROWS, prompts, raws)]
    return target, definition, raws, samples


def test_a_calculator_call_runs_and_the_reply_after_its_result_is_the_answer(tiny, tmp_path):
    target, _, raws, samples = _run(tiny, tmp_path)
    assert raws[0]["observation"] == '{"result": 5535}'
    assert matches(samples[0], {"tool_called": True, "argument_correct": True, "extracted": "5535", "correct": True})
    # The second request is the conversation so far in the model's template: its call, then the tool's result.
    (first, tools_first), (second, tools_second) = target.calls
    assert len(first) == 5 and len(second) == 3 and tools_first == tools_second == [CALCULATOR_TOOL]
    follow = second[0].text
    assert follow.startswith(first[0].text[: -len("<|im_start|>assistant\n")])
    assert '"name": "calculator", "arguments": {"expression": "123 * 45"}' in follow
    assert "<tool_response>\n{\"result\": 5535}\n</tool_response>" in follow
    assert follow.endswith("<|im_start|>assistant\n")


def test_a_wrong_expression_is_a_right_call_with_a_wrong_argument_and_answer(tiny, tmp_path):
    _, _, raws, samples = _run(tiny, tmp_path)
    assert raws[1]["observation"] == '{"result": 29}'
    assert matches(samples[1], {"tool_called": True, "argument_correct": False, "extracted": "29", "correct": False})


def test_a_broken_call_gets_no_round_and_no_answer_and_a_plain_answer_still_counts(tiny, tmp_path):
    _, _, raws, samples = _run(tiny, tmp_path)
    assert "observation" not in raws[2] and matches(samples[2], {"tool_called": False, "extracted": None, "correct": False})
    assert "observation" not in raws[3] and matches(samples[3], {"tool_called": False, "extracted": "56", "correct": True})


def test_an_expression_the_calculator_refuses_goes_back_as_an_error_and_is_never_run(tiny, tmp_path):
    _, _, raws, samples = _run(tiny, tmp_path)
    assert raws[4]["observation"].startswith("error: ") and "__import__" not in raws[4]["final"]
    assert matches(samples[4], {"tool_called": True, "argument_correct": False, "correct": False})


def test_the_summary_reports_tool_call_argument_and_final_answer_accuracy_with_intervals(tiny, tmp_path):
    _, definition, _, samples = _run(tiny, tmp_path)
    summary = _summary(definition, samples)
    assert (summary["score"], summary["correct"]) == (2 / 5, 2)
    assert summary["tool_call_accuracy"] == 3 / 5 and summary["argument_accuracy"] == 1 / 5
    for metric in ("tool_call_accuracy", "argument_accuracy"):
        assert 0 <= summary[f"{metric}_low"] < summary[metric] < summary[f"{metric}_high"] <= 1


def test_the_tool_round_is_part_of_the_prediction_hash_so_older_single_replies_are_not_reused(tiny, tmp_path):
    with_round, without = _definition(tiny, tmp_path), _definition(tiny, tmp_path, extractor="final_number")
    assert prediction_hash(with_round, "d", 64) != prediction_hash(without, "d", 64)
