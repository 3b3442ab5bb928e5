"""The JSON-schema subset tools are described with: enough to validate a model's arguments and
to refuse a user's tool definition that asks for something this validator would not enforce.

Keywords: type (object, string, number, integer, boolean, array, null, or a list of them),
properties, required, additionalProperties (false or absent), enum, minimum, maximum,
minLength, maxLength, items, minItems, maxItems; annotations (description, title, default,
examples) are allowed and ignored. Anything else (pattern, oneOf, $ref, ...) in a definition is a
SpecError rather than a silently unenforced rule. As in JSON Schema, true and false are not
numbers, and 3.0 is an integer.
"""
from __future__ import annotations

import json
from typing import Any

from workers.core.specs import SpecError, short

TYPES = ("object", "string", "number", "integer", "boolean", "array", "null")
VALIDATION_KEYWORDS = ("type", "properties", "required", "additionalProperties", "enum", "minimum", "maximum",
                       "minLength", "maxLength", "items", "minItems", "maxItems")
ANNOTATIONS = ("description", "title", "default", "examples")
MAX_SCHEMA_DEPTH = 6
MAX_SCHEMA_BYTES = 16 * 1024  # it is rendered into every prompt
MAX_PROPERTIES = 32
MAX_ENUM = 100
MAX_ERRORS = 3  # reported to the model at once: enough to fix a call, short enough to read


class ArgumentError(ValueError):
    """Arguments do not match a tool's schema; the message lists what is wrong, path by path."""


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "number" or isinstance(value, int) or float(value).is_integer()


def _type_name(value: Any) -> str:
    for kind in ("boolean", "null", "integer", "number", "string", "array", "object"):
        if _is_type(value, kind):
            return kind
    return type(value).__name__


def errors(value: Any, schema: dict, path: str = "") -> list[str]:
    """What is wrong with `value` under `schema`, as "path: problem" lines (empty when valid)."""
    found: list[str] = []
    _check(value, schema, path, found)
    return found


def validate(value: Any, schema: dict) -> None:
    problems = errors(value, schema)
    if problems:
        more = f" (and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
        raise ArgumentError("; ".join(problems[:MAX_ERRORS]) + more)


def _check(value: Any, schema: dict, path: str, found: list[str]) -> None:
    where = path or "arguments"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is_type(value, kind) for kind in kinds):
            found.append(f"{where}: must be {' or '.join(kinds)}, got {_type_name(value)} {short(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: must be one of {', '.join(json.dumps(v) for v in schema['enum'])}, got {short(value)}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            found.append(f"{where}: must not be empty" if schema["minLength"] == 1 else
                         f"{where}: must be at least {schema['minLength']} characters long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{where}: must be at most {schema['maxLength']} characters long, got {len(value)}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{where}: must be at least {schema['minimum']}, got {short(value)}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{where}: must be at most {schema['maximum']}, got {short(value)}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            found.append(f"{where}: must hold at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append(f"{where}: must hold at most {schema['maxItems']} items, got {len(value)}")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value[:1000]):
                _check(item, schema["items"], f"{where}[{i}]", found)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                found.append(f"{_join(path, name)}: is required")
        if schema.get("additionalProperties") is False:
            extra = sorted(str(key) for key in value if key not in properties)
            if extra:
                allowed = ", ".join(properties) or "none"
                found.append(f"{where}: unknown argument {short(extra[0])} (allowed: {allowed})")
        for name, sub in properties.items():
            if name in value:
                _check(value[name], sub, _join(path, name), found)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check_schema(field: str, schema: Any, depth: int = 0) -> dict:
    """A tool's parameter schema as users define it: refuses keywords this validator would not
    enforce, and bounds its size and depth. Returns the schema."""
    if depth == 0:
        try:
            size = len(json.dumps(schema))
        except (TypeError, ValueError, RecursionError):
            raise SpecError(field, "must be a JSON schema (plain JSON values)") from None
        if size > MAX_SCHEMA_BYTES:
            raise SpecError(field, f"is larger than {MAX_SCHEMA_BYTES // 1024} KB of JSON")
    if depth > MAX_SCHEMA_DEPTH:
        raise SpecError(field, f"is nested more than {MAX_SCHEMA_DEPTH} levels deep")
    if not isinstance(schema, dict):
        raise SpecError(field, f"must be a JSON schema object, got {short(schema)}")
    unknown = sorted(key for key in schema if key not in VALIDATION_KEYWORDS + ANNOTATIONS)
    if unknown:
        raise SpecError(field, f"uses {short(unknown[0])}, which is not supported "
                               f"(supported: {', '.join(VALIDATION_KEYWORDS)})")
    kinds = schema.get("type")
    if kinds is not None:
        listed = [kinds] if isinstance(kinds, str) else kinds
        if not isinstance(listed, list) or not listed or any(kind not in TYPES for kind in listed):
            raise SpecError(f"{field}.type", f"must be one of {', '.join(TYPES)} (or a list of them), got {short(kinds)}")
    for key in ("minimum", "maximum"):
        if key in schema and (isinstance(schema[key], bool) or not isinstance(schema[key], (int, float))):
            raise SpecError(f"{field}.{key}", f"must be a number, got {short(schema[key])}")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and (isinstance(schema[key], bool) or not isinstance(schema[key], int) or schema[key] < 0):
            raise SpecError(f"{field}.{key}", f"must be a non-negative integer, got {short(schema[key])}")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not 0 < len(schema["enum"]) <= MAX_ENUM):
        raise SpecError(f"{field}.enum", f"must be a list of 1 to {MAX_ENUM} values")
    if "additionalProperties" in schema and schema["additionalProperties"] is not False:
        raise SpecError(f"{field}.additionalProperties", "may only be false (extra arguments refused)")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or len(properties) > MAX_PROPERTIES:
        raise SpecError(f"{field}.properties", f"must be an object of at most {MAX_PROPERTIES} named schemas")
    for name, sub in properties.items():
        check_schema(f"{field}.properties.{name}", sub, depth + 1)
    required = schema.get("required", [])
    if not isinstance(required, list) or any(not isinstance(name, str) or name not in properties for name in required):
        raise SpecError(f"{field}.required", "must list names among properties")
    if "items" in schema:
        check_schema(f"{field}.items", schema["items"], depth + 1)
    return schema
