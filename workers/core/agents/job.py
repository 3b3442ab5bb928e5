"""One agent turn as a worker job: the `agent_turn` spec and its runner.

The spec (validated without importing any ML library; the web side builds it from ids):
    deployment_id   the deployment whose model answers (called over the serving protocol)
    messages        the conversation so far, OpenAI-shaped, ending with the user's message
                    (at most MAX_MESSAGES, each at most MAX_MESSAGE_CHARS, MAX_TOTAL_CHARS in all)
    tools           names of built-in tools (tools/__init__.py BUILTIN_TOOLS)
    http_tools      user-described HTTP tools (tools/http.py definitions, at most MAX_HTTP_TOOLS)
    protocol        "native" (OpenAI tool calls) or "react" (Thought/Action/Observation text)
    max_turns       model calls at most, 1-20
    deadline_s      the whole loop's time limit, 1-600 s (indexing documents comes before it)
    documents       attached files (txt, Markdown, PDF) under the data dir's uploads/ folder
    document_names  their display names for citations (default: the file names)
    index_dir       where the document index is kept for reuse (under uploads/; "" keeps none)
    max_tokens, temperature   per model call

No secret and no policy is a spec field: the HTTP host allowlist is the administrator's setting,
passed by the caller (`http_allowlist`) or read from PUYU_AGENT_HTTP_ALLOWLIST (comma-separated
hosts or host:port) by default; a spec's HTTP tool whose host is not on it is a SpecError.

Each step is logged as one JSON line {"agent_step": {...}} (loop.py describes a step) as it
happens, so the page can stream the trace from the job's live log; progress moves per turn and
the reporter's cancel is honoured between steps. The reporter's writes for the steps run on one
helper thread, in order and batched (step_writer.py), so the loop does not wait on them; every
one is done before the turn returns or fails. The result:
{"answer", "trace", "turns", "stopped"}.
"""
from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from workers.core import paths
from workers.core.reporting import Reporter, check_cancelled
from workers.core.specs import SpecError, require_range, short

from .documents import SUFFIXES as DOCUMENT_SUFFIXES
from .documents import DocumentError, DocumentLibrary
from .loop import MAX_TURNS, run_agent
from .protocols import PROTOCOLS
from .step_writer import StepWriter
from .tools import BUILTIN_TOOLS, build_tools
from .tools.http import Allowlist, check_definition

