"""The private PostgreSQL server the test suite runs on with PUYU_TEST_DATABASE=postgres
(tests/stack.py, tests/conftest.py): it starts under a temporary folder on a free port, the test
processes and the processes they start share its test database, it stops and leaves nothing, and
a machine without PostgreSQL is told what to install."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from django.db import connection

from apps.jobs.models import Job
from tests.conftest import database_under_test, start_test_postgres
from tests.stack import BASE_DIR, PostgresMissing, PostgresServer, database_url, postgres_bin_dir

on_postgres = pytest.mark.skipif(database_under_test() != "postgres", reason="runs with PUYU_TEST_DATABASE=postgres")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_the_suite_runs_on_the_private_postgresql_server_and_a_child_process_sees_its_rows(owner):
    assert connection.vendor == "postgresql" and connection.settings_dict["NAME"] == "test_puyu"
    job = Job.objects.create(owner=owner, kind="probe", params={"seconds": 0})
    env = {"DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "puyu_site.settings"}
    code = ("import django; django.setup(); from django.db import connection; from apps.jobs.models import Job; "
            f"print(connection.vendor, Job.objects.get(pk={job.pk}).params['seconds'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["postgresql", "0"]


def test_a_postgresql_server_starts_on_its_own_port_and_a_fast_stop_leaves_no_folder_behind():
    try:
        postgres_bin_dir()
    except PostgresMissing as exc:
        pytest.skip(str(exc))
    import psycopg

    server = PostgresServer().start()
    root = server.root
    try:
        with psycopg.connect(host="127.0.0.1", port=server.port, user="puyu", dbname="postgres") as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    finally:
        server.stop()
    assert not root.exists() and not listening(server.port)


def test_a_machine_without_postgresql_is_told_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("tests.stack.glob.glob", lambda pattern: [])
    with pytest.raises(PostgresMissing) as raised:
        start_test_postgres()
    message = str(raised.value)
    assert message.startswith("PUYU_TEST_DATABASE=postgres: PostgreSQL's initdb and pg_ctl were found neither")
    assert "`apt-get install postgresql` on Debian/Ubuntu" in message and "unset PUYU_TEST_DATABASE" in message
