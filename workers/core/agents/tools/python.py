"""The Python interpreter tool: the model's code runs in the code sandbox (workers/core/sandbox:
own namespaces, no network, nobody, limits, a throwaway folder, a hard wall-clock kill), never
in the worker. Where the sandbox cannot run, every call answers the sandbox's own reason."""
from __future__ import annotations

from .base import Tool, ToolContext, ToolError

MiB = 1024 * 1024
MAX_CODE_CHARS = 20_000
TIMEOUT_S = 10.0
CPU_S = 10
MEMORY_BYTES = 512 * MiB
OUTPUT_BYTES = 8 * 1024  # per stream; the observation is bounded again by the registry

PARAMETERS = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "minLength": 1, "maxLength": MAX_CODE_CHARS,
                 "description": "A Python 3 program; print() what you want to see. Standard library only, "
                                "no network, no files kept between calls."},
    },
    "required": ["code"],
    "additionalProperties": False,
}


def run_code(arguments: dict, context: ToolContext) -> str:
    from workers.core.sandbox import SandboxUnavailable, run_python

    timeout = TIMEOUT_S
    remaining = context.remaining()
    if remaining is not None:
        timeout = max(0.5, min(timeout, remaining - 0.5))  # leave the sandbox time to report
    try:
        outcome = run_python(arguments["code"], timeout_s=timeout, cpu_s=CPU_S, memory_bytes=MEMORY_BYTES,
                             output_bytes=OUTPUT_BYTES)
    except SandboxUnavailable as exc:
        raise ToolError(str(exc)) from None
    except ValueError as exc:
        raise ToolError(f"the sandbox refused the program: {exc}") from None
    if outcome.status == "refused":
        raise ToolError(f"the sandbox refused to run the program: {outcome.reason}")
    head = {"ok": "exit status 0", "error": f"exit status {outcome.exit_code}: {outcome.reason}",
            "timeout": f"stopped: {outcome.reason}", "killed": f"stopped: {outcome.reason}"}[outcome.status]
    parts = [head]
    for name, text, cut in (("stdout", outcome.stdout, outcome.stdout_truncated),
                            ("stderr", outcome.stderr, outcome.stderr_truncated)):
        if text:
            parts.append(f"{name}:\n{text.rstrip()}" + ("\n... [truncated]" if cut else ""))
    if len(parts) == 1 and outcome.status == "ok":
        parts.append("(no output: print() the values you want to see)")
    return "\n".join(parts)


def python_tool() -> Tool:
    # The thread limit sits above the sandbox's own kill, so the sandbox reports the timeout.
    return Tool("python", "Run a Python 3 program in a sandbox and return its exit status, stdout and stderr",
                PARAMETERS, run_code, timeout_s=TIMEOUT_S + 10)
