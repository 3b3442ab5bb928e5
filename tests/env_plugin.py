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
