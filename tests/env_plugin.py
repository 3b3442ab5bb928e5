"""Loaded with `-p tests.env_plugin` before pytest-django configures Django, so the settings
module reads a test environment: a throw-away data dir, a Redis port of our own (the server is
started by the `redis_server` fixture), and short heartbeat/lease/reaper intervals so the
integration tests see a dead worker within seconds."""
import os
import tempfile

from puyu_site.redis_server import free_port

_data_dir = tempfile.mkdtemp(prefix="puyu-test-")
REDIS_PORT = free_port()

os.environ.update(
    {
        "PUYU_ENV": "development",
        "PUYU_DATA_DIR": _data_dir,
        "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        "PUYU_JOB_HEARTBEAT_SECONDS": "0.5",
        "PUYU_JOB_LEASE_SECONDS": "3",
        "PUYU_REAPER_INTERVAL_SECONDS": "1",
        "PUYU_DISPATCH_GRACE_SECONDS": "1",
        "PUYU_WORKER_HEARTBEAT_SECONDS": "1",
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
)
for name in ("DATABASE_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS"):
    os.environ.pop(name, None)


# ---- tests read only what a clone of the repository holds -------------------------------------
# A machine that runs the suite may keep other data beside the checkout (the maintainers and CI
# keep the full public data sets there). A test that reads such a folder passes on that machine
# and fails for everyone who clones the repository; tests use the excerpts in tests/fixtures/data
# instead. The folders a run must not read are named by PUYU_TESTS_FORBIDDEN_DIRS (os.pathsep-
# separated; `.ci/run` sets it), and this audit hook makes any read under them fail loudly (the
# folder need not exist: the hook sees the path before the file system does). Audit hooks cannot
# be removed, which is the point.
import sys  # noqa: E402  (kept with the guard it serves)

import pytest  # noqa: E402

FORBIDDEN_DIRS: list[str] = [os.path.normpath(os.path.abspath(p))
                             for p in os.environ.get("PUYU_TESTS_FORBIDDEN_DIRS", "").split(os.pathsep) if p.strip()]
# event -> the positions of its path arguments (open, listing, copying, linking, globbing)
_PATH_EVENTS = {"open": (0,), "os.listdir": (0,), "os.scandir": (0,), "os.symlink": (0,), "os.link": (0,),
                "shutil.copyfile": (0,), "shutil.copytree": (0,), "glob.glob": (0,), "os.chdir": (0,)}
_violations: list[str] = []


class ForbiddenRead(RuntimeError):
    """Not an OSError, so that `except OSError` (a missing-file fallback) does not swallow it."""


def _forbidden(value, cwd=None) -> bool:
    if not FORBIDDEN_DIRS:
        return False  # the cheap test first: this runs on every open() of the session
    if isinstance(value, (bytes, os.PathLike)):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        return False
    full = os.path.normpath(os.path.join(cwd or os.getcwd(), value))  # absolute values stay as they are
    return any(full == root or full.startswith(root + os.sep) for root in FORBIDDEN_DIRS)


def _refuse(event: str, path) -> None:
    _violations.append(f"{event} {os.fsdecode(path)}")
    raise ForbiddenRead(
        f"a test read {os.fsdecode(path)!r} ({event}), a folder that is not in a clone of the repository "
        "(PUYU_TESTS_FORBIDDEN_DIRS); use a small excerpt in tests/fixtures/data (see its SOURCE.txt files)")


def _audit(event: str, args: tuple) -> None:
    positions = _PATH_EVENTS.get(event)
    if positions is not None:
        for position in positions:
            if position < len(args) and _forbidden(args[position]):
                _refuse(event, args[position])
    elif event == "subprocess.Popen" and FORBIDDEN_DIRS:  # (executable, args, cwd, env): a child told to read it
        _, argv, cwd, _ = args
        argv = [argv] if isinstance(argv, (str, bytes, os.PathLike)) else list(argv or ())
        cwd = os.fsdecode(cwd) if cwd is not None else None
        if cwd is not None and _forbidden(cwd):
            _refuse(event, cwd)
        for arg in argv:
            if isinstance(arg, (str, bytes, os.PathLike)) and _forbidden(arg, cwd):
                _refuse(event, arg)


sys.addaudithook(_audit)


def take_violations() -> list[str]:
    """The reads refused since the last call (and forget them): for the guard's own test."""
    taken = list(_violations)
    _violations.clear()
    return taken


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test (or fixture) that caught the guard's exception still fails."""
    outcome = yield
    refused = take_violations()
    report = outcome.get_result()
    if refused and not report.failed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} read outside the clone (PUYU_TESTS_FORBIDDEN_DIRS): "
                           + "; ".join(refused[:5]) + ". Use an excerpt in tests/fixtures/data instead.")


def pytest_unconfigure(config):
    """The session's throw-away data dir goes with the session: it holds ~1 GB of models and
    datasets by the end of a full run, and left behind by every run it filled this machine's
    disk (2026-12-04: a CI run failed on "No space left on device"). Every worker, server and
    fixture that wrote there has stopped by now (fixture teardown runs before this hook)."""
    import shutil

    shutil.rmtree(_data_dir, ignore_errors=True)
