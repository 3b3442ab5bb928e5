"""Built-in synthetic data sets, so that a new user can train and evaluate on day one without
bringing a file. Deterministic: record i depends only on (seed, i), so the first k records of
n are the records of k. Answers are exact (integer arithmetic, divisions chosen to divide).

    arithmetic_word_problems   canonical "qa", GSM8K style: reasoning with <<a*b=c>> calculator
                               annotations and a final "#### N" line.
    arithmetic_word_problems_zh  the same in natural 中文 (own templates, names and measure words;
                               the same annotations and "#### N"), for the Chinese dimension.
    tool_use_dialogues         canonical "chat" (style "messages") where the assistant calls a
                               "calculator" tool, or the RAW ShareGPT form of LLaMA-Factory's
                               glaive tool-call demo (style "sharegpt"), for the importer.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from fractions import Fraction
from pathlib import Path
from typing import Iterable

# The exact evaluator the calculator tool uses (one evaluator, no twin): numbers, + - * /, unary
# minus and parentheses; anything else is a ValueError. MAX_EXPRESSION_CHARS is re-exported.
from workers.core.agents.arithmetic import MAX_EXPRESSION_CHARS, evaluate  # noqa: F401

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


def _word_problems(n: int, seed: int, generator: str, salt: str, problems: list) -> list[dict]:
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    records = []
    for i in range(n):
        rng = _rng(seed, i, salt)
        question, answer, expression, result = rng.choice(problems)(rng)
        assert evaluate(expression) == result, (expression, result)
        records.append({
            "question": question,
            "answer": f"{answer}\n#### {result}",
            "meta": {"generator": generator, "seed": seed, "index": i, "expression": expression},
        })
    return records


def arithmetic_word_problems(n: int, seed: int = 0) -> list[dict]:
    """n GSM8K-style word problems (canonical "qa"): {"question", "answer" ending in "#### N",
    "meta": {"generator", "seed", "index", "expression"}}; eval(expression) == N."""
    return _word_problems(n, seed, "arithmetic_word_problems", "word-problem", _PROBLEMS)


# ---------------------------------------------------------------------------------------------
# arithmetic word problems in Chinese (qa): the same design, its own natural phrasing

_NAMES_ZH = [("小明", "他"), ("小红", "她"), ("李华", "他"), ("王芳", "她"), ("张伟", "他"), ("陈静", "她"),
             ("刘洋", "他"), ("赵丽", "她")]
# (noun, measure word): 苹果 are counted 个, 弹珠 颗, 贴纸 张 ...
_ITEMS_ZH = [("苹果", "个"), ("弹珠", "颗"), ("贴纸", "张"), ("铅笔", "支"), ("卡片", "张"), ("贝壳", "个"),
             ("邮票", "枚"), ("饼干", "块")]


def _problem_zh_buy_packs(rng):
    (name, he), (item, unit) = rng.choice(_NAMES_ZH), rng.choice(_ITEMS_ZH)
    a, b, c = rng.randint(2, 60), rng.randint(2, 9), rng.randint(3, 24)
    question = f"{name}有{a}{unit}{item}。{he}又买了{b}包{item}，每包有{c}{unit}。{name}现在一共有多少{unit}{item}？"
    step1, bought = _calc(b, "*", c)
    step2, total = _calc(a, "+", bought)
    answer = f"{name}买了 {step1} {unit}{item}。\n所以{he}现在有 {step2} {unit}{item}。"
    return question, answer, f"{a} + {b} * {c}", total


def _problem_zh_boxes(rng):
    name, he = rng.choice(_NAMES_ZH)
    boxes, per_box = rng.randint(3, 12), rng.randint(4, 15)
    given = rng.randint(1, boxes - 1)
    total = boxes * per_box
    question = f"{name}烤了{total}块饼干，平均装进{boxes}个盒子里。{he}送出了其中{given}盒。{he}自己还剩多少块饼干？"
    step1, each = _calc(total, "/", boxes)
    step2, kept_boxes = _calc(boxes, "-", given)
    step3, kept = _calc(kept_boxes, "*", each)
    answer = f"每盒有 {step1} 块饼干。\n{name}还剩 {step2} 盒。\n一共是 {step3} 块饼干。"
    return question, answer, f"({boxes} - {given}) * ({total} / {boxes})", kept


def _problem_zh_change(rng):
    name, _ = rng.choice(_NAMES_ZH)
    price, quantity = rng.randint(2, 19), rng.randint(2, 8)
    cost = price * quantity
    bill = next(b for b in (20, 50, 100, 200) if b > cost)
    question = f"一本笔记本{price}元。{name}买了{quantity}本笔记本，付了一张{bill}元的钞票。应该找回多少元？"
    step1, spent = _calc(price, "*", quantity)
    step2, change = _calc(bill, "-", spent)
    answer = f"笔记本一共 {step1} 元。\n应找回 {step2} 元。"
    return question, answer, f"{bill} - {price} * {quantity}", change


def _problem_zh_trip(rng):
    v, h, w, g = rng.randint(30, 90), rng.randint(2, 6), rng.randint(20, 80), rng.randint(2, 5)
    question = f"一列火车先以每小时{v}公里的速度行驶了{h}小时，又以每小时{w}公里的速度行驶了{g}小时。它一共行驶了多少公里？"
    step1, first = _calc(v, "*", h)
    step2, second = _calc(w, "*", g)
    step3, total = _calc(first, "+", second)
    answer = f"第一段行驶了 {step1} 公里。\n第二段行驶了 {step2} 公里。\n一共行驶了 {step3} 公里。"
    return question, answer, f"{v} * {h} + {w} * {g}", total


def _problem_zh_percent(rng):
    students = 20 * rng.randint(1, 10)
    percent = 5 * rng.randint(1, 19)
    question = f"一个班有{students}名学生，其中{percent}%的学生步行上学，其余的学生坐公交车。坐公交车的学生有多少名？"
    step1, part = _calc(students, "*", percent)
    step2, walkers = _calc(part, "/", 100)
    step3, bus = _calc(students, "-", walkers)
    answer = (f"步行的学生是{students}名的{percent}%：{step1}，{step2} 名。\n"
              f"所以坐公交车的有 {step3} 名学生。")
    return question, answer, f"{students} - {students} * {percent} / 100", bus


def _problem_zh_share(rng):
    (name, he), (item, unit) = rng.choice(_NAMES_ZH), rng.choice(_ITEMS_ZH)
    friends, each, left = rng.randint(2, 9), rng.randint(2, 12), rng.randint(0, 9)
    total = friends * each + left
    question = f"{name}有{total}{unit}{item}，分给{friends}个朋友，每人{each}{unit}。{he}还剩多少{unit}{item}？"
    step1, given = _calc(friends, "*", each)
    step2, rest = _calc(total, "-", given)
    answer = f"分出去 {step1} {unit}{item}。\n还剩 {step2} {unit}{item}。"
    return question, answer, f"{total} - {friends} * {each}", rest


_PROBLEMS_ZH = [_problem_zh_buy_packs, _problem_zh_boxes, _problem_zh_change, _problem_zh_trip, _problem_zh_percent,
                _problem_zh_share]


def arithmetic_word_problems_zh(n: int, seed: int = 0) -> list[dict]:
    """n Chinese word problems, the same record as `arithmetic_word_problems` (meta generator
    "arithmetic_word_problems_zh"); record i depends only on (seed, i)."""
    return _word_problems(n, seed, "arithmetic_word_problems_zh", "word-problem-zh", _PROBLEMS_ZH)


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


# One expression in HELD_OUT_SHARE belongs to the agent benchmark (split "test",
# evaluation/builtins.py) and never to a training set, whatever the seeds: a fine-tuned model is
# scored on calculations it has not seen.
HELD_OUT_SHARE = 10
SPLITS = ("train", "test")


def is_held_out(expression: str) -> bool:
    return int(hashlib.sha256(expression.encode()).hexdigest()[:8], 16) % HELD_OUT_SHARE == 0


def _tool_dialogue(rng, split: str) -> dict:
    expression = _expression(rng)
    while is_held_out(expression) != (split == "test"):
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


def tool_use_dialogues(n: int, seed: int = 0, style: str = "messages", split: str = "train") -> list[dict]:
    """n dialogues where the user asks an arithmetic question, the assistant calls the
    "calculator" tool, a tool message returns the exact result ({"result": N}) and the assistant
    answers. About 30% open with a greeting exchange (multi-turn, as in glaive). `split` "train"
    (what Datasets generates) never draws an expression of split "test" (the agent benchmark's).

    style "messages": canonical chat {"messages": [...], "tools": [CALCULATOR_TOOL], "meta"};
    style "sharegpt": LLaMA-Factory's glaive form {"conversations": [{"from": "human" |
    "function_call" | "observation" | "gpt", "value": str}], "tools": "<json list of functions>"},
    a function_call value being '{"name": ..., "arguments": {...}}'."""
    if style not in ("messages", "sharegpt"):
        raise ValueError(f"style must be 'messages' or 'sharegpt', got {style!r}")
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    records = []
    for i in range(n):
        d = _tool_dialogue(_rng(seed, i, "tool-dialogue"), split)
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
