"""Built-in synthetic data sets, so that a new user can train and evaluate on day one without
bringing a file. Deterministic: record i depends only on (seed, i), so the first k records of
n are the records of k. Answers are exact (integer arithmetic, divisions chosen to divide).

    arithmetic_word_problems   canonical "qa", GSM8K style: reasoning with <<a*b=c>> calculator
                               annotations and a final "#### N" line.
    tool_use_dialogues         canonical "chat" (style "messages") where the assistant calls a
                               "calculator" tool, or the RAW ShareGPT form of LLaMA-Factory's
                               glaive tool-call demo (style "sharegpt"), for the importer.
"""
from __future__ import annotations

import ast
import json
import operator
import os
import random
from fractions import Fraction
from pathlib import Path
from typing import Iterable

CALCULATOR_PARAMETERS = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string",
            "description": "An arithmetic expression with + - * / and parentheses, e.g. \"(3 + 4) * 12\"",
        }
    },
    "required": ["expression"],
}
CALCULATOR_DESCRIPTION = "Evaluate an arithmetic expression exactly and return the result"
CALCULATOR_TOOL = {  # the canonical ToolSpec (OpenAI / transformers form)
    "type": "function",
    "function": {"name": "calculator", "description": CALCULATOR_DESCRIPTION, "parameters": CALCULATOR_PARAMETERS},
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression: str) -> Fraction:
    """Exact value of an arithmetic expression (numbers, + - * /, unary minus, parentheses);
    anything else is a ValueError. What the calculator tool computes."""
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        raise ValueError(f"not an arithmetic expression: {expression!r}")

    try:
        return walk(ast.parse(expression, mode="eval"))
    except (SyntaxError, ZeroDivisionError) as exc:
        raise ValueError(f"cannot evaluate {expression!r}: {exc}") from None


def _number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def _rng(seed: int, i: int, salt: str) -> random.Random:
    return random.Random(f"{salt}:{seed}:{i}")


# ---------------------------------------------------------------------------------------------
# arithmetic word problems (qa)

_NAMES = [("Maya", "she", "her"), ("Tom", "he", "his"), ("Aisha", "she", "her"), ("Lei", "he", "his"),
          ("Sofia", "she", "her"), ("Omar", "he", "his"), ("Yuki", "she", "her"), ("Ben", "he", "his")]
_ITEMS = ["apple", "marble", "sticker", "pencil", "card", "shell", "stamp", "cookie"]


def _calc(a, op: str, b) -> tuple[str, int]:
    value = evaluate(f"{a} {op} {b}")
    assert value.denominator == 1
    value = int(value)
    return f"{a} {op} {b} = <<{a}{op}{b}={value}>>{value}", value


def _problem_buy_packs(rng):
    name, he, _ = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    a, b, c = rng.randint(2, 60), rng.randint(2, 9), rng.randint(3, 24)
    question = (f"{name} has {a} {item}s. {he.capitalize()} buys {b} packs with {c} {item}s in each pack. "
                f"How many {item}s does {name} have now?")
    step1, bought = _calc(b, "*", c)
    step2, total = _calc(a, "+", bought)
    answer = f"{name} buys {step1} {item}s.\nSo {he} now has {step2} {item}s."
    return question, answer, f"{a} + {b} * {c}", total


def _problem_boxes(rng):
    name, he, _ = rng.choice(_NAMES)
    boxes, per_box = rng.randint(3, 12), rng.randint(4, 15)
    given = rng.randint(1, boxes - 1)
    total = boxes * per_box
    question = (f"{name} bakes {total} cookies and shares them equally among {boxes} boxes. "
                f"{he.capitalize()} gives away {given} of the boxes. How many cookies does {he} keep?")
    step1, each = _calc(total, "/", boxes)
    step2, kept_boxes = _calc(boxes, "-", given)
    step3, kept = _calc(kept_boxes, "*", each)
    answer = (f"Each box holds {step1} cookies.\n{name} keeps {step2} boxes.\n"
              f"That is {step3} cookies.")
    return question, answer, f"({boxes} - {given}) * ({total} / {boxes})", kept


def _problem_change(rng):
    name, he, _ = rng.choice(_NAMES)
    price, quantity = rng.randint(2, 19), rng.randint(2, 8)
    cost = price * quantity
    bill = next(b for b in (20, 50, 100, 200) if b > cost)
    question = (f"A notebook costs ${price}. {name} buys {quantity} notebooks and pays with a ${bill} bill. "
                f"How much change, in dollars, does {he} get?")
    step1, spent = _calc(price, "*", quantity)
    step2, change = _calc(bill, "-", spent)
    answer = f"The notebooks cost {step1} dollars.\nThe change is {step2} dollars."
    return question, answer, f"{bill} - {price} * {quantity}", change


def _problem_trip(rng):
    v, h, w, g = rng.randint(30, 90), rng.randint(2, 6), rng.randint(20, 80), rng.randint(2, 5)
    question = (f"A train travels at {v} km per hour for {h} hours, then at {w} km per hour for {g} hours. "
                "How many kilometers does it travel in total?")
    step1, first = _calc(v, "*", h)
    step2, second = _calc(w, "*", g)
    step3, total = _calc(first, "+", second)
    answer = (f"First it covers {step1} km.\nThen it covers {step2} km.\n"
              f"In total it travels {step3} km.")
    return question, answer, f"{v} * {h} + {w} * {g}", total


