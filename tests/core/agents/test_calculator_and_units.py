"""The calculator (one safe evaluator shared with the data generator) and the unit converter:
attacks are refused before anything runs or grows, results are exact."""
from __future__ import annotations

import json
import time

import pytest

from workers.core.agents.arithmetic import ALL_OPERATORS, evaluate
from workers.core.agents.tools import build_tools
from workers.core.data import generators

calculator, unit_converter, clock = build_tools(["calculator", "unit_converter", "datetime"])


def calc(expression: str) -> str:
    return calculator.run({"expression": expression})


def test_the_calculator_computes_exactly_with_every_operator():
    assert calc("(3 + 4) * 12 - 10 / 4") == '{"result": 81.5}'
    assert calc("2 ** 100") == json.dumps({"result": 2**100})
    assert calc("2 ** 0.5 * 10 ** 20") == '{"result": 141421356237309510000}'
    assert [calc(e) for e in ("17 // 5", "17 % 5", "-2 ** 2", "0.1 + 0.2", "2 ** -2", "9 ** 0.5")] == [
        '{"result": 3}', '{"result": 2}', '{"result": -4}', '{"result": 0.3}', '{"result": 0.25}', '{"result": 3}']


def test_the_calculator_and_the_generated_dialogues_agree_on_every_observation():
    """A model fine-tuned on the generator's dialogues reads the tool's observations in the same shape."""
    for record in generators.tool_use_dialogues(40, seed=3):
        calls = [m for m in record["messages"] if m.get("tool_calls")]
        arguments = json.loads(calls[0]["tool_calls"][0]["function"]["arguments"])
        observation = next(m["content"] for m in record["messages"] if m["role"] == "tool")
        assert calculator.run(arguments) == observation


def test_the_generators_evaluate_is_the_shared_evaluator_limited_to_the_four_operations():
    assert generators.evaluate is evaluate
    assert evaluate("7 * 6") == 42 and evaluate("2 ** 10", operators=ALL_OPERATORS) == 1024
    with pytest.raises(ValueError, match=r"the operator \*\* is not allowed \(allowed: \+ - \* /\)"):
        evaluate("2 ** 10")


@pytest.mark.parametrize("attack, reason", [
    ("__import__('os').system('touch /tmp/puyu-calculator-pwned')", "not an arithmetic expression: call"),
    ("__import__('os')", "not an arithmetic expression: call"),
    ("(1).__class__", "attribute '(1).__class__' is not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", "call"),
    ("x + 1", "name 'x' is not allowed"),
    ("[1, 2]", "list '[1, 2]' is not allowed"),
    ("'a' * 10", "constant"),
    ("True + 1", "constant"),
    ("1 if 1 else 2", "ifexp"),
    ("lambda: 1", "lambda"),
    ("(x := 5)", "namedexpr"),
    ("1 < 2", "compare"),
    ("1 << 4000", "the operator << is not allowed"),
    ("9 ** 9 ** 9", "the result of this power would exceed 10000 bits"),
    ("2 ** 10 ** 100", "the result of this power would exceed 10000 bits"),
    ("(10 ** 1000) ** 1000", "the result of this power would exceed 10000 bits"),
    ("10 ** 3000 * 10 ** 3000 * 10 ** 3000", "exceed 10000 bits"),
    ("-" * 300 + "1", "nested more than 200 levels deep"),
    ("(" * 250 + "1" + ")" * 250, "cannot evaluate"),  # the parser's own limit on parentheses
    ("+".join(["1"] * 300), "nested more than 200 levels deep"),
    ("1" * 1001, "at most 1000 characters"),
    ("1e400 * 2", "the number 1e400 is too large"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("10.0 ** 400.5", "the result of this power is too large"),
    ("", "expression: must not be empty"),
    ("1 +", "cannot evaluate"),
])
def test_the_calculator_refuses_attacks_and_explosions_without_running_them(attack, reason):
    started = time.monotonic()
    observation = calc(attack) if len(attack) <= 1000 else calculator.run({"expression": attack})
    assert time.monotonic() - started < 1.0
    assert observation.startswith("error: ")
    assert reason in observation


def test_an_attack_string_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    calc(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    assert not marker.exists()


def test_nothing_but_a_string_expression_is_accepted():
    assert calculator.run({"expression": 12}).startswith("error: bad arguments for calculator: expression: must be string")
    assert calculator.run({}).startswith("error: bad arguments for calculator: expression: is required")


# ------------------------------------------------------------------------------------- units

def convert(value, source, target) -> dict | str:
    observation = unit_converter.run({"value": value, "from_unit": source, "to_unit": target})
    return observation if observation.startswith("error: ") else json.loads(observation)


@pytest.mark.parametrize("value, source, target, result, exact", [
    (1, "mi", "km", 1.609344, True),
    (1, "in", "cm", 2.54, True),
    (1, "lb", "g", 453.59237, True),
    (100, "C", "F", 212, True),
    (-40, "°F", "celsius", -40, True),
    (0, "K", "C", -273.15, True),
    (1, "gal", "L", 3.785411784, True),
    (1, "GiB", "MiB", 1024, True),
    (1, "MB", "Mbit", 8, True),
    (1, "year", "h", 8766, True),
    (90, "min", "h", 1.5, True),
    (2, "公斤", "斤", 4, True),
    (5, "km", "mi", 3.10685596119, False),
    (1, "oz", "g", 28.349523125, True),
    (0.1, "m", "mm", 100, True),
])
def test_unit_conversion_uses_exact_factors(value, source, target, result, exact):
    answer = convert(value, source, target)
    assert answer["result"] == result and answer["exact"] is exact


def test_unit_conversion_names_unknown_ambiguous_and_mismatched_units():
    assert convert(1, "furlong", "m").startswith("error: unknown unit 'furlong'. Known units — length: m, km")
    assert "temperature: K, C, F, R" in convert(1, "m", "parsec")
    assert convert(1, "mb", "kB") == "error: the unit 'mb' is ambiguous: write MB or Mbit (case matters for data sizes)"
    assert convert(3, "kg", "m") == "error: cannot convert mass (kg) to length (m)"
    assert convert(-300, "C", "K") == "error: -300 C is below absolute zero"
    assert convert(1e30, "m", "km").startswith("error: bad arguments for unit_converter: value: must be at most")


def test_unit_conversion_text_shows_whether_it_is_exact():
    assert convert(1, "ft", "m")["text"] == "1 ft = 0.3048 m"
    assert convert(1, "m", "ft")["text"] == "1 m ≈ 3.28083989501 ft"


def test_the_datetime_tool_answers_in_utc_or_an_iana_zone_and_names_a_bad_zone():
    utc = json.loads(clock.run({}))
    shanghai = json.loads(clock.run({"timezone": "Asia/Shanghai"}))
    assert utc["timezone"] == "UTC" and utc["utc_offset"] == "+00:00"
    assert shanghai["utc_offset"] == "+08:00"
    # Shanghai is 8 hours ahead, across midnight too ((0 - 16) % 24 == 8); an hour may turn between the calls
    assert (int(shanghai["time"][:2]) - int(utc["time"][:2])) % 24 in (7, 8, 9)
    assert clock.run({"timezone": "Mars/Olympus"}) == ("error: unknown time zone 'Mars/Olympus' "
                                                       "(use an IANA name such as \"Europe/Paris\")")
    assert clock.run({"timezone": "../../etc/passwd"}).startswith("error: '../../etc/passwd' is not an IANA time zone")
