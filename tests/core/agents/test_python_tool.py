"""The python tool runs the model's code in the code sandbox (workers/core/sandbox): output comes
back, the network does not exist, limits hold. Where the sandbox cannot run here, the tests skip
with its exact reason, and the tool answers that reason as its observation."""
from __future__ import annotations

import pytest

from workers.core import sandbox
from workers.core.agents.tools import build_tools

(python,) = build_tools(["python"])


@pytest.fixture(scope="module")
def available():
    reason = sandbox.check_available()
    if reason is not None:
        pytest.skip(reason)


def test_print_comes_back_with_the_exit_status(available):
    assert python.run({"code": "print(sum(range(101)))"}) == "exit status 0\nstdout:\n5050"


def test_an_exception_reports_its_status_and_traceback(available):
    observation = python.run({"code": "1 / 0"})
    assert observation.startswith("exit status 1: ZeroDivisionError: division by zero\nstderr:\nTraceback")


def test_the_network_is_refused_inside_the_sandbox(available):
    code = ("import socket\n"
            "try:\n"
            "    socket.create_connection(('1.1.1.1', 80), timeout=3)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', exc.errno)\n")
    observation = python.run({"code": code})
    assert observation.startswith("exit status 0\nstdout:\nrefused ")
    assert "connected" not in observation


def test_a_runaway_program_is_stopped_and_reported(available, monkeypatch):
    from workers.core.agents.tools import python as python_module

    monkeypatch.setattr(python_module, "TIMEOUT_S", 1.0)
    monkeypatch.setattr(python_module, "CPU_S", 1)
    observation = python.run({"code": "while True:\n    pass"})
    assert observation.startswith("stopped: ")


def test_without_the_sandbox_the_tool_answers_the_sandboxs_reason(monkeypatch):
    from workers.core.sandbox import runner

    monkeypatch.setattr(runner, "check_available", lambda refresh=False: "code execution needs Linux namespaces")
    assert python.run({"code": "print(1)"}) == "error: code execution needs Linux namespaces"
