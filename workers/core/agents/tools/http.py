"""HTTP tools: a user describes an endpoint (method, URL template, JSON schema of the arguments)
and the agent may call it, but only on the administrator's terms.

A definition:
    {"name": "weather", "description": "...", "method": "GET" | "POST",
     "url": "https://api.example.com/v1/weather/{city}",   placeholders only in path and query
     "parameters": {JSON schema of the arguments, schema.py's subset},
     "timeout_s": 1-30 (default 10), "max_response_bytes": 1 KiB-1 MiB (default 256 KiB)}
Placeholders are filled with the URL-encoded argument; the other arguments go in the query
string (GET) or as a JSON body (POST).

Every request (and every redirect, re-checked from scratch, at most MAX_REDIRECTS) must pass:
- the host (or host:port) is on the allowlist the caller passes (the admin's setting);
- the host is resolved once, and every address it resolves to is checked: a private, loopback,
  link-local, shared or reserved address (anything not globally routable) is refused unless that
  address itself is on the allowlist (an admin who lists "127.0.0.1" means it; a listed name
  that resolves to 10.0.0.5 is refused); multicast and unspecified addresses always are;
- the connection goes to the checked address itself, with the Host header and TLS SNI (and
  certificate check) for the name: no second lookup, so DNS rebinding cannot swap the address.
No proxy is used (http.client reads no proxy variables), no cookies are kept, the response is
capped (refused past max_response_bytes) and the whole exchange has a deadline.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from workers.core.specs import SpecError, short

from .. import schema as jsonschema
from .base import NAME, Tool, ToolContext, ToolError

METHODS = ("GET", "POST")
MAX_URL = 500
MAX_DESCRIPTION = 1000
MAX_REDIRECTS = 3
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 30.0
DEFAULT_RESPONSE_BYTES = 256 * 1024
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_ALLOWLIST = 200
DEFINITION_KEYS = ("name", "description", "method", "url", "parameters", "timeout_s", "max_response_bytes")
USER_AGENT = "puyu-studio-agent/1"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9\-]{0,62}[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]{0,62}[a-z0-9])?)*$")


# ------------------------------------------------------------------------------------ allowlist

@dataclass(frozen=True)
class Allowlist:
    """Hosts (names or IP literals), each with an optional port: "api.example.com",
    "api.example.com:8443", "127.0.0.1:8000", "[::1]"."""

    entries: frozenset[tuple[str, int | None]] = frozenset()

    @classmethod
    def parse(cls, items, field: str = "http_allowlist") -> "Allowlist":
        if isinstance(items, str):
            items = [item for item in items.split(",")]
        items = [item.strip() for item in (items or []) if item and item.strip()]
        if len(items) > MAX_ALLOWLIST:
            raise SpecError(field, f"lists more than {MAX_ALLOWLIST} hosts")
        entries = set()
        for i, item in enumerate(items):
            try:
                parts = urllib.parse.urlsplit("//" + item)
                host, port = normal_host(parts.hostname or ""), parts.port
            except ValueError:
                host, port = "", None
            if not host or parts.username or parts.password or parts.path or parts.query:
                raise SpecError(f"{field}[{i}]", f"must be a host or host:port, got {short(item)}")
            entries.add((host, port))
        return cls(frozenset(entries))

    def allows(self, host: str, port: int) -> bool:
        return (host, None) in self.entries or (host, port) in self.entries

    def lists_address(self, address: str) -> bool:
        return any(host == address for host, _ in self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


def normal_host(host: str) -> str:
    """A host as compared with the allowlist: lower case, no trailing dot, an IP in its canonical
    text; "" for anything that is neither a DNS name nor an IP literal."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return host if len(host) <= 253 and _HOST.match(host) else ""


# ------------------------------------------------------------------------------------ definitions

