"""HTTP tools (workers/core/agents/tools/http.py) against a real local server: only allowlisted
hosts, no private addresses unless the address itself is listed, redirects re-checked, the
checked address is the one connected to, and responses are capped and timed."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers.core.agents.tools import build_tools
from workers.core.agents.tools.http import Allowlist, check_definition, http_tool
from workers.core.specs import SpecError


class Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.hits[self.path.split("?")[0]] += 1
        if self.path.startswith("/weather/"):
            body = {"path": self.path, "host": self.headers["Host"], "sunny": True}
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        elif self.path == "/redirect-off":
            self._send(302, b"", {"Location": "http://evil.example/steal"})
        elif self.path == "/redirect-metadata":
            self._send(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
        elif self.path == "/redirect-on":
            self._send(302, b"", {"Location": "/weather/Paris"})
        elif self.path == "/big":
            self._send(200, b"x" * 5000)
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, b"late")
        else:
            self._send(404, b"no such thing")

    def do_POST(self):
        self.hits[self.path] += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, json.dumps({"received": json.loads(body), "type": self.headers["Content-Type"]}).encode())


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that stops reading (the size cap, the timeout) breaks the pipe: expected here


@pytest.fixture(scope="module")
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _fresh_hits():
    Handler.hits.clear()


LOCAL = Allowlist.parse(["127.0.0.1"])


def weather(url: str, **extra) -> dict:
    return {"name": "weather", "description": "The weather in a city", "method": "GET", "url": url,
            "parameters": {"type": "object", "required": ["city"],
                           "properties": {"city": {"type": "string", "maxLength": 80},
                                          "units": {"type": "string", "enum": ["metric", "imperial"]}}}, **extra}


def fetcher(url: str, allowlist: Allowlist = LOCAL, resolve=None, **extra):
    definition = {"name": "fetch", "description": "GET a page", "method": "GET", "url": url,
                  "parameters": {"type": "object", "properties": {}}, **extra}
    return http_tool(definition, allowlist, resolve=resolve)


# ------------------------------------------------------------------------------------ happy paths

def test_a_get_tool_fills_its_url_template_and_query_on_an_explicitly_allowlisted_loopback(server):
    tool = http_tool(weather(f"http://127.0.0.1:{server}/weather/{{city}}"), LOCAL)

    observation = tool.run({"city": "São Paulo/../x", "units": "metric"})

    status, body = observation.split("\n", 1)
    assert status == "HTTP 200"
    assert json.loads(body) == {"path": "/weather/S%C3%A3o%20Paulo%2F..%2Fx?units=metric",
                                "host": f"127.0.0.1:{server}", "sunny": True}


def test_a_post_tool_sends_its_arguments_as_json(server):
    definition = {"name": "echo", "description": "Echo", "method": "POST", "url": f"http://127.0.0.1:{server}/echo",
                  "parameters": {"type": "object", "properties": {"text": {"type": "string"}, "n": {"type": "integer"}}}}

    observation = http_tool(definition, LOCAL).run({"text": "你好", "n": 3})

    assert json.loads(observation.split("\n", 1)[1]) == {"received": {"text": "你好", "n": 3}, "type": "application/json"}


def test_a_redirect_to_an_allowlisted_host_is_followed_after_being_checked_again(server):
    observation = fetcher(f"http://127.0.0.1:{server}/redirect-on").run({})
    assert observation.startswith("HTTP 200\n") and '"/weather/Paris"' in observation
    assert Handler.hits == Counter({"/redirect-on": 1, "/weather/Paris": 1})


def test_the_connection_goes_to_the_address_checked_once_with_the_names_host_header(server):
    """DNS rebinding: a second lookup would answer a private address; there is none."""
    lookups = []

    def rebinding(host, port):
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.9.9.9"]

    allowlist = Allowlist.parse(["api.test", "127.0.0.1"])
    observation = http_tool(weather(f"http://api.test:{server}/weather/{{city}}"), allowlist, resolve=rebinding).run(
        {"city": "Oslo"})

    assert json.loads(observation.split("\n", 1)[1])["host"] == f"api.test:{server}"
    assert lookups == ["api.test"]


# ------------------------------------------------------------------------------------ refusals

def test_a_tool_whose_host_is_off_the_allowlist_is_refused_when_it_is_built(server):
    with pytest.raises(SpecError, match=r"http_tools\.url: the host 127\.0\.0\.1:\d+ is not on the administrator's allowlist"):
        http_tool(weather(f"http://127.0.0.1:{server}/weather/{{city}}"), Allowlist.parse(["api.example.com"]))
    with pytest.raises(SpecError, match=r"http_tools\[0\]\.url: the host 169\.254\.169\.254:80 is not on"):
        build_tools([], http_tools=[weather("http://169.254.169.254/latest/{city}")],
                    http_allowlist=Allowlist.parse(["api.example.com"]))
    with pytest.raises(SpecError, match="is not on the administrator's allowlist"):
        build_tools([], http_tools=[weather("http://api.example.com/{city}")], http_allowlist=None)


def test_a_redirect_off_the_allowlist_is_refused(server):
    assert fetcher(f"http://127.0.0.1:{server}/redirect-off").run({}) == (
        "error: refused: the host evil.example:80 is not on the administrator's allowlist")
    assert fetcher(f"http://127.0.0.1:{server}/redirect-metadata").run({}) == (
        "error: refused: the host 169.254.169.254:80 is not on the administrator's allowlist")


@pytest.mark.parametrize("addresses, kind", [
    (["127.0.0.1"], "127.0.0.1 is a loopback address"),
    (["169.254.169.254"], "169.254.169.254 is a link-local address"),
    (["10.0.0.7"], "10.0.0.7 is a private address"),
    (["192.168.1.20"], "192.168.1.20 is a private address"),
    (["100.64.0.1"], "100.64.0.1 is a non-public address"),
    (["93.184.215.14", "10.0.0.7"], "10.0.0.7 is a private address"),  # one bad address is enough
    (["::1"], "::1 is a loopback address"),
    (["::ffff:127.0.0.1"], "127.0.0.1 is a loopback address"),
    (["fe80::1"], "fe80::1 is a link-local address"),
    (["224.0.0.1"], "224.0.0.1 is a multicast, broadcast or unspecified address"),
    (["0.0.0.0"], "0.0.0.0 is a multicast, broadcast or unspecified address"),
])
def test_an_allowlisted_name_that_resolves_to_a_private_address_is_refused(server, addresses, kind):
    tool = fetcher(f"http://internal.example:{server}/weather/x", Allowlist.parse(["internal.example"]),
                   resolve=lambda host, port: addresses)

    observation = tool.run({})

    assert observation.startswith(f"error: refused: internal.example resolves to {kind}")
    assert not Handler.hits


def test_localhost_by_name_is_refused_unless_its_address_is_listed(server):
    by_name = fetcher(f"http://localhost:{server}/weather/x", Allowlist.parse(["localhost"]),
                      resolve=lambda host, port: ["127.0.0.1"])
    assert by_name.run({}).startswith("error: refused: localhost resolves to 127.0.0.1 is a loopback address")
    listed = fetcher(f"http://localhost:{server}/weather/x", Allowlist.parse(["localhost", "127.0.0.1"]),
                     resolve=lambda host, port: ["127.0.0.1"])
    assert listed.run({}).startswith("HTTP 200")


def test_responses_are_capped_timed_and_errors_reported(server):
    assert fetcher(f"http://127.0.0.1:{server}/big", max_response_bytes=1024).run({}) == (
        "error: the response is larger than the 1,024-byte cap")
    started = time.monotonic()
    assert fetcher(f"http://127.0.0.1:{server}/slow", timeout_s=1).run({}) == "error: 127.0.0.1 did not answer in time"
    assert time.monotonic() - started < 2.5
    assert fetcher(f"http://127.0.0.1:{server}/nothing").run({}) == "error: HTTP 404 from 127.0.0.1: no such thing"


def test_arguments_are_validated_against_the_users_schema_before_any_request(server):
    tool = http_tool(weather(f"http://127.0.0.1:{server}/weather/{{city}}"), LOCAL)
    assert tool.run({"city": "Rome", "units": "kelvin"}) == (
        'error: bad arguments for weather: units: must be one of "metric", "imperial", got \'kelvin\'')
    assert tool.run({}) == "error: bad arguments for weather: city: is required"
    assert not Handler.hits


@pytest.mark.parametrize("change, field, reason", [
    ({"url": "http://{host}.example.com/x"}, "url", "the host must be written out"),
    ({"url": "http://user:pw@api.example.com/{city}"}, "url", "must not hold a user name or password"),
    ({"url": "file:///etc/passwd"}, "url", "must start with http:// or https://"),
    ({"url": "http://api.example.com/{town}"}, "url", "placeholder {town} is not among the parameters' properties"),
    ({"url": "http://api.example.com/{units}"}, "url", "placeholder {units} must be a required parameter"),
    ({"url": "http://api.example.com/{city"}, "url", "unbalanced"),
    ({"method": "DELETE"}, "method", "must be GET or POST"),
    ({"name": "bad name"}, "name", "must be an identifier"),
    ({"timeout_s": 300}, "timeout_s", "must be between 1 and 30 seconds"),
    ({"max_response_bytes": 10**9}, "max_response_bytes", "must be an integer between 1024 and 1048576"),
    ({"headers": {"Authorization": "x"}}, "headers", "unknown field"),
    ({"parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": ".*"}}, "required": ["city"]}},
     "parameters.properties.city", "uses 'pattern', which is not supported"),
])
def test_a_definition_is_checked_field_by_field(change, field, reason):
    definition = {**weather("http://api.example.com/{city}"), **change}
    with pytest.raises(SpecError) as caught:
        check_definition("http_tools[0]", definition)
    assert caught.value.field == f"http_tools[0].{field}"
    assert reason in caught.value.reason


def test_the_allowlist_accepts_hosts_and_ports_and_refuses_anything_else():
    allowlist = Allowlist.parse("api.example.com, 127.0.0.1:8000, [::1], API.Other.org.")
    assert allowlist.allows("api.example.com", 443) and allowlist.allows("api.other.org", 80)
    assert allowlist.allows("127.0.0.1", 8000) and not allowlist.allows("127.0.0.1", 8001)
    assert allowlist.allows("::1", 9)
    for bad in (["http://api.example.com/v1"], ["user@host"], ["bad host"]):
        with pytest.raises(SpecError, match=r"http_allowlist\[0\]: must be a host or host:port"):
            Allowlist.parse(bad)


# ------------------------------------------------------------------------------------ TLS

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names only api.test."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=api.test",
                    "-addext", "subjectAltName=DNS:api.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], cert
    httpd.shutdown()
    httpd.server_close()


def test_https_connects_to_the_checked_address_and_verifies_the_certificate_for_the_host_name(tls_server, monkeypatch):
    import ssl

    from workers.core.agents.tools import http as http_module

    port, cert = tls_server
    monkeypatch.setattr(http_module, "tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    allowlist = Allowlist.parse(["api.test", "other.test", "127.0.0.1"])
    pinned = lambda host, port: ["127.0.0.1"]  # noqa: E731

    good = http_tool(weather(f"https://api.test:{port}/weather/{{city}}"), allowlist, resolve=pinned).run({"city": "Oslo"})
    assert good.startswith("HTTP 200\n"), good
    assert json.loads(good.split("\n", 1)[1])["host"] == f"api.test:{port}"

    # The same address under another name: the certificate does not match, so nothing is sent.
    wrong = http_tool(weather(f"https://other.test:{port}/weather/{{city}}"), allowlist, resolve=pinned).run({"city": "Oslo"})
    assert wrong.startswith("error: TLS failed with other.test: CERTIFICATE_VERIFY_FAILED")
    assert Handler.hits == Counter({"/weather/Oslo": 1})
