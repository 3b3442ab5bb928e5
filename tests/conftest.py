"""Shared fixtures: a real Redis, three users (owner, teammate, outsider), API clients."""
from __future__ import annotations

import os

import pytest
from django.contrib.auth.models import Group, User

from puyu_site.redis_server import EmbeddedRedis
from tests.env_plugin import REDIS_PORT

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="session")
def redis_server():
    server = EmbeddedRedis(port=REDIS_PORT).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _redis_running(redis_server):
    """Every test may enqueue or push events; make sure the session Redis is up (a test may
    have stopped it to simulate an outage)."""
    if redis_server.process is None:
        redis_server.start()
    yield


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The in-process cache (e.g. the dashboard's live panel, kept a second) must not carry one
    test's page into the next: ids repeat between rolled-back tests."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _settings_language():
    """A request activates its language in the thread (LocaleMiddleware) and the test client leaves
    it active: a test after a 简体中文 page would read the choices' labels in Chinese. Each test ends
    back on the settings' language."""
    from django.utils import translation

    yield
    translation.deactivate()


@pytest.fixture(scope="session")
def password_hash():
    """Hash PASSWORD once: the real PBKDF2 hasher costs ~1 s a call on these machines, and
    daphne in the browser tests must verify it with the production hasher."""
    from django.contrib.auth.hashers import make_password

    return make_password(PASSWORD)


@pytest.fixture
def make_user(db, password_hash):
    def make(username, **extra):
        return User.objects.create(username=username, password=password_hash, **extra)

    return make


@pytest.fixture
def users(make_user):
    team = Group.objects.create(name="lab")
    owner = make_user("owner")
    teammate = make_user("teammate")
    outsider = make_user("outsider")
    owner.groups.add(team)
    teammate.groups.add(team)
    return {"owner": owner, "teammate": teammate, "outsider": outsider}


@pytest.fixture
def owner(users):
    return users["owner"]


def own_data_dir(tmp_path, settings, monkeypatch):
    """A test's own data dir with the store folders the settings name (the core confines every
    spec path to PUYU_DATA_DIR); for the autouse fixtures of packages whose tests write there."""
    data = tmp_path / "data"
    settings.DATA_DIR = data
    monkeypatch.setenv("PUYU_DATA_DIR", str(data))
    for name, folder in (("MODEL_STORE_DIR", "models"), ("DATASET_STORE_DIR", "datasets"), ("UPLOAD_DIR", "uploads"),
                         ("EVALUATION_DIR", "evaluations")):
        setattr(settings, name, data / folder)
        (data / folder).mkdir(parents=True)
    return data


def login_client(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def api_token():
    from apps.accounts.models import APIToken

    def make(user, name="test"):
        return APIToken.issue(user, name)[1]

    return make


@pytest.fixture
def stack(transactional_db, tmp_path):
    from tests.stack import Stack

    running = Stack(tmp_path)
    yield running
    running.stop()


# ---- the test database: SQLite (default) or a private PostgreSQL (PUYU_TEST_DATABASE=postgres) -----
TEST_DATABASES = ("sqlite", "postgres")


def database_under_test() -> str:
    """Which database the run uses: PUYU_TEST_DATABASE, strictly one of TEST_DATABASES."""
    chosen = os.environ.get("PUYU_TEST_DATABASE", "").strip().lower() or "sqlite"
    if chosen not in TEST_DATABASES:
        raise pytest.UsageError(f"PUYU_TEST_DATABASE={chosen!r}: use one of {', '.join(TEST_DATABASES)}")
    return chosen


def start_test_postgres():
    """Start the private PostgreSQL server (tests/stack.py), or say what to install."""
    from tests.stack import PostgresMissing, PostgresServer

    try:
        import psycopg  # noqa: F401  (Django's PostgreSQL backend needs it)
    except ImportError:
        raise RuntimeError("PUYU_TEST_DATABASE=postgres needs the PostgreSQL driver: "
                           ".venv/bin/pip install -r requirements.txt (psycopg[binary])") from None
    try:
        return PostgresServer().start()
    except PostgresMissing as exc:
        raise PostgresMissing(f"PUYU_TEST_DATABASE=postgres: {exc}; or unset PUYU_TEST_DATABASE to run the tests "
                              "on SQLite") from None


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server for the session, stopped (fast) at the end."""
    server = start_test_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, request):
    """pytest-django's hook for changing DATABASES before the test databases are created: with
    PUYU_TEST_DATABASE=postgres, point the default database at the private server (its test
    database, test_puyu, is created and dropped there by pytest-django as usual)."""
    if database_under_test() != "postgres":
        return
    from django.conf import settings
    from django.db import connections

    from puyu_site.database import database_from_url

    server = request.getfixturevalue("postgres_server")
    # connections.settings is settings.DATABASES itself (Django fills in its defaults there):
    # replace the entry, fill the defaults again, and drop a connection opened on the old engine.
    for opened in connections.all(initialized_only=True):
        opened.close()
        del connections[opened.alias]
    settings.DATABASES["default"] = database_from_url(server.url("puyu"), settings.DATA_DIR / "puyu.sqlite3")
    connections.configure_settings(settings.DATABASES)