def check_definition(field: str, definition) -> dict:
    """A user's HTTP tool definition, checked and normalised (defaults filled in)."""
    if not isinstance(definition, dict):
        raise SpecError(field, "must be an object with name, description, method, url and parameters")
    unknown = sorted(str(key) for key in definition if key not in DEFINITION_KEYS)
    if unknown:
        raise SpecError(f"{field}.{unknown[0][:40]}", f"unknown field (allowed: {', '.join(DEFINITION_KEYS)})")
    name = definition.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise SpecError(f"{field}.name", "must be an identifier (letters, digits, _) of at most 64 characters")
    description = definition.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise SpecError(f"{field}.description", f"must be a string of at most {MAX_DESCRIPTION} characters")
    method = definition.get("method", "GET")
    if method not in METHODS:
        raise SpecError(f"{field}.method", f"must be GET or POST, got {short(method)}")
    parameters = jsonschema.check_schema(f"{field}.parameters", definition.get("parameters", {"type": "object"}))
    if parameters.get("type") != "object":
        raise SpecError(f"{field}.parameters.type", 'must be "object" (a tool takes named arguments)')
    url = definition.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise SpecError(f"{field}.url", f"must be a URL of at most {MAX_URL} characters")
    _check_template(f"{field}.url", url, parameters)
    timeout = definition.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= MAX_TIMEOUT_S:
        raise SpecError(f"{field}.timeout_s", f"must be between 1 and {MAX_TIMEOUT_S:g} seconds")
    cap = definition.get("max_response_bytes", DEFAULT_RESPONSE_BYTES)
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1024 <= cap <= MAX_RESPONSE_BYTES:
        raise SpecError(f"{field}.max_response_bytes", f"must be an integer between 1024 and {MAX_RESPONSE_BYTES}")
    return {"name": name, "description": description, "method": method, "url": url, "parameters": parameters,
            "timeout_s": float(timeout), "max_response_bytes": cap}


