"""Agent benchmarks: a generation benchmark with `tools` and the `tool_call` extractor is run
the way the playground's agent runs a turn, for one tool round (what the generated calculator
dialogues in Datasets teach):

    1. the model answers the question with the tools in its prompt;
    2. if it called the calculator, the call runs with the playground's calculator tool
       (workers/core/agents/tools/calculator.py; a refused expression gives "error: ...", as
       in the playground), and the call and its observation go back as an assistant message with
       `tool_calls` and a `tool` message;
    3. the model's next reply is its final answer.

Three metrics per sample, each with its Wilson interval in the summary:
    tool_call_accuracy   it called the calculator with a call that parses (name and JSON
                         arguments with a string "expression")
    argument_accuracy    the call's expression evaluates to the reference answer
    accuracy             the final answer (final_number of the reply after the observation; of
                         the first reply when the model answered without a call) is the
                         reference: the benchmark's score

The raw prediction (what the cache holds) is {"output": first reply, "observation": ...,
"final": reply after it}, the last two only when a call ran. Which benchmarks are agent benchmarks,
and the version in their prediction hash (bump it with a change here), are in spec.py:
`is_agent_benchmark`, `TOOL_ROUND_VERSION`."""
from __future__ import annotations

import json



def predict_with_tools(target, definition: dict, prompts: list, max_new_tokens: int) -> list[dict]:
    """Raw predictions of a batch of agent-benchmark prompts (module doc): one generate call for
    every first reply, one for every final reply."""
    from workers.core.evaluation.extract import calculator_call

    tools = definition["tools"]
    first = target.generate(prompts, max_new_tokens, tools)
    raws = [{"output": text} for text in first]
    follow, rows = [], []
    for i, (prompt, text) in enumerate(zip(prompts, first)):
        call = calculator_call(text, tools)
        if call.expression is None or prompt.messages is None:
            continue
        observation = _run_calculator(call.expression)
        messages = list(prompt.messages) + [
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "calculator", "arguments": json.dumps({"expression": call.expression})}}]},
            {"role": "tool", "name": "calculator", "content": observation},
        ]
        follow.append(target.prompt("benchmark tool round", definition, "", messages))
        raws[i]["observation"] = observation
        rows.append(i)
    if follow:
        for i, text in zip(rows, target.generate(follow, max_new_tokens, tools)):
            raws[i]["final"] = text
    return raws


def _run_calculator(expression: str) -> str:
    from workers.core.agents.tools.base import ToolContext, ToolError, error
    from workers.core.agents.tools.calculator import calculate

    try:
        return calculate({"expression": expression}, ToolContext())
    except ToolError as exc:
        return error(str(exc))


def score_tool_round(raw: dict, reference: str, tools: list) -> dict:
    """The per-sample fields of an agent-benchmark prediction (module doc)."""
    from workers.core.evaluation.extract import calculator_call, final_number, numbers_equal

    call = calculator_call(raw["output"], tools)
    if "final" in raw:
        answer = final_number(raw["final"])
    else:  # no call ran: a plain-text answer counts; a broken call has none
        answer = None if call.attempted else final_number(raw["output"])
    return {
        "output": raw["output"] if "final" not in raw else
        f"{raw['output']}\n[tool result] {raw['observation']}\n{raw['final']}",
        "extracted": answer,
        "correct": answer is not None and numbers_equal(answer, reference),
        "tool_called": call.expression is not None,
        "argument_correct": call.value is not None and numbers_equal(call.value, reference),
        "tool_expression": call.expression,
    }


def tool_metrics(samples: list[dict]) -> dict:
    """The summary's tool-call and argument accuracies with their intervals."""
    from workers.core.evaluation.statistics import wilson_interval

    out, n = {}, len(samples)
    for metric, field in (("tool_call_accuracy", "tool_called"), ("argument_accuracy", "argument_correct")):
        right = sum(1 for s in samples if s.get(field))
        low, high = wilson_interval(right, n)
        out.update({metric: right / n if n else 0.0, f"{metric}_low": low, f"{metric}_high": high})
    return out
