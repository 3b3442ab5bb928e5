"""DATABASE_URL → Django DATABASES entry, with the SQLite settings that survive concurrent writers."""
from __future__ import annotations

from pathlib import Path

from puyu_site.env import SettingError

SUPPORTED_SCHEMES = ("sqlite", "postgres", "postgresql", "pgsql")


def database_from_url(url: str | None, default_sqlite_path: Path) -> dict:
    import dj_database_url

    if not url:
        config = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(default_sqlite_path)}
    else:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in SUPPORTED_SCHEMES:
            raise SettingError(
                f"DATABASE_URL={url!r}: unsupported scheme {scheme!r} (use sqlite:///path or postgres://user:pass@host/db)"
            )
        try:
            config = dj_database_url.parse(url, conn_max_age=0)
        except Exception as exc:  # dj-database-url raises several types; name the variable either way
            raise SettingError(f"DATABASE_URL={url!r} could not be parsed: {exc}") from None
        if not config.get("NAME"):
            raise SettingError(f"DATABASE_URL={url!r} names no database")

    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets readers run beside a writer; IMMEDIATE transactions take the write lock up
        # front so concurrent writers queue on `timeout` instead of failing with "database is
        # locked" mid-transaction (seen here with 4 writers, see ENVIRONMENT.md).
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # Keep each thread's connection (closed only when unusable): opening one costs ~1.1 ms
        # here (the file, then the PRAGMAs), and Django's default (0) opened one per socket
        # action, per job and per job thread; an agent turn paid it 4 times (bench/playground.py).
        # PostgreSQL keeps the default: a shared server's connection count is the operator's call.
        config["CONN_MAX_AGE"] = None
        # Tests run a real worker and web server in other processes: they must share a file,
        # not Django's default in-memory test database.
        name = Path(config["NAME"])
        config["TEST"] = {"NAME": str(name.with_name(f"test_{name.name}"))}
    return config