def _check_template(field: str, url: str, parameters: dict) -> None:
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise SpecError(field, "must not contain spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise SpecError(field, "must start with http:// or https://")
    if "{" in parts.netloc or "}" in parts.netloc:
        raise SpecError(field, "the host must be written out: placeholders may appear only in the path and query")
    if "@" in parts.netloc:
        raise SpecError(field, "must not hold a user name or password")
    if parts.fragment:
        raise SpecError(field, "must not have a #fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise SpecError(field, "has an invalid port") from None
    if not normal_host(parts.hostname or ""):
        raise SpecError(field, "must name a host (a DNS name or an IP address)")
    required = set(parameters.get("required", []))
    for match in _PLACEHOLDER.finditer(parts.path + "?" + parts.query):
        name = match.group(1)
        if name not in parameters.get("properties", {}):
            raise SpecError(field, f"placeholder {{{name}}} is not among the parameters' properties")
        if name not in required:
            raise SpecError(field, f"placeholder {{{name}}} must be a required parameter")
    leftover = _PLACEHOLDER.sub("", parts.path + parts.query)
    if "{" in leftover or "}" in leftover:
        raise SpecError(field, "has an unbalanced { or }")


def template_names(url: str) -> list[str]:
    return _PLACEHOLDER.findall(url)


def fill_url(definition: dict, arguments: dict) -> tuple[str, bytes | None]:
    """(URL, JSON body or None): placeholders filled, other arguments in the query (GET) or body (POST)."""
    used = set(template_names(definition["url"]))

    def text(value) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    url = _PLACEHOLDER.sub(lambda m: urllib.parse.quote(text(arguments[m.group(1)]), safe=""), definition["url"])
    rest = {key: value for key, value in arguments.items() if key not in used}
    if definition["method"] == "POST":
        return url, json.dumps(rest, ensure_ascii=False).encode()
    if rest:
        query = urllib.parse.urlencode([(key, text(value)) for key, value in rest.items()])
        url += ("&" if urllib.parse.urlsplit(url).query else ("" if url.endswith("?") else "?")) + query
    return url, None


# ------------------------------------------------------------------------------------ the call

def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal resolves to itself). Tests replace it."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise ToolError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _address_refusal(address: str, allowlist: Allowlist) -> str | None:
    """Why `address` may not be reached, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255":
        return f"{ip} is a multicast, broadcast or unspecified address"
    if ip.is_global:
        return None
    if allowlist.lists_address(str(ip)):
        return None
    kind = ("loopback" if ip.is_loopback else "link-local" if ip.is_link_local else
            "private" if ip.is_private else "non-public")
    return (f"{ip} is a {kind} address; only addresses the administrator lists explicitly "
            "(the IP itself on the allowlist) may be reached")


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query, as sent


def check_target(url: str, allowlist: Allowlist, resolve=None) -> Target:
    """The URL's host checked against the allowlist and its addresses against the private ranges;
    the address to connect to. ToolError saying why otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolError(f"refused: only http and https URLs may be called, got {parts.scheme or 'none'}")
    if parts.username or parts.password:
        raise ToolError("refused: the URL must not hold a user name or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ToolError("refused: the URL has an invalid port") from None
    host = normal_host(parts.hostname or "")
    if not host:
        raise ToolError("refused: the URL does not name a valid host")
    if not allowlist.allows(host, port):
        raise ToolError(f"refused: the host {host}:{port} is not on the administrator's allowlist")
    addresses = (resolve or resolve_addresses)(host, port)
    if not addresses:
        raise ToolError(f"cannot resolve {host}")
    for address in addresses:
        refusal = _address_refusal(address, allowlist)
        if refusal:
            raise ToolError(f"refused: {host} resolves to {refusal}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, addresses[0], path)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, whatever the name would resolve to now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def tls_context() -> ssl.SSLContext:
    """The system's trusted CAs, certificate and host name checks on (tests trust their own CA)."""
    return ssl.create_default_context()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with SNI and certificate verification for the host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=tls_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def request(definition: dict, arguments: dict, allowlist: Allowlist, *, resolve=None,
            deadline: float | None = None) -> str:
    """Call the endpoint; the observation text (or ToolError)."""
    timeout = definition["timeout_s"]
    deadline = min(deadline, time.monotonic() + timeout) if deadline else time.monotonic() + timeout
    url, body = fill_url(definition, arguments)
    method = definition["method"]
    for _hop in range(MAX_REDIRECTS + 1):
        target = check_target(url, allowlist, resolve)
        status, headers, data = _exchange(target, method, body, definition["max_response_bytes"], deadline)
        if status in (301, 302, 303, 307, 308) and headers.get("location"):
            url = urllib.parse.urljoin(url, headers["location"])
            if status in (301, 302, 303):
                method, body = "GET", None
            continue
        text = data.decode(_charset(headers.get("content-type", "")), "replace")
        if not 200 <= status < 300:
            raise ToolError(f"HTTP {status} from {target.host}: {text[:500]}")
        return f"HTTP {status}\n{text}"
    raise ToolError(f"refused: more than {MAX_REDIRECTS} redirects")


def _exchange(target: Target, method: str, body: bytes | None, cap: int, deadline: float):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ToolError("timed out")
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(target, timeout=remaining)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, text/plain;q=0.9, */*;q=0.5",
               "Connection": "close"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, target.path, body=body, headers=headers)
        response = connection.getresponse()
        found = {key.lower(): value for key, value in response.getheaders()}
        length = found.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise ToolError(f"the response is larger than the {cap:,}-byte cap")
        chunks, size = [], 0
        while chunk := response.read(min(65536, cap + 1 - size)):
            size += len(chunk)
            if size > cap:
                raise ToolError(f"the response is larger than the {cap:,}-byte cap")
            if time.monotonic() > deadline:  # a socket timeout is per read: bound a slow drip here
                raise ToolError("timed out while reading the response")
            chunks.append(chunk)
        return response.status, found, b"".join(chunks)
    except ToolError:
        raise
    except ssl.SSLError as exc:
        raise ToolError(f"TLS failed with {target.host}: {exc.reason or exc}") from None
    except (TimeoutError, socket.timeout):
        raise ToolError(f"{target.host} did not answer in time") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ToolError(f"could not reach {target.host}: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    finally:
        connection.close()


def _charset(content_type: str) -> str:
    match = re.search(r"charset=([\w\-]+)", content_type, re.IGNORECASE)
    if match:
        try:
            "".encode(match.group(1))
            return match.group(1)
        except LookupError:
            pass
    return "utf-8"


def http_tool(definition: dict, allowlist: Allowlist, *, resolve=None, field: str = "http_tools") -> Tool:
    """A Tool for one checked definition; its URL's host must be on `allowlist` now (SpecError)."""
    definition = check_definition(field, definition)
    parts = urllib.parse.urlsplit(definition["url"])
    host = normal_host(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not allowlist.allows(host, port):
        raise SpecError(f"{field}.url", f"the host {host}:{port} is not on the administrator's allowlist for HTTP tools")

    def call(arguments: dict, context: ToolContext) -> str:
        return request(definition, arguments, allowlist, resolve=resolve, deadline=context.deadline)

    description = definition["description"] or f"{definition['method']} {definition['url']}"
    return Tool(definition["name"], description, definition["parameters"], call,
                timeout_s=definition["timeout_s"] + 2)