HTTP_ALLOWLIST_ENV = "PUYU_AGENT_HTTP_ALLOWLIST"
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")
MAX_MESSAGES = 200
MAX_MESSAGE_CHARS = 32_000
MAX_TOTAL_CHARS = 256_000
MAX_HTTP_TOOLS = 8
MAX_DOCUMENTS = 20
MAX_DOCUMENT_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class AgentTurnSpec:
    deployment_id: int = 0
    messages: list = field(default_factory=list)
    tools: list = field(default_factory=list)
    http_tools: list = field(default_factory=list)
    protocol: str = "native"
    max_turns: int = 5
    deadline_s: float = 120.0
    documents: list = field(default_factory=list)
    document_names: list = field(default_factory=list)
    index_dir: str = ""
    max_tokens: int = 512
    temperature: float = 0.0

    def validate(self) -> None:
        if self.deployment_id < 1:
            raise SpecError("deployment_id", "must name a deployment (a positive id)")
        self._check_messages()
        if self.protocol not in PROTOCOLS:
            raise SpecError("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {short(self.protocol)}")
        require_range("max_turns", self.max_turns, 1, MAX_TURNS)
        require_range("deadline_s", self.deadline_s, 1, 600)
        require_range("max_tokens", self.max_tokens, 1, 8192)
        require_range("temperature", self.temperature, 0.0, 2.0)
        if len(self.tools) > len(BUILTIN_TOOLS):
            raise SpecError("tools", f"lists more than {len(BUILTIN_TOOLS)} tools")
        for i, name in enumerate(self.tools):
            if name not in BUILTIN_TOOLS:
                raise SpecError(f"tools[{i}]", f"unknown tool {short(name)} (built in: {', '.join(BUILTIN_TOOLS)})")
            if name in self.tools[:i]:
                raise SpecError(f"tools[{i}]", f"repeats {name!r}")
        if len(self.http_tools) > MAX_HTTP_TOOLS:
            raise SpecError("http_tools", f"lists more than {MAX_HTTP_TOOLS} tools")
        names = set(self.tools)
        self.http_tools = [check_definition(f"http_tools[{i}]", d) for i, d in enumerate(self.http_tools)]
        for i, definition in enumerate(self.http_tools):
            if definition["name"] in names or definition["name"] in BUILTIN_TOOLS:
                raise SpecError(f"http_tools[{i}].name", f"{definition['name']!r} is already a tool's name")
            names.add(definition["name"])
        self._check_documents()

    def _check_messages(self) -> None:
        if not self.messages:
            raise SpecError("messages", "must hold the conversation, ending with the user's message")
        if len(self.messages) > MAX_MESSAGES:
            raise SpecError("messages", f"holds more than {MAX_MESSAGES} messages")
        total = 0
        for i, message in enumerate(self.messages):
            if not isinstance(message, dict):
                raise SpecError(f"messages[{i}]", "must be an object with role and content")
            unknown = sorted(str(key) for key in message if key not in MESSAGE_KEYS)
            if unknown:
                raise SpecError(f"messages[{i}].{unknown[0][:40]}", f"unknown field (allowed: {', '.join(MESSAGE_KEYS)})")
            if message.get("role") not in ROLES:
                raise SpecError(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {short(message.get('role'))}")
            content = message.get("content")
            if content is None and message["role"] == "assistant" and message.get("tool_calls"):
                content = ""
            if not isinstance(content, str):
                raise SpecError(f"messages[{i}].content", "must be a string")
            if len(content) > MAX_MESSAGE_CHARS:
                raise SpecError(f"messages[{i}].content", f"is longer than {MAX_MESSAGE_CHARS:,} characters")
            total += len(content) + len(json.dumps(message.get("tool_calls") or []))
            calls = message.get("tool_calls")
            if calls is not None and (not isinstance(calls, list) or len(calls) > 16 or not all(
                    isinstance(c, dict) and isinstance(c.get("function"), dict)
                    and isinstance(c["function"].get("name"), str) for c in calls)):
                raise SpecError(f"messages[{i}].tool_calls", 'must be a list of {"id", "function": {"name", "arguments"}}')
        if total > MAX_TOTAL_CHARS:
            raise SpecError("messages", f"hold more than {MAX_TOTAL_CHARS:,} characters in all")
        if self.messages[-1].get("role") != "user":
            raise SpecError("messages", "must end with the user's message")

    def _check_documents(self) -> None:
        if len(self.documents) > MAX_DOCUMENTS:
            raise SpecError("documents", f"lists more than {MAX_DOCUMENTS} documents")
        for i, value in enumerate(self.documents):
            path = paths.readable(f"documents[{i}]", value, paths.UPLOADS)
            if path.suffix.lower() not in DOCUMENT_SUFFIXES:
                raise SpecError(f"documents[{i}]", f"must be a {', '.join(DOCUMENT_SUFFIXES)} file")
        if self.document_names:
            if len(self.document_names) != len(self.documents):
                raise SpecError("document_names", "must give one name per document (or none)")
            for i, name in enumerate(self.document_names):
                if not isinstance(name, str) or not name.strip() or len(name) > MAX_DOCUMENT_NAME or _CONTROL.search(name):
                    raise SpecError(f"document_names[{i}]",
                                    f"must be a name of 1 to {MAX_DOCUMENT_NAME} printable characters")
        searching = "document_search" in self.tools
        if searching and not self.documents:
            raise SpecError("documents", "document_search needs at least one attached document")
        if self.documents and not searching:
            raise SpecError("tools", "attached documents need the document_search tool")
        if self.index_dir:
            paths.writable("index_dir", self.index_dir, paths.UPLOADS)


def deployment_chat(deployment_id: int, *, max_tokens: int, temperature: float, timeout_s: float,
                    redis_url: str | None = None):
    """(chat callable, close) for a studio deployment, through the serving-protocol client of
    workers/core/evaluation/clients.py (imported here, when a job runs)."""
    try:
        from workers.core.evaluation.clients import DeploymentClient
    except ImportError as exc:
        raise RuntimeError("the agent job needs the serving-protocol client workers.core.evaluation.clients, "
                           f"which cannot be imported here ({exc})") from exc
    client = DeploymentClient(deployment_id, redis_url=redis_url, timeout_s=timeout_s)
    takes_stop = "stop" in inspect.signature(client.chat).parameters

    def chat(messages, tools=None, stop=None):
        extra = {"stop": stop} if takes_stop and stop else {}
        reply = client.chat(messages, tools=tools, max_tokens=max_tokens, temperature=temperature, **extra)
        return {"text": reply.text, "tool_calls": reply.tool_calls, "usage": getattr(reply, "usage", None)}

    return chat, client.close


def run_agent_turn(spec: AgentTurnSpec, reporter: Reporter, chat=None, *, http_allowlist=None, resolve=None,
                   redis_url: str | None = None) -> dict:
    """Run one agent turn; `chat` defaults to the deployment's client (over `redis_url`, given at
    run time, never a spec field; else REDIS_URL). Returns {"answer", "trace", "turns", "stopped"}."""
    raw = http_allowlist if http_allowlist is not None else os.environ.get(HTTP_ALLOWLIST_ENV, "")
    allowlist = Allowlist.parse(raw, "http_allowlist")
    library = None
    if spec.documents:
        files = [paths.readable(f"documents[{i}]", value, paths.UPLOADS) for i, value in enumerate(spec.documents)]
        names = spec.document_names or [Path(path).name for path in spec.documents]
        index_dir = paths.writable("index_dir", spec.index_dir, paths.UPLOADS) if spec.index_dir else None
        library = DocumentLibrary(list(zip(names, files)), index_dir)
    tools = build_tools(spec.tools, documents=library, http_tools=spec.http_tools, http_allowlist=allowlist,
                        resolve=resolve)
    if library is not None:
        reporter.progress(0.0, f"indexing {len(spec.documents)} document(s)")
        try:
            library.index()
        except DocumentError as exc:
            raise SpecError("documents", str(exc)) from None
        reporter.log(f"document index {'reused' if library.reused else 'built'}: "
                     f"{len(library.index().chunks)} chunks")
    close = None
    if chat is None:
        chat, close = deployment_chat(spec.deployment_id, max_tokens=spec.max_tokens, temperature=spec.temperature,
                                      timeout_s=spec.deadline_s, redis_url=redis_url)
    reports = StepWriter(reporter)

    def on_step(step: dict) -> None:
        reports.log(json.dumps({"agent_step": step}, ensure_ascii=False, default=str))
        if step["type"] == "model":
            reports.progress(min(step["turn"] / spec.max_turns, 0.99), f"turn {step['turn']} of at most {spec.max_turns}")
        check_cancelled(reporter)

    try:
        result = run_agent(chat, tools, spec.messages, spec.protocol, spec.max_turns, spec.deadline_s, on_step)
    except BaseException:
        reports.close(raise_failure=False)  # the steps until then are reported; the loop's error wins
        raise
    finally:
        if close is not None:
            close()
    reports.progress(1.0, f"{result.stopped} after {result.turns} turn(s)")  # with the last steps' write
    reports.close()
    return result.as_dict()
