"""Upload limits and download memory under the real ASGI server (daphne, started as `make run`
starts it): an over-size body is refused with 413 while it is read, chunked or not, and nothing
is stored; a large file or model tar streams through daphne with flat memory."""
from __future__ import annotations

import os
import socket
import threading
import time

import psutil
import pytest
import requests
from django.conf import settings
from django.urls import reverse

from apps.datasets.models import DatasetUpload

UPLOAD_LIMIT = 2 * 2**20
REQUEST_LIMIT = 64 * 2**10


def host_port(url):
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def post_raw(url, path, headers: dict, body_chunks, chunked: bool):
    """POST by hand (requests cannot send past an early answer): returns (status line, headers+body
    text, bytes of body sent before the answer came)."""
    sock = socket.create_connection(host_port(url), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    sock.sendall((head + "\r\n").encode())
    sock.setblocking(False)
    sent, answer = 0, b""
    try:
        for chunk in body_chunks:
            data = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") if chunked else chunk
            view = memoryview(data)
            while view:
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                if answer:
                    break
                try:
                    n = sock.send(view)
                    view, sent = view[n:], sent + n
                except BlockingIOError:
                    time.sleep(0.001)
            if answer:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    try:
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0]):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    finally:
        sock.close()
    return answer.split(b"\r\n", 1)[0].decode(), answer.decode(errors="replace"), sent


def uploads_dir_listing():
    return sorted(os.listdir(settings.UPLOAD_DIR))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.promise("over-size uploads refused while reading (real ASGI server)")
def test_over_size_bodies_are_refused_while_daphne_reads_them_and_nothing_is_stored(
        stack, users, api_token, promise_figure):
    stack.env.update({"PUYU_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "PUYU_MAX_REQUEST_BYTES": str(REQUEST_LIMIT)})
    url = stack.web()
    auth = {"Authorization": f"Bearer {api_token(users['owner'])}"}
    before = uploads_dir_listing()
    megabyte = b"x" * 2**16

    # A declared Content-Length over the route's limit: answered before any body byte is sent.
    status, text, sent = post_raw(url, "/api/datasets/upload", {**auth, "Content-Length": str(50 * 2**20),
                                                                "Content-Type": "multipart/form-data; boundary=b"},
                                  [megabyte] * 800, chunked=False)
    assert status.split()[1] == "413", text
    assert "2,097,152 bytes" in text and '"detail"' in text  # the API's error shape, naming the limit
    declared_sent = sent

    # A chunked body has no length to check up front: refused once it passes the limit.
    status, text, sent = post_raw(url, "/api/datasets/upload", {**auth, "Content-Type": "multipart/form-data; boundary=b"},
                                  [megabyte] * 800, chunked=True)
    assert status.split()[1] == "413", text
    assert sent < 20 * UPLOAD_LIMIT  # long before the 50 MiB were sent
    chunked_sent = sent

    # Every other route has the small limit (a page gets a page, not JSON); a preset file KBs.
    status, text, _ = post_raw(url, "/api/jobs", {**auth, "Content-Type": "application/json"}, [megabyte] * 4, chunked=True)
    assert status.split()[1] == "413"
    status, text, _ = post_raw(url, "/training/presets/import/", {"Content-Type": "application/x-www-form-urlencoded"},
                               [megabyte] * 8, chunked=True)
    assert status.split()[1] == "413" and "<h1>Request too large</h1>" in text

    assert uploads_dir_listing() == before
    assert not DatasetUpload.objects.exists()

    # Within the limit the same route still takes an upload (the per-route limit is the upload one).
    response = requests.post(url + "/api/datasets/upload", headers=auth, timeout=30,
                             files={"file": ("rows.jsonl", b'{"text": "hello"}\n' * 8000)}, data={"dataset_name": "ok"})
    assert response.status_code == 201, response.text
    assert len(uploads_dir_listing()) == len(before) + 1
    promise_figure(f"413 after {declared_sent:,} B (Content-Length) / {chunked_sent / 2**20:.1f} MiB chunked "
                   f"of 50 MiB, limit 2 MiB")


def sample_peak_rss(pid, stop: threading.Event, out: list):
    process = psutil.Process(pid)
    while not stop.is_set():
        out.append(process.memory_info().rss)
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.promise("downloads stream with flat memory")
def test_a_large_file_and_a_model_tar_download_through_daphne_with_flat_memory(stack, users, api_token, promise_figure):
    from apps.jobs.models import Job
    from apps.registry.models import ModelVersion, RegisteredModel

    owner = users["owner"]
    size = 320 * 2**20
    # A job log of 320 MB (sparse: written in no time, read back as zeros).
    job = Job.objects.create(owner=owner, kind="probe", params={})
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "wb") as fh:
        fh.truncate(size)
    # A model version whose folder holds a 200 MB weights file, downloaded as a tar built on the fly.
    model = RegisteredModel.objects.create(owner=owner, name="big")
    version = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder", created_by=owner,
                                          files=[{"path": "model.safetensors", "size": 200 * 2**20, "sha256": ""}])
    version.path.mkdir(parents=True)
    (version.path / "config.json").write_text("{}")
    with open(version.path / "model.safetensors", "wb") as fh:
        fh.truncate(200 * 2**20)

    url = stack.web()
    web = psutil.Process(stack.procs["web"].pid)
    from django.test import Client

    client = Client()
    client.force_login(owner)
    cookies = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}
    bearer = {"Authorization": f"Bearer {api_token(owner)}"}
    figures = []
    for path, kwargs, expected in ((f"/jobs/{job.pk}/log/", {"cookies": cookies}, size),
                                   (reverse("api:download_version", args=[version.pk]), {"headers": bearer}, None)):
        baseline = web.memory_info().rss
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=sample_peak_rss, args=(web.pid, stop, samples), daemon=True)
        sampler.start()
        received = 0
        try:
            with requests.get(url + path, stream=True, timeout=120, **kwargs) as response:
                assert response.status_code == 200, response.text[:300]
                for chunk in response.iter_content(2**20):
                    received += len(chunk)
        finally:
            stop.set()
            sampler.join()
        growth = max(samples + [baseline]) - baseline
        if expected:
            assert received == expected
        else:
            assert received > 200 * 2**20  # the weights plus tar headers
        assert growth < received / 4, f"daphne grew {growth / 2**20:.0f} MiB sending {received / 2**20:.0f} MiB"
        figures.append(f"{received / 2**20:.0f} MiB sent, RSS +{growth / 2**20:.0f} MiB")
    promise_figure("; ".join(figures))


