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


# ---- no test reads ../shared -----------------------------------------------------------------
# The maintainers keep the full public data sets in ../shared beside the checkout, and CI has
# that folder too, so a test that reads it passes there and fails for everyone who clones the
# repository. Tests use the excerpts in tests/fixtures/data instead; this audit hook makes a read
# under ../shared fail loudly wherever the suite runs (the folder need not exist: the hook sees
# the path before the file system does). Audit hooks cannot be removed, which is the point.
import sys  # noqa: E402  (kept with the guard it serves)

import pytest  # noqa: E402

SHARED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared")
SHARED_DIR = os.path.normpath(SHARED_DIR)
_SHARED_PREFIX = SHARED_DIR + os.sep
# event -> the positions of its path arguments (open, listing, copying, linking, globbing)
_PATH_EVENTS = {"open": (0,), "os.listdir": (0,), "os.scandir": (0,), "os.symlink": (0,), "os.link": (0,),
                "shutil.copyfile": (0,), "shutil.copytree": (0,), "glob.glob": (0,), "os.chdir": (0,)}
_violations: list[str] = []


class SharedDataRead(RuntimeError):
    """Not an OSError, so that `except OSError` (a missing-file fallback) does not swallow it."""


def _inside_shared(value, cwd=None) -> bool:
    if isinstance(value, (bytes, os.PathLike)):
        value = os.fsdecode(value)
    if not isinstance(value, str) or "shared" not in value and not (cwd or "").startswith(_SHARED_PREFIX):
        return False  # the cheap test first: this runs on every open() of the session
    full = os.path.normpath(os.path.join(cwd or os.getcwd(), value))  # absolute values stay as they are
    return full == SHARED_DIR or full.startswith(_SHARED_PREFIX)


def _refuse(event: str, path) -> None:
    _violations.append(f"{event} {os.fsdecode(path)}")
    raise SharedDataRead(
        f"a test read {os.fsdecode(path)!r} ({event}), under {SHARED_DIR}: that folder is not in a clone of the "
        "repository; use a small excerpt in tests/fixtures/data (see its make_excerpts.py and SOURCE.txt files)")


def _audit(event: str, args: tuple) -> None:
    positions = _PATH_EVENTS.get(event)
    if positions is not None:
        for position in positions:
            if position < len(args) and _inside_shared(args[position]):
                _refuse(event, args[position])
    elif event == "subprocess.Popen":  # (executable, args, cwd, env): a child told to read it
        _, argv, cwd, _ = args
        argv = [argv] if isinstance(argv, (str, bytes, os.PathLike)) else list(argv or ())
        cwd = os.fsdecode(cwd) if cwd is not None else None
        if cwd is not None and _inside_shared(cwd):
            _refuse(event, cwd)
        for arg in argv:
            if isinstance(arg, (str, bytes, os.PathLike)) and _inside_shared(arg, cwd):
                _refuse(event, arg)


sys.addaudithook(_audit)


def take_shared_violations() -> list[str]:
    """The reads refused since the last call (and forget them): for the guard's own test."""
    taken = list(_violations)
    _violations.clear()
    return taken


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test (or fixture) that caught the guard's exception still fails."""
    outcome = yield
    refused = take_shared_violations()
    report = outcome.get_result()
    if refused and not report.failed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} read under {SHARED_DIR} (not in a clone of the repository): "
                           + "; ".join(refused[:5]) + ". Use an excerpt in tests/fixtures/data instead.")
