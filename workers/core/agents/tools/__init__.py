"""The tool registry: the built-in tools by name, and `build_tools` for an agent run.

Built-ins (names as the model sees them):
    calculator       exact arithmetic (agents/arithmetic.py)
    python           a program in the code sandbox (workers/core/sandbox)
    datetime         the current date and time, optionally in an IANA time zone
    unit_converter   length, mass, temperature, volume, time, data size
    document_search  the conversation's attached documents (needs a DocumentLibrary)
plus HTTP tools a user defines (tools/http.py), on the administrator's host allowlist.
Importing this package is light: the sandbox, transformers and bm25s load on first use.
"""
from __future__ import annotations

from workers.core.specs import SpecError

from .base import ERROR_PREFIX, MAX_OBSERVATION_CHARS, Tool, ToolContext, ToolError, is_error
from .calculator import calculator_tool
from .clock import datetime_tool
from .http import Allowlist, check_definition, http_tool
from .python import python_tool
from .units import unit_converter_tool

BUILTIN_TOOLS = {
    "calculator": calculator_tool,
    "python": python_tool,
    "datetime": datetime_tool,
    "unit_converter": unit_converter_tool,
    "document_search": None,  # made with the run's documents (see build_tools)
}
MAX_TOOLS = 16


def build_tools(names=(), *, documents=None, http_tools=(), http_allowlist: Allowlist | None = None,
                resolve=None) -> list[Tool]:
    """The tools of one run: built-ins by name (document_search needs `documents`, a
    DocumentLibrary) and HTTP tool definitions (their hosts must be on `http_allowlist`).
    SpecError names the offending entry."""
    from .search import document_search_tool

    tools: list[Tool] = []
    for i, name in enumerate(names):
        if name not in BUILTIN_TOOLS:
            raise SpecError(f"tools[{i}]", f"unknown tool {name!r} (built in: {', '.join(BUILTIN_TOOLS)})")
        if name == "document_search":
            if documents is None:
                raise SpecError(f"tools[{i}]", "document_search needs documents attached to the conversation")
            tools.append(document_search_tool(documents))
        else:
            tools.append(BUILTIN_TOOLS[name]())
    for i, definition in enumerate(http_tools):
        tools.append(http_tool(definition, http_allowlist or Allowlist(), resolve=resolve, field=f"http_tools[{i}]"))
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise SpecError("http_tools", f"two tools are named {tool.name!r}; tool names must be unique")
        seen.add(tool.name)
    if len(tools) > MAX_TOOLS:
        raise SpecError("tools", f"at most {MAX_TOOLS} tools in one run")
    return tools


__all__ = ["BUILTIN_TOOLS", "ERROR_PREFIX", "MAX_OBSERVATION_CHARS", "Allowlist", "Tool", "ToolContext", "ToolError",
           "build_tools", "check_definition", "http_tool", "is_error"]