def _problem_percent(rng):
    students = 20 * rng.randint(1, 10)
    percent = 5 * rng.randint(1, 19)
    question = (f"A class has {students} students. {percent}% of them walk to school and the rest take the bus. "
                "How many students take the bus?")
    step1, part = _calc(students, "*", percent)
    step2, walkers = _calc(part, "/", 100)
    step3, bus = _calc(students, "-", walkers)
    answer = (f"The walkers are {percent}% of {students}: {step1}, and {step2} students.\n"
              f"So {step3} students take the bus.")
    return question, answer, f"{students} - {students} * {percent} / 100", bus


_PROBLEMS = [_problem_buy_packs, _problem_boxes, _problem_change, _problem_trip, _problem_percent]


def arithmetic_word_problems(n: int, seed: int = 0) -> list[dict]:
    """n GSM8K-style word problems (canonical "qa"): {"question", "answer" ending in "#### N",
    "meta": {"generator", "seed", "index", "expression"}}; eval(expression) == N."""
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    records = []
    for i in range(n):
        rng = _rng(seed, i, "word-problem")
        question, answer, expression, result = rng.choice(_PROBLEMS)(rng)
        assert evaluate(expression) == result, (expression, result)
        records.append({
            "question": question,
            "answer": f"{answer}\n#### {result}",
            "meta": {"generator": "arithmetic_word_problems", "seed": seed, "index": i, "expression": expression},
        })
    return records


# ---------------------------------------------------------------------------------------------
# tool-use dialogues (chat)

_ASK = ["What is {e}?", "Can you calculate {e} for me?", "Please compute {e}.", "I need the value of {e}.",
        "How much is {e}?", "Quick question: what does {e} come to?"]
_ANSWER = ["{e} = {r}.", "The result is {r}.", "{e} equals {r}.", "It comes to {r}.", "The answer is {r}."]
_GREETINGS = [("Hi! I have a math question.", "Hello! Sure, what would you like to calculate?"),
              ("Hello, can you help me with some arithmetic?", "Of course. What should I compute?")]


def _expression(rng) -> str:
    a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(2, 50)
    shape = rng.randrange(5)
    if shape == 0:
        return f"{a} + {b}"
    if shape == 1:
        return f"{a} * {b}"
    if shape == 2:
        return f"{a} - {b} * {c}"
    if shape == 3:
        return f"({a} + {b}) * {c}"
    return f"{b * c} / {c} + {a}"  # exact division


def _tool_dialogue(rng) -> dict:
    expression = _expression(rng)
    result = _number(evaluate(expression))
    turns = list(rng.choice(_GREETINGS)) if rng.random() < 0.3 else []
    return {
        "greeting": turns,
        "question": rng.choice(_ASK).format(e=expression),
        "expression": expression,
        "observation": json.dumps({"result": int(result) if "." not in result else float(result)}),
        "answer": rng.choice(_ANSWER).format(e=expression, r=result),
        "result": result,
    }


def tool_use_dialogues(n: int, seed: int = 0, style: str = "messages") -> list[dict]:
    """n dialogues where the user asks an arithmetic question, the assistant calls the
    "calculator" tool, a tool message returns the exact result ({"result": N}) and the assistant
    answers. About 30% open with a greeting exchange (multi-turn, as in glaive).

    style "messages": canonical chat {"messages": [...], "tools": [CALCULATOR_TOOL], "meta"};
    style "sharegpt": LLaMA-Factory's glaive form {"conversations": [{"from": "human" |
    "function_call" | "observation" | "gpt", "value": str}], "tools": "<json list of functions>"},
    a function_call value being '{"name": ..., "arguments": {...}}'."""
    if style not in ("messages", "sharegpt"):
        raise ValueError(f"style must be 'messages' or 'sharegpt', got {style!r}")
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    records = []
    for i in range(n):
        d = _tool_dialogue(_rng(seed, i, "tool-dialogue"))
        arguments = {"expression": d["expression"]}
        if style == "messages":
            messages = []
            if d["greeting"]:
                messages += [{"role": "user", "content": d["greeting"][0]},
                             {"role": "assistant", "content": d["greeting"][1]}]
            messages += [
                {"role": "user", "content": d["question"]},
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                    "name": "calculator", "arguments": json.dumps(arguments)}}]},
                {"role": "tool", "name": "calculator", "content": d["observation"]},
                {"role": "assistant", "content": d["answer"]},
            ]
            records.append({"messages": messages, "tools": [CALCULATOR_TOOL],
                            "meta": {"generator": "tool_use_dialogues", "seed": seed, "index": i,
                                     "expression": d["expression"], "result": d["result"]}})
        else:
            conversations = []
            if d["greeting"]:
                conversations += [{"from": "human", "value": d["greeting"][0]},
                                  {"from": "gpt", "value": d["greeting"][1]}]
            conversations += [
                {"from": "human", "value": d["question"]},
                {"from": "function_call", "value": json.dumps({"name": "calculator", "arguments": arguments})},
                {"from": "observation", "value": d["observation"]},
                {"from": "gpt", "value": d["answer"]},
            ]
            tools = [{"name": "calculator", "description": CALCULATOR_DESCRIPTION, "parameters": CALCULATOR_PARAMETERS}]
            records.append({"conversations": conversations, "tools": json.dumps(tools)})
    return records


def write_jsonl(records: Iterable[dict], path) -> None:
    """One JSON object per line (UTF-8, not ASCII-escaped), written to a temporary file and
    renamed into place, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
