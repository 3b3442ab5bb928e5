"""The calculator: arithmetic through the shared safe evaluator (agents/arithmetic.py), with the
power, floor division and remainder operators as well. Its observation has the shape the
generated tool-use dialogues teach (workers/core/data/generators.py): {"result": N}."""
from __future__ import annotations

import json

from ..arithmetic import ALL_OPERATORS, MAX_EXPRESSION_CHARS, as_json_number, evaluate
from .base import Tool, ToolContext, ToolError

PARAMETERS = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION_CHARS,
            "description": "An arithmetic expression with numbers, parentheses and + - * / // % **, "
                           "e.g. \"(3 + 4) * 12\"",
        },
    },
    "required": ["expression"],
    "additionalProperties": False,
}


def calculate(arguments: dict, context: ToolContext) -> str:
    try:
        value = evaluate(arguments["expression"], operators=ALL_OPERATORS)
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    return json.dumps({"result": as_json_number(value)})


def calculator_tool() -> Tool:
    return Tool("calculator", "Evaluate an arithmetic expression exactly and return the result", PARAMETERS,
                calculate, timeout_s=5.0)
