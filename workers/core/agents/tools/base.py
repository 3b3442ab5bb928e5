"""A tool: a name, a description, a JSON schema for its arguments, and a function.

`Tool.run(arguments, context)` never raises: the arguments are parsed (a JSON string or an
object, bounded before parsing), validated against the schema, and the function runs in a
helper thread under the tool's time limit (and the agent's remaining deadline). Bad arguments,
an exception, a refusal or a timeout come back as an observation starting with "error: ", which
the loop hands to the model like any other observation. Every observation is bounded.

A function that overruns its limit cannot be killed from Python: its helper thread is abandoned
(a daemon) and the loop goes on. Tools therefore bound their own work as well (the sandbox kills
its program, HTTP calls have socket timeouts, the calculator bounds its sizes); the thread limit
is the last wall, not the only one.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import schema as jsonschema

ERROR_PREFIX = "error: "
MAX_ARGUMENT_CHARS = 64 * 1024  # of a call's JSON arguments, checked before parsing
MAX_OBSERVATION_CHARS = 4000  # what goes back to the model (and into the trace) per call
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ToolError(Exception):
    """Raised by a tool function for an expected failure; the message is what the model reads."""


@dataclass
class ToolContext:
    """What a call may know about the run it is part of: the agent's deadline (monotonic clock)."""

    deadline: float | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


def error(message: str) -> str:
    return ERROR_PREFIX + message


def is_error(observation: str) -> bool:
    return observation.startswith(ERROR_PREFIX)


def bound(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [truncated {len(text) - limit:,} more characters]"


def parse_arguments(raw: Any) -> dict:
    """A call's arguments as an object: a dict as given, a JSON string parsed (empty means {});
    ToolError when they are neither."""
    if isinstance(raw, dict):
        return raw
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise ToolError(f"arguments must be a JSON object, got {type(raw).__name__}")
    if len(raw) > MAX_ARGUMENT_CHARS:
        raise ToolError(f"arguments are longer than {MAX_ARGUMENT_CHARS // 1024} KB")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ToolError("arguments are nested too deeply") from None
    except ValueError as exc:
        raise ToolError(f"arguments are not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object (schema.py's subset)
    function: Callable[[dict, ToolContext], str] = field(repr=False)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"a tool name must be an identifier of at most 64 characters, got {self.name!r}")

    def spec(self) -> dict:
        """The OpenAI `tools` entry (what native tool calling sends and chat templates render)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def run(self, arguments: Any, context: ToolContext | None = None) -> str:
        """The observation for one call: the function's text, or "error: ..."; never raises."""
        context = context or ToolContext()
        try:
            parsed = parse_arguments(arguments)
            jsonschema.validate(parsed, self.parameters)
        except (ToolError, jsonschema.ArgumentError) as exc:
            return error(f"bad arguments for {self.name}: {exc}")
        limit = self.timeout_s
        remaining = context.remaining()
        if remaining is not None:
            if remaining <= 0:
                return error(f"{self.name} was not run: the agent's deadline has passed")
            limit = min(limit, remaining)
        return bound(self._call(parsed, context, limit))

    def _call(self, arguments: dict, context: ToolContext, limit: float) -> str:
        try:
            finished, text = run_in_thread(lambda: self.function(arguments, context), limit, f"agent-tool-{self.name}")
        except ToolError as exc:
            return error(str(exc))
        except Exception as exc:  # noqa: BLE001 - a tool's failure is the model's observation
            return error(f"{self.name} failed: {exc.__class__.__name__}: {str(exc)[:500]}")
        if not finished:
            return error(f"{self.name} did not finish within {limit:.3g} s (timed out)")
        if text is None:
            return error(f"{self.name} returned nothing")
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False, default=str)
        return text


def run_in_thread(function: Callable[[], Any], limit: float, name: str = "agent-call") -> tuple[bool, Any]:
    """(True, result) when `function` returns within `limit` seconds, (False, None) when it is
    still running (its daemon thread is abandoned); its exception is re-raised here. A thread
    ended by SystemExit or the like counts as finished with None."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    worker.join(max(limit, 0.0))
    if worker.is_alive():
        return False, None
    if "error" in outcome:
        raise outcome["error"]
    return True, outcome.get("value")
