"""Strict parsing of settings from the environment.

Every reader names the variable and the bad value in its error, so a typo in a deployment
fails at start-up with a message that says what to fix (healthchecks-style settings).
This module imports nothing from Django so the launcher and tests can use it directly.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


class SettingError(ValueError):
    """A setting in the environment has a value we refuse to guess about."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None, *, choices: tuple[str, ...] | None = None) -> str | None:
    value = os.environ.get(name, default)
    if value is not None and choices is not None and value not in choices:
        raise SettingError(f"{name}={value!r} is not one of: {', '.join(choices)}")
    return value


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise SettingError(f"{name}={value} is above the maximum {maximum}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{name}={value} is below the minimum {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_redis_url(name: str = "REDIS_URL", default: str | None = None) -> str | None:
    raw = os.environ.get(name, default)
    if raw is None or raw == "":
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in ("redis", "rediss"):
        raise SettingError(f"{name}={raw!r} must be a redis:// or rediss:// URL (TCP; unix sockets are not supported)")
    if not parsed.hostname:
        raise SettingError(f"{name}={raw!r} has no host")
    try:
        parsed.port
    except ValueError:
        raise SettingError(f"{name}={raw!r} has an invalid port") from None
    return raw


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default.resolve()


def require_redis_password(url: str | None, name: str = "REDIS_URL") -> None:
    """Refuse a Redis URL to a host beyond loopback without a password (production): the broker
    carries every job and token stream, and an open Redis lets anyone on the network run jobs.
    The error never repeats the URL (it may hold a password)."""
    if not url:
        return
    parsed = urlparse(url)
    host = (parsed.hostname or "").strip("[]")
    if host == "localhost" or _is_loopback(host):
        return
    if not parsed.password:
        raise SettingError(f"{name} points to {host}, beyond this machine, without a password: use "
                           f"redis://:<password>@{host}:<port>/<db> (and `requirepass` in that Redis)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False
