"""Typed, validated, allowlisted job specs (litgpt-style): unknown keys and out-of-range values
are errors that name the field, never silently ignored."""
from __future__ import annotations

import dataclasses
from typing import Any


class SpecError(ValueError):
    """A job spec has an unknown field or a value out of range; the message names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def build_spec(cls, params: dict[str, Any] | None):
    """Build dataclass `cls` from a dict, refusing unknown keys and wrong types, then validate."""
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise SpecError(unknown[0], f"unknown field (allowed: {', '.join(sorted(fields))})")
    values = {}
    for name, value in params.items():
        expected = fields[name].type
        values[name] = _coerce(name, value, expected)
    spec = cls(**values)
    validate = getattr(spec, "validate", None)
    if validate:
        validate()
    return spec


def _coerce(name: str, value: Any, expected: Any) -> Any:
    expected = expected if isinstance(expected, str) else getattr(expected, "__name__", str(expected))
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(name, f"must be an integer, got {value!r}")
    elif expected == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(name, f"must be a number, got {value!r}")
        value = float(value)
    elif expected == "str":
        if not isinstance(value, str):
            raise SpecError(name, f"must be a string, got {value!r}")
    elif expected == "bool":
        if not isinstance(value, bool):
            raise SpecError(name, f"must be true or false, got {value!r}")
    elif expected.startswith("dict"):
        if not isinstance(value, dict):
            raise SpecError(name, f"must be an object, got {value!r}")
    elif expected.startswith("list"):
        if not isinstance(value, list):
            raise SpecError(name, f"must be a list, got {value!r}")
    return value


def require_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SpecError(name, f"must be between {low} and {high}, got {value}")
