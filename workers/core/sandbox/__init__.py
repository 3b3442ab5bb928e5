"""The code sandbox: untrusted Python in its own network, mount and pid namespaces, as nobody,
with CPU, memory, file-size and process limits, a throwaway work dir, a scrubbed environment and a
hard wall-clock kill. Used by the code scorer (`check_program`, HumanEval style) and the
Playground's Python tool (`run_python`). Django-free; see runner.py for the mechanics."""
from .humaneval import CheckResult, build_check_program, check_program
from .runner import STATUSES, SandboxResult, SandboxUnavailable, check_available, run_python

__all__ = ["STATUSES", "CheckResult", "SandboxResult", "SandboxUnavailable", "build_check_program",
           "check_available", "check_program", "run_python"]
