"""The current date and time, in UTC or an IANA time zone (zoneinfo, the system's tz database)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .base import Tool, ToolContext, ToolError

# IANA names: "UTC", "Asia/Shanghai", "America/Argentina/Buenos_Aires", "Etc/GMT+8".
_ZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")

PARAMETERS = {
    "type": "object",
    "properties": {
        "timezone": {"type": "string", "minLength": 1, "maxLength": 64,
                     "description": "An IANA time zone such as \"Asia/Shanghai\" or \"Europe/Paris\"; default UTC"},
    },
    "additionalProperties": False,
}


def now(arguments: dict, context: ToolContext, *, clock=None) -> str:
    name = arguments.get("timezone") or "UTC"
    if not _ZONE.match(name):
        raise ToolError(f"{name!r} is not an IANA time zone name (e.g. \"Asia/Shanghai\")")
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {name!r} (use an IANA name such as \"Europe/Paris\")") from None
    moment = (clock() if clock else datetime.now(timezone.utc)).astimezone(zone)
    return json.dumps({
        "datetime": moment.isoformat(timespec="seconds"),
        "date": moment.date().isoformat(),
        "time": moment.strftime("%H:%M:%S"),
        "weekday": moment.strftime("%A"),
        "timezone": name,
        "utc_offset": moment.strftime("%z")[:3] + ":" + moment.strftime("%z")[3:],
    })


def datetime_tool() -> Tool:
    return Tool("datetime", "Return the current date and time, optionally in an IANA time zone", PARAMETERS, now,
                timeout_s=5.0)
