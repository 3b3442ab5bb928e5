"""Real processes for integration and browser tests: Celery workers, beat and daphne, started
with the same command lines `make run` uses, against the test database and test Redis; and a
private PostgreSQL server for running them on PostgreSQL (PUYU_TEST_DATABASE=postgres)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from django.db import connection

from puyu_site.launcher import BASE_DIR, celery_beat_command, celery_worker_command, daphne_command, serve_worker_command
from puyu_site.redis_server import free_port


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def database_url() -> str:
    """DATABASE_URL of the database this test process uses (the test database), for the
    processes it starts: they must write where the test reads."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        credentials = quote(db["USER"], safe="") + (f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else "")
        return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{quote(db['NAME'], safe='')}"
    raise RuntimeError(f"tests/stack.py: no DATABASE_URL for the database engine {db['ENGINE']!r}")


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, command: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(command, cwd=BASE_DIR, env={**self.env, **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def worker(self, name: str = "gpu0", queues: str = "gpu,cpu") -> subprocess.Popen:
        return self._spawn(name, celery_worker_command(name, queues, loglevel="INFO"), {"CUDA_VISIBLE_DEVICES": ""})

    def host_worker(self, host: str, name: str, queues: str, serve_slots: int = 0) -> subprocess.Popen:
        """A worker of a simulated host `host`: node name `name@host` (what the job system records
        as each job's lease owner), the host's own scratch folder as TMPDIR, and the shared data
        dir, database and Redis of every other process here. `serve_slots` > 0: a serve worker
        (a threads pool of that many replica slots, as `make run` starts it) on `queues`="serve".
        Its process is named `name@host` here (log, kill)."""
        scratch = self.log_dir / "hosts" / host / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        if serve_slots:
            command = serve_worker_command(name, serve_slots, host=host)
        else:
            command = celery_worker_command(name, queues, loglevel="INFO", host=host)
        return self._spawn(f"{name}@{host}", command, {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
                                                       "TMPDIR": str(scratch)})

    def kill_host(self, host: str) -> list[str]:
        """SIGKILL every process of a simulated host at once, as when the machine goes down."""
        names = [name for name in self.procs if name.endswith(f"@{host}")]
        procs = [self.procs.pop(name) for name in names]
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(10)
        return names

    def beat(self) -> subprocess.Popen:
        # The control queue is served by a threads worker as in `make run`.
        self._spawn("control", celery_worker_command("control", "control", pool="threads", concurrency=2))
        return self._spawn("beat", celery_beat_command(self.log_dir / "celerybeat-schedule"))

    def web(self) -> str:
        port = free_port()
        self._spawn("web", daphne_command("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}"
        import urllib.request

        def up():
            try:
                return urllib.request.urlopen(url + "/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, 30, 0.2, "daphne to answer /healthz")
        return url

    def kill(self, name: str) -> None:
        """SIGKILL, as when the machine or the OOM killer takes a worker."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


# ---- a private PostgreSQL server ------------------------------------------------------------------
# Written here rather than taken from pytest-postgresql: its executor runs initdb and pg_ctl as the
# current user, and initdb refuses root, which is what CI and these machines run as. What we need
# is three pg_ctl/initdb calls, run through `runuser -u postgres` when we are root.
POSTGRES_INSTALL_HINT = (
    "install PostgreSQL's server programs (initdb, pg_ctl): `apt-get install postgresql` on Debian/Ubuntu, "
    "`dnf install postgresql-server` on Fedora, `brew install postgresql@15` on macOS; or put their folder on PATH")


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs are not installed here (the message says what to install)."""


def postgres_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<version>/bin
    (Debian's package keeps them off PATH), newest version first."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise PostgresMissing(f"PostgreSQL's initdb and pg_ctl were found neither on PATH nor under "
                          f"/usr/lib/postgresql/*/bin: {POSTGRES_INSTALL_HINT}")


class PostgresServer:
    """A throw-away PostgreSQL cluster under a temporary folder, on 127.0.0.1 at a free port, no
    system service: `start()` runs initdb and `pg_ctl start`, `stop()` a fast shutdown and removes
    the folder. Trust authentication for the one superuser `user` on the loopback only.
    Durability is switched off (fsync, synchronous_commit, full_page_writes): nothing here outlives
    the test run, and it keeps commits as cheap as the tests' SQLite file."""

    def __init__(self, user: str = "puyu", port: int | None = None) -> None:
        self.bin_dir = postgres_bin_dir()
        self.user = user
        self.port = port or free_port()
        self.root: Path | None = None
        self.run_as: list[str] = []

    @property
    def data_dir(self) -> Path:
        return self.root / "pg"

    def url(self, database: str = "puyu") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [*self.run_as, str(self.bin_dir / args[0]), *args[1:]]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL: `{' '.join(command)}` failed with status {done.returncode}:\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}{tail}")

    def start(self) -> "PostgresServer":
        self.root = Path(tempfile.mkdtemp(prefix="puyu-pg-"))
        if os.geteuid() == 0:
            # initdb refuses to run as root: the cluster belongs to the `postgres` account.
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing(f"PostgreSQL: running as root needs the `postgres` account to own the test "
                                      f"cluster, and there is none: {POSTGRES_INSTALL_HINT}") from None
            if not shutil.which("runuser"):
                raise RuntimeError("PostgreSQL: running as root needs `runuser` (util-linux) to start the server as "
                                   "the `postgres` account")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        try:
            self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", self.user, "-E", "UTF8",
                      "--locale=C", "--no-sync")
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off")
            self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-o", options,
                      "-w", "-t", "60", "start")
        except BaseException:
            self.stop()
            raise
        return self

    def create_database(self, name: str) -> None:
        """An empty database `name` owned by the superuser (pytest-django makes its own test database)."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                # A server that will not stop in time is killed: the test run must end.
                pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