# ---- the ASGI layer, for servers other than daphne ---------------------------------------------

def run_asgi(path, headers, bodies):
    """Drive BodyLimitMiddleware around a tiny app that reads the whole body; returns (sent
    messages, what the app saw)."""
    import asyncio

    from puyu_site.bodylimit import BodyLimitMiddleware

    seen = {"called": False, "bytes": 0, "disconnect": False}

    async def app(scope, receive, send):
        seen["called"] = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen["disconnect"] = True
                return
            seen["bytes"] += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    incoming = [{"type": "http.request", "body": b, "more_body": i < len(bodies) - 1} for i, b in enumerate(bodies)]
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": headers, "client": ["127.0.0.1", 1]}
    asyncio.run(BodyLimitMiddleware(app)(scope, receive, send))
    return sent, seen


@pytest.mark.django_db
def test_the_asgi_middleware_refuses_a_declared_or_a_streamed_over_size_body(settings):
    settings.MAX_REQUEST_BYTES = 1000
    sent, seen = run_asgi("/api/jobs", [(b"content-length", b"5000")], [b"x" * 5000])
    assert sent[0]["status"] == 413 and not seen["called"]  # refused from the header alone
    assert b"1,000 bytes" in sent[1]["body"]

    sent, seen = run_asgi("/api/jobs", [], [b"x" * 600, b"x" * 600, b"x" * 600])  # chunked: no length
    assert sent[0]["status"] == 413 and seen["disconnect"] and seen["bytes"] == 600

    sent, seen = run_asgi("/api/jobs", [], [b"x" * 400, b"x" * 400])  # under the limit: untouched
    assert sent[0]["status"] == 200 and seen["bytes"] == 800


@pytest.mark.django_db
def test_each_route_gets_its_own_limit(settings):
    from puyu_site.bodylimit import limit_for

    settings.MAX_UPLOAD_BYTES, settings.MAX_REQUEST_BYTES = 5 * 2**30, 10 * 2**20
    assert limit_for("/api/datasets/upload") == limit_for("/datasets/upload/") == 5 * 2**30
    assert limit_for("/api/models/import/archive") == limit_for("/models/import/") == 5 * 2**30
    assert limit_for("/training/presets/import/") == limit_for("/api/training/presets/import") == 256 * 2**10
    assert limit_for("/api/jobs") == limit_for("/no/such/page") == 10 * 2**20
