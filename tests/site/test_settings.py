"""Settings come from the environment and a bad value stops start-up with its name in the error."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from puyu_site.database import database_from_url
from puyu_site.env import SettingError, env_bool, env_int, env_redis_url, require_redis_password

ROOT = Path(__file__).resolve().parents[2]


def start_django(tmp_path, show="DATABASES['default']['ENGINE']", **env):
    """Load the settings in a fresh interpreter, as `manage.py` would, and print `show` of them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PUYU_", "DATABASE_URL", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG"))}
    base.update({"PUYU_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "puyu_site.settings"}, **env)
    return subprocess.run([sys.executable, "-c", f"import django; django.setup(); from django.conf import settings; print(settings.{show})"],
                          cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("env, message", [
    ({"PUYU_ENV": "prod"}, "PUYU_ENV='prod' is not one of: development, production"),
    ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
    ({"PUYU_JOB_LEASE_SECONDS": "soon"}, "PUYU_JOB_LEASE_SECONDS='soon' is not a number"),
    ({"PUYU_JOB_MAX_ATTEMPTS": "0"}, "PUYU_JOB_MAX_ATTEMPTS=0 is below the minimum 1"),
    ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379' must be a redis:// or rediss:// URL"),
    ({"DATABASE_URL": "mysql://u:p@h/db"}, "DATABASE_URL='mysql://u:p@h/db': unsupported scheme 'mysql'"),
    ({"PUYU_ENV": "production", "ALLOWED_HOSTS": "studio.example.org"}, "SECRET_KEY is required when PUYU_ENV=production"),
    ({"PUYU_ENV": "production", "SECRET_KEY": "x" * 60}, "ALLOWED_HOSTS is required when PUYU_ENV=production"),
    ({"PUYU_JOB_HEARTBEAT_SECONDS": "20", "PUYU_JOB_LEASE_SECONDS": "30"}, "must exceed twice PUYU_JOB_HEARTBEAT_SECONDS"),
    ({"PUYU_ENV": "production", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": "studio.example.org,*"},
     "ALLOWED_HOSTS=* is refused when PUYU_ENV=production"),
    ({"PUYU_ENV": "production", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": "studio.example.org",
      "REDIS_URL": "redis://10.0.0.5:6379/0"}, "REDIS_URL points to 10.0.0.5, beyond this machine, without a password"),
])
def test_a_bad_setting_stops_start_up_and_names_the_variable(tmp_path, env, message):
    out = start_django(tmp_path, **env)
    assert out.returncode != 0
    assert message in out.stderr


def test_the_default_is_sqlite_under_the_data_dir_with_a_kept_secret_key(tmp_path):
    out = start_django(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "django.db.backends.sqlite3"
    key = (tmp_path / "secret_key").read_text()
    assert len(key) >= 50 and oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"
    assert start_django(tmp_path).returncode == 0
    assert (tmp_path / "secret_key").read_text() == key  # kept, not regenerated


def test_production_mode_passes_the_deploy_checks(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUYU_", "DATABASE_URL", "DJANGO_ALLOW_ASYNC"))}
    env.update(PUYU_ENV="production", PUYU_DATA_DIR=str(tmp_path), SECRET_KEY="k" * 30 + "Q9!z" * 10,
               ALLOWED_HOSTS="studio.example.org")
    out = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout


def test_sqlite_gets_wal_and_immediate_transactions_and_a_file_test_database(tmp_path):
    config = database_from_url(None, tmp_path / "db.sqlite3")
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]
    assert config["TEST"]["NAME"] == str(tmp_path / "test_db.sqlite3")


def test_postgres_urls_are_accepted():
    config = database_from_url("postgres://puyu:secret@db.internal:5432/studio", Path("/unused"))
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["NAME"], config["HOST"], config["PORT"]) == ("studio", "db.internal", 5432)


def test_a_postgres_url_without_a_database_name_is_refused():
    with pytest.raises(SettingError, match="names no database"):
        database_from_url("postgres://puyu:secret@db.internal:5432", Path("/unused"))


@pytest.mark.parametrize("raw, expected", [("1", True), ("on", True), ("No", False), ("", False)])
def test_booleans_accept_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("FLAG", raw)
    assert env_bool("FLAG") is expected


def test_integers_outside_their_range_are_refused(monkeypatch):
    monkeypatch.setenv("PUYU_PORT", "70000")
    with pytest.raises(SettingError, match="PUYU_PORT=70000 is above the maximum 65535"):
        env_int("PUYU_PORT", 8000, minimum=1, maximum=65535)


def test_a_redis_unix_socket_url_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "unix:///tmp/redis.sock")
    with pytest.raises(SettingError, match="TCP"):
        env_redis_url()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://localhost:6379/1", "redis://[::1]:6379/0",
                                 "redis://:s3cret@10.0.0.5:6379/0", "rediss://user:s3cret@redis.example.org:6380/0"])
def test_redis_on_loopback_or_with_a_password_is_accepted_in_production(url):
    require_redis_password(url)


@pytest.mark.parametrize("url", ["redis://10.0.0.5:6379/0", "redis://redis.example.org:6379/0", "redis://user@0.0.0.0:6379/0"])
def test_redis_beyond_loopback_without_a_password_is_refused_naming_the_host(url):
    with pytest.raises(SettingError, match="without a password") as refused:
        require_redis_password(url)
    assert "REDIS_URL points to" in str(refused.value)


def test_debug_is_off_unless_asked_for_so_make_run_shows_the_studios_own_error_pages(tmp_path):
    assert start_django(tmp_path, show="DEBUG").stdout.strip() == "False"
    assert start_django(tmp_path, show="DEBUG", DEBUG="1").stdout.strip() == "True"
