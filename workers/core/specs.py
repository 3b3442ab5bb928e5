"""Typed, validated, allowlisted job specs (litgpt-style): unknown keys and out-of-range values
are errors that name the field, never silently ignored."""
from __future__ import annotations

import dataclasses
import reprlib
from typing import Any

# Bounds on any one value before it is looked at: a spec arrives from JSON bodies and YAML boxes,
# and a value nested thousands deep (RecursionError in repr or a validator) or holding millions
# of items must be a field error, not a 500 or a 40 MB message.
MAX_DEPTH = 16
MAX_ITEMS = 100_000  # list items, dict entries and scalars, counted together
MAX_STRING = 2**20
MAX_INT = 2**63  # no field means more; bigger ints overflow float() and every tensor type
MAX_MESSAGE = 2000  # characters of a SpecError's reason (room for a kind's list of allowed fields)

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 4, 4, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def short(value: Any) -> str:
    """A repr of at most ~80 characters for error messages (reprlib: bounded depth and items,
    so neither a deep nor a huge value is ever expanded)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _SHORT.repr(value)
    except ValueError:  # e.g. an integer nested in a list past Python's digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _clip(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


class SpecError(ValueError):
    """A job spec has an unknown field or a value out of range; the message names the field.
    Field and reason are clipped, whatever a validator put in them."""

    def __init__(self, field: str, reason: str) -> None:
        field, reason = _clip(field)[:100], _clip(reason)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def build_spec(cls, params: dict[str, Any] | None):
    """Build dataclass `cls` from a dict, refusing unknown keys and wrong types, then validate."""
    if params is not None and not isinstance(params, dict):
        raise SpecError("params", f"must be an object of field: value, got {short(params)}")
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((key for key in params if key not in fields), key=str)
    if unknown:
        key = unknown[0]
        raise SpecError(key if isinstance(key, str) else short(key), f"unknown field (allowed: {', '.join(sorted(fields))})")
    values = {}
    for name, value in params.items():
        expected = fields[name].type
        check_size(name, value)
        values[name] = _coerce(name, value, expected)
    spec = cls(**values)
    validate = getattr(spec, "validate", None)
    if validate:
        validate()
    return spec


def check_size(name: str, value: Any) -> None:
    """Refuse a value nested deeper than MAX_DEPTH, with more than MAX_ITEMS parts, or holding a
    string over MAX_STRING characters. Iterative, so depth itself cannot overflow the stack."""
    stack, seen = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_ITEMS:
            raise SpecError(name, f"has more than {MAX_ITEMS:,} items")
        if isinstance(item, str):
            if len(item) > MAX_STRING:
                raise SpecError(name, f"holds a string of {len(item):,} characters (the limit is {MAX_STRING:,})")
        elif isinstance(item, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                raise SpecError(name, f"is nested more than {MAX_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            if len(children) > MAX_ITEMS:
                raise SpecError(name, f"has more than {MAX_ITEMS:,} items")
            stack.extend((child, depth + 1) for child in children)


def _coerce(name: str, value: Any, expected: Any) -> Any:
    expected = expected if isinstance(expected, str) else getattr(expected, "__name__", str(expected))
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(name, f"must be an integer, got {short(value)}")
        if abs(value) > MAX_INT:
            raise SpecError(name, f"is out of range, got {short(value)}")
    elif expected == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(name, f"must be a number, got {short(value)}")
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise SpecError(name, f"is out of range, got {short(value)}")
        value = float(value)
    elif expected == "str":
        if not isinstance(value, str):
            raise SpecError(name, f"must be a string, got {short(value)}")
    elif expected == "bool":
        if not isinstance(value, bool):
            raise SpecError(name, f"must be true or false, got {short(value)}")
    elif expected.startswith("dict"):
        if not isinstance(value, dict):
            raise SpecError(name, f"must be an object, got {short(value)}")
    elif expected.startswith("list"):
        if not isinstance(value, list):
            raise SpecError(name, f"must be a list, got {short(value)}")
    return value


def require_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SpecError(name, f"must be between {low} and {high}, got {value}")
