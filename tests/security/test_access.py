"""Anonymous users see nothing but an allowlist, CSRF guards every unsafe method, outsiders get
404 everywhere (page, API, websocket), and a websocket from a foreign Origin is refused."""
import json
import re

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from apps.jobs import services
from puyu_site.api import api
from puyu_site.asgi import application

# Reachable without logging in, and why.
ANONYMOUS_ALLOWLIST = {
    "/accounts/login/",  # the way in
    "/accounts/logout/",  # logging out when already logged out is harmless (POST only)
    "/healthz",  # load balancers; says only {"ok": true}
    "/favicon.ico",  # a redirect to the public static icon
    "/accounts/language/",  # the login page's language switcher (POST only; sets a cookie, redirects on-site)
    "/api/openapi.json",  # the API's shape is not a secret; every operation in it needs auth
    "/api/docs",  # the Swagger page for that schema
    "/admin/login/",  # the admin's own way in
}
SAMPLE_VALUES = {"int": "1", "slug": "datasets", "str": "x", "path": "x/y"}


def sample_path(pattern: str) -> str:
    """A concrete URL for a route or simple regex pattern."""
    pattern = re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLE_VALUES[m.group(1) or "str"], pattern)
    pattern = re.sub(r"\(\?P<\w+>([^|)]+)[^)]*\)", r"\1", pattern)  # (?P<app_label>auth|jobs) → auth
    pattern = re.sub(r"\(\?P<\w+>\.\+\)", "x", pattern)
    return pattern.replace("^", "").replace("$", "").replace("\\Z", "")


def all_paths(resolver=None, prefix="") -> set[str]:
    paths = set()
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            paths |= all_paths(entry, route)
        elif isinstance(entry, URLPattern):
            paths.add("/" + sample_path(route))
    return paths


@pytest.mark.promise("anonymous refused everywhere but the allowlist")
def test_every_page_sends_anonymous_users_to_a_login_page(promise_figure):
    client = Client()
    checked = 0
    for path in sorted(all_paths()):
        if path in ANONYMOUS_ALLOWLIST or path.startswith("/api/"):
            continue
        if path.startswith("/v1/") or path == "/metrics":  # key-authenticated: 401, see tests/serving
            assert client.get(path).status_code in (401, 405), path
            continue
        response = client.get(path)
        assert response.status_code == 302, f"{path} answered {response.status_code} to an anonymous user"
        assert "/login/" in response["Location"], f"{path} redirected to {response['Location']}"
        checked += 1
    assert checked >= 25  # the site's pages and the admin's
    promise_figure(f"{checked} pages redirect to login")


@pytest.mark.promise("anonymous refused everywhere but the allowlist")
def test_every_api_operation_answers_401_to_anonymous_callers(promise_figure):
    client = Client()
    schema = api.get_openapi_schema()
    checked = 0
    for path, operations in schema["paths"].items():
        if path.startswith("/v1/"):
            continue  # API-key endpoints, documented in the schema: 401 without a key, see tests/serving
        for method in operations:
            response = getattr(client, method)(sample_path(path.replace("{", "<").replace("}", ">")))
            assert response.status_code == 401, f"{method.upper()} {path} answered {response.status_code}"
            checked += 1
    assert checked >= 10
    promise_figure(f"{checked} API operations answer 401")


def test_the_allowlisted_pages_really_are_reachable_anonymously(db):
    client = Client()
    for path in ("/accounts/login/", "/healthz", "/api/openapi.json", "/api/docs", "/admin/login/"):
        assert client.get(path).status_code == 200, path


@pytest.fixture
def csrf_client(users):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["owner"])
    return client


@pytest.mark.promise("CSRF on every unsafe method")
def test_every_form_post_without_a_csrf_token_is_refused(csrf_client, users):
    job = services.submit_job(users["owner"], "probe", {})
    token = __import__("apps.accounts.models", fromlist=["APIToken"]).APIToken.issue(users["owner"], "t")[0]
    for path in (f"/jobs/{job.pk}/cancel/", f"/jobs/{job.pk}/retry/", "/jobs/new/diagnostics/", "/accounts/tokens/",
                 f"/accounts/tokens/{token.pk}/revoke/", "/accounts/logout/"):
        assert csrf_client.post(path).status_code == 403, path
    job.refresh_from_db()
    assert job.status == "QUEUED"


@pytest.mark.promise("CSRF on every unsafe method")
def test_every_unsafe_api_call_with_a_session_and_no_csrf_token_is_refused(csrf_client, users):
    job = services.submit_job(users["owner"], "probe", {})
    calls = [("post", "/api/jobs", '{"kind": "probe"}'), ("post", f"/api/jobs/{job.pk}/cancel", ""),
             ("post", f"/api/jobs/{job.pk}/retry", ""), ("post", "/api/tokens", '{"name": "x"}'),
             ("delete", "/api/tokens/1", "")]
    for method, path, body in calls:
        response = getattr(csrf_client, method)(path, data=body, content_type="application/json")
        assert response.status_code == 403, f"{method} {path} answered {response.status_code}"
    assert csrf_client.get("/api/me").status_code == 200  # safe methods need no token


@pytest.mark.promise("CSRF on every unsafe method")
def test_every_route_refuses_every_unsafe_method_without_a_csrf_token(csrf_client, users, promise_figure):
    """All of them, found from the URL conf and the API schema: a session cookie alone never
    changes anything. (/v1/ and /metrics take API keys, not sessions, and are CSRF-exempt.)"""
    checked = 0
    for path in sorted(all_paths()):
        if path.startswith(("/v1/", "/api/", "/static/")) or path == "/metrics":
            continue
        if path.startswith("/admin/") and path not in ("/admin/login/", "/admin/logout/"):
            continue  # Django's admin: its own views, the same middleware
        for method in ("post", "put", "patch", "delete"):
            status = getattr(csrf_client, method)(path).status_code
            assert status in (403, 405), f"{method.upper()} {path} answered {status}"
            checked += status == 403
    for path, operations in api.get_openapi_schema()["paths"].items():
        if path.startswith("/v1/"):
            continue  # documented in the schema too, but API-key only (above)
        for method in set(operations) & {"post", "put", "patch", "delete"}:
            concrete = sample_path(path.replace("{", "<").replace("}", ">"))
            status = getattr(csrf_client, method)(concrete, data="{}", content_type="application/json").status_code
            assert status == 403, f"{method.upper()} {path} answered {status}"
            checked += 1
    assert checked >= 60
    promise_figure(f"{checked} route x method pairs refused without a token")


def test_owner_and_teammate_see_the_job_page_and_the_outsider_gets_404(client, users):
    from apps.jobs import lifecycle

    job = services.submit_job(users["owner"], "probe", {})
    lifecycle.claim(job.pk, "w1")  # running: the teammate and the outsider try to cancel a live job first
    for name, expected in (("teammate", 200), ("outsider", 404)):
        client.force_login(users[name])
        assert client.get(f"/jobs/{job.pk}/").status_code == expected, name
        response = client.post(f"/jobs/{job.pk}/cancel/", follow=expected == 200)
        assert response.status_code == expected, name
        if expected == 200:  # back on the job page, told why
            assert "only the owner or staff can cancel this job" in response.content.decode()
        job.refresh_from_db()
        assert (job.status, job.cancel_requested) == ("RUNNING", False), name  # refused: the job still runs
    client.force_login(users["owner"])
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 302
    job.refresh_from_db()
    assert job.status == "RUNNING" and job.cancel_requested  # the owner's cancel reaches the worker


def session_headers(client, user, origin=b"http://testserver"):
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return [(b"cookie", cookie), (b"origin", origin), (b"host", b"testserver")]


async def connect(path, headers):
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    first = await communicator.receive_json_from(timeout=5) if connected else None
    await communicator.disconnect()
    return connected, code, first


@pytest.mark.django_db(transaction=True)
def test_the_websocket_serves_owner_and_teammate_and_refuses_outsider_and_anonymous(client, users):
    job = services.submit_job(users["owner"], "probe", {})
    path = f"/ws/jobs/{job.pk}/"
    for name in ("owner", "teammate"):
        connected, _, first = async_to_sync(connect)(path, session_headers(client, users[name]))
        assert connected and first["event"] == "snapshot" and first["data"]["status"] == "QUEUED", name
    connected, code, _ = async_to_sync(connect)(path, session_headers(client, users["outsider"]))
    assert (connected, code) == (False, 4404)
    connected, code, _ = async_to_sync(connect)(path, [(b"origin", b"http://testserver")])
    assert (connected, code) == (False, 4401)


@pytest.mark.django_db(transaction=True)
def test_a_websocket_from_a_foreign_origin_is_refused(client, users):
    job = services.submit_job(users["owner"], "probe", {})
    headers = session_headers(client, users["owner"], origin=b"http://evil.example")
    connected, _, _ = async_to_sync(connect)(f"/ws/jobs/{job.pk}/", headers)
    assert connected is False


def test_cancel_returns_to_the_page_that_asked_and_never_to_another_site(client, users):
    client.force_login(users["owner"])
    job = services.submit_job(users["owner"], "probe", {})
    response = client.post(f"/jobs/{job.pk}/cancel/", {"next": f"/training/{job.pk}/"})
    assert response.status_code == 302 and response["Location"] == f"/training/{job.pk}/"
    other = services.submit_job(users["owner"], "probe", {})
    response = client.post(f"/jobs/{other.pk}/cancel/", {"next": "https://evil.example/"})
    assert response["Location"] == f"/jobs/{other.pk}/"


# ---- IDOR: every object type, by id in URLs, bodies and websocket subscriptions ----------------

@pytest.fixture
def world(users):
    """One object of every type, owned by `owner` (teammate shares a team with them)."""
    import hashlib

    from apps.accounts.models import APIToken
    from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
    from apps.jobs.models import Job
    from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel
    from apps.serving import services as serving
    from apps.serving.models import ApiKey
    from apps.training.models import TrainingPreset, TrainingRun

    owner = users["owner"]
    job = services.submit_job(owner, "probe", {})
    dataset = Dataset.objects.create(owner=owner, name="secret-data")
    body = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    dversion = DatasetVersion.objects.create(
        dataset=dataset, number=1, source="upload", source_format="chat", canonical="chat",
        sha256=hashlib.sha256(body).hexdigest(), rows=1, size_bytes=len(body), created_by=owner)
    dversion.path.parent.mkdir(parents=True, exist_ok=True)
    dversion.path.write_bytes(body)
    upload = DatasetUpload.objects.create(dataset=dataset, filename="d.jsonl", stored_name="0" * 32 + ".jsonl",
                                          size_bytes=len(body), created_by=owner,
                                          report={"valid": True, "bad_records": [], "format": "chat"})
    model = RegisteredModel.objects.create(owner=owner, name="secret-model")
    mversion = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder", created_by=owner,
                                           architecture="LlamaForCausalLM", has_chat_template=True)
    mversion.path.mkdir(parents=True, exist_ok=True)
    (mversion.path / "config.json").write_text("{}")
    ModelAlias.objects.create(model=model, name="prod", version=mversion, updated_by=owner)
    train_job = Job.objects.create(owner=owner, kind="train", queue="gpu", title="secret run",
                                   params={"method": "sft", "finetune": "lora", "max_steps": 4})
    TrainingRun.objects.create(job=train_job, method="sft", finetune="lora", base_version=mversion, target_model=model,
                               checkpoint_dir="checkpoints/x")
    deployment = serving.create_deployment(owner, name="secret-deploy", model=model, version=mversion)
    key = ApiKey.issue(owner, "secret-key")[0]
    token = APIToken.issue(owner, "secret-token")[0]
    preset = TrainingPreset.objects.create(owner=owner, name="secret-preset", fields={"learning_rate": 0.001})

    from apps.leaderboards import services as leaderboards
    from apps.leaderboards.models import BenchmarkScore, ImportedSummary, SampleResult

    mc = b'{"question": "secret?", "choices": ["a", "b"], "answer": "B"}\n'
    mcversion = DatasetVersion.objects.create(
        dataset=dataset, number=2, source="upload", source_format="multiple_choice", canonical="multiple_choice",
        sha256=hashlib.sha256(mc).hexdigest(), rows=1, size_bytes=len(mc), created_by=owner)
    mcversion.path.write_bytes(mc)
    bversion = leaderboards.create_benchmark(owner, name="secret-bench", dataset_version=mcversion, shape="multiple_choice",
                                             scorer={"paradigm": "likelihood"}, dimension="knowledge")
    suite_version = leaderboards.create_suite(owner, name="secret-suite", items=[(bversion, 1.0)])
    run = leaderboards.submit_evaluation(owner, suite_version=suite_version, model_version=mversion)
    score = BenchmarkScore.objects.create(run=run, benchmark_version=bversion, metric="accuracy", score=1.0, n=1, correct=1)
    SampleResult.objects.create(score=score, index=0, correct=True, prompt="secret prompt")
    summary = ImportedSummary.objects.create(owner=owner, filename="summary_secret.csv")

    from apps.playground.models import Battle, Comparison, Conversation, Document, HttpTool, Message

    chat = Conversation.objects.create(owner=owner, deployment=deployment, title="secret chat")
    asked = Message.objects.create(conversation=chat, role="user", content="secret question")
    answer = Message.objects.create(conversation=chat, parent=asked, role="assistant", content="secret answer",
                                    deployment=deployment, model_version=mversion)
    document = Document.objects.create(conversation=chat, name="secret.txt", stored_name="1" * 32 + ".txt", size=6,
                                       kind="txt")
    http_tool = HttpTool.objects.create(owner=owner, name="secret_tool", url_template="https://api.example.org/")
    side = Conversation.objects.create(owner=owner, kind="comparison", deployment=deployment, title="secret compare")
    comparison = Comparison.objects.create(owner=owner, conversation=side, deployments=[deployment.pk])
    arena_chat = Conversation.objects.create(owner=owner, kind="battle", deployment=deployment, title="secret battle")
    battle = Battle.objects.create(user=owner, conversation=arena_chat, prompt="secret prompt", deployment_a=deployment,
                                   deployment_b=deployment, version_a=mversion, version_b=mversion)
    return {"job": job, "train_job": train_job, "dataset": dataset, "dversion": dversion, "upload": upload,
            "model": model, "mversion": mversion, "deployment": deployment, "key": key, "token": token,
            "preset": preset, "benchmark_version": bversion, "suite_version": suite_version, "run": run,
            "summary": summary, "conversation": chat, "message": answer, "document": document, "http_tool": http_tool,
            "comparison": comparison, "battle": battle}


def param_value(route: str, name: str, world) -> str:
    """The owner's object an id parameter of `route` names (a route under /training/ takes a
    training run's job id, /models/ and /versions/ a model version, ...)."""
    ids = {
        "dataset_id": world["dataset"].pk, "upload_id": world["upload"].pk, "model_id": world["model"].pk,
        "deployment_id": world["deployment"].pk, "key_id": world["key"].pk, "token_id": world["token"].pk,
        "preset_id": world["preset"].pk, "key": world["preset"].pk, "name": "prod", "action": "stop",
        "benchmark_id": world["benchmark_version"].benchmark_id, "bv_id": world["benchmark_version"].pk,
        "suite_id": world["suite_version"].suite_id, "run_id": world["run"].pk, "index": 0,
        "summary_id": world["summary"].pk, "fmt": "csv",
        "conversation_id": world["conversation"].pk, "message_id": world["message"].pk,
        "document_id": world["document"].pk, "tool_id": world["http_tool"].pk,
        "comparison_id": world["comparison"].pk, "battle_id": world["battle"].pk,
    }
    if name == "job_id":
        return str(world["train_job" if "training" in route else "job"].pk)
    if name == "version_id":
        return str(world["dversion" if "dataset" in route else "mversion"].pk)
    if name == "name" and "files" in route:
        return "config.json"
    return str(ids[name])


def object_routes(world) -> list[tuple[str, str]]:
    """(pattern, concrete path) of every page and API route that takes an object id."""
    routes = []

    def walk(resolver, prefix):
        for entry in resolver.url_patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry, route)
            elif re.search(r"<(?:\w+:)?(?:\w+_id|key|name)>", route) and not route.startswith(("admin/", "api/")):
                path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: param_value(route, m.group(1), world), route)
                routes.append((route, "/" + path))

    walk(get_resolver(), "")
    return routes


def api_operations(world) -> list[tuple[str, str, str]]:
    """(method, concrete path, JSON body) of every API operation with an object id in its path."""
    bodies = {"put": '{"version_id": %d}' % world["mversion"].pk, "patch": '{"notes": "pwned"}'}
    # a body the operation accepts, so the answer is about the object, not the body's shape
    put_bodies = {"suites": '{"items": [{"benchmark_version_id": %d}]}' % world["benchmark_version"].pk}
    post_bodies = {"scale": '{"replicas": 3}', "restart": '{"checkpoint": "step-2"}', "quantize": "{}",
                   "clean": "{}"}
    operations = []
    for path, ops in api.get_openapi_schema()["paths"].items():
        if "{" not in path:
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: param_value(path, m.group(1), world), path)
        for method in ops:
            if method == "post":
                body = post_bodies.get(path.rsplit("/", 1)[-1], "")
            elif method == "put":
                body = put_bodies.get(path.split("/")[2], bodies["put"])
            else:
                body = bodies.get(method, "")
            operations.append((method, concrete, body))
    return operations


def snapshot() -> dict:
    """Every row of every project model (not sessions or idempotency records), to compare."""
    from django.apps import apps as django_apps
    from django.core import serializers

    rows = {}
    for model in django_apps.get_models():
        if model._meta.app_label in ("accounts", "datasets", "jobs", "registry", "serving", "training", "leaderboards",
                                      "playground"):
            for obj in model.objects.all():
                rows[(model._meta.label, obj.pk)] = serializers.serialize("json", [obj])
    return rows


def changed(before: dict, after: dict, allow_new_by=None) -> list:
    """Rows that changed or vanished; new rows too, unless owned by `allow_new_by`."""
    diffs = [key for key in before if after.get(key) != before[key]]
    for key in after.keys() - before.keys():
        if allow_new_by is None or f'"owner": {allow_new_by.pk}' not in after[key] and f'"user": {allow_new_by.pk}' not in after[key]:
            diffs.append(key)
    return diffs


@pytest.mark.promise("IDOR by id refused (404, nothing changed)")
def test_an_outsider_gets_404_for_every_object_by_id_and_changes_nothing(client, users, world, promise_figure):
    client.force_login(users["outsider"])
    before = snapshot()
    routes = object_routes(world)
    checked = 0
    for route, path in routes:
        answers = {}
        for method in ("get", "post"):
            answers[method] = getattr(client, method)(path).status_code
        # 405 says nothing about the object (the method is refused before any lookup).
        assert set(answers.values()) <= {404, 405} and 404 in answers.values(), f"{route}: {answers}"
        checked += 1
    for method, path, body in api_operations(world):
        response = getattr(client, method)(path, data=body, content_type="application/json")
        assert response.status_code == 404, f"{method.upper()} {path} answered {response.status_code}: {response.content[:200]}"
        assert response.json()["detail"], path
        checked += 1
    assert changed(before, snapshot()) == []
    assert checked >= 50
    promise_figure(f"{checked} routes and operations, all 404")


@pytest.mark.promise("IDOR by id refused (404, nothing changed)")
def test_ids_in_request_bodies_that_the_caller_may_not_see_are_refused(client, users, world):
    client.force_login(users["outsider"])
    before = snapshot()
    model, mversion, dversion, dataset = world["model"], world["mversion"], world["dversion"], world["dataset"]
    calls = [
        ("/api/deployments", {"name": "mine", "version_id": mversion.pk}),
        ("/api/deployments", {"name": "mine", "model_id": model.pk, "alias": "prod"}),
        ("/api/training/runs", {"train_version_ids": [dversion.pk], "base_version_id": mversion.pk, "model_name": "x"}),
        ("/api/training/preflight", {"train_version_ids": [dversion.pk], "base_version_id": mversion.pk, "model_name": "x"}),
        ("/api/training/runs", {"train_version_ids": [], "base_version_id": mversion.pk, "model_id": model.pk}),
        ("/api/datasets/generate", {"generator": "arithmetic", "n": 5, "dataset_id": dataset.pk}),
        ("/api/models/import", {"source": "starter", "model_id": model.pk}),
        ("/api/models/import", {"source": "starter", "model_name": "x", "base_version_id": mversion.pk}),
        ("/api/datasets/import-hub", {"hub_id": "a/b", "hub_file": "c.jsonl", "dataset_id": dataset.pk}),
        (f"/api/dataset-versions/{dversion.pk}/clean", {"eval_version_ids": [dversion.pk]}),
        (f"/api/models/{model.pk}/aliases/prod", {"version_id": mversion.pk}),
    ]
    for path, body in calls:
        method = "put" if "/aliases/" in path else "post"
        response = getattr(client, method)(path, data=json.dumps(body), content_type="application/json")
        assert response.status_code == 404, f"{path} {body} answered {response.status_code}: {response.content[:300]}"
    # The forms take ids too.
    for path, form in ((f"/models/{model.pk}/aliases/", {"name": "prod", "version": mversion.pk}),
                       ("/deployments/new/", {"name": "mine", "version": mversion.pk, "replicas": 1})):
        assert client.post(path, form).status_code in (200, 404), path  # 200: the form re-rendered with an error
    assert changed(before, snapshot()) == []


@pytest.mark.promise("IDOR by id refused (404, nothing changed)")
def test_a_teammate_may_view_but_not_act_and_nothing_changes(client, users, world):
    client.force_login(users["teammate"])
    views = [f"/jobs/{world['job'].pk}/", f"/datasets/{world['dataset'].pk}/",
             f"/datasets/versions/{world['dversion'].pk}/", f"/models/{world['model'].pk}/",
             f"/models/versions/{world['mversion'].pk}/", f"/training/{world['train_job'].pk}/",
             f"/deployments/{world['deployment'].pk}/", f"/api/jobs/{world['job'].pk}",
             f"/api/datasets/{world['dataset'].pk}", f"/api/models/{world['model'].pk}",
             f"/api/versions/{world['mversion'].pk}", f"/api/deployments/{world['deployment'].pk}",
             f"/api/training/runs/{world['train_job'].pk}"]
    for path in views:
        assert client.get(path).status_code == 200, path
    before = snapshot()
    acts = [("post", f"/jobs/{world['job'].pk}/cancel/"), ("post", f"/datasets/versions/{world['dversion'].pk}/delete/"),
            ("post", f"/models/versions/{world['mversion'].pk}/delete/"),
            ("post", f"/models/versions/{world['mversion'].pk}/notes/"),
            ("post", f"/deployments/{world['deployment'].pk}/stop/"),
            ("post", f"/deployments/{world['deployment'].pk}/delete/"),
            ("post", f"/training/presets/{world['preset'].pk}/delete/"),
            ("post", f"/training/presets/{world['preset'].pk}/"),
            ("post", f"/deployments/keys/{world['key'].pk}/revoke/"),
            ("post", f"/accounts/tokens/{world['token'].pk}/revoke/")]
    api_acts = [("post", f"/api/jobs/{world['job'].pk}/cancel", ""),
                ("delete", f"/api/dataset-versions/{world['dversion'].pk}", ""),
                ("delete", f"/api/versions/{world['mversion'].pk}", ""),
                ("patch", f"/api/versions/{world['mversion'].pk}", '{"notes": "pwned"}'),
                ("put", f"/api/models/{world['model'].pk}/aliases/prod", '{"version_id": %d}' % world["mversion"].pk),
                ("post", f"/api/deployments/{world['deployment'].pk}/scale", '{"replicas": 3}'),
                ("post", f"/api/deployments/{world['deployment'].pk}/stop", ""),
                ("delete", f"/api/deployments/{world['deployment'].pk}", ""),
                ("delete", f"/api/tokens/{world['token'].pk}", "")]
    for method, path in acts:
        getattr(client, method)(path, {"notes": "pwned", "name": "pwned", "fields": "learning_rate: 1"})
    for method, path, body in api_acts:
        status = getattr(client, method)(path, data=body, content_type="application/json").status_code
        assert status in (403, 404), f"{method.upper()} {path} answered {status}"
    assert changed(before, snapshot(), allow_new_by=users["teammate"]) == []


@pytest.mark.promise("IDOR by id refused (404, nothing changed)")
@pytest.mark.django_db(transaction=True)
def test_websocket_subscriptions_to_objects_of_others_are_refused(client, users, world):
    outsider = session_headers(client, users["outsider"])
    for path in (f"/ws/jobs/{world['job'].pk}/", f"/ws/jobs/{world['train_job'].pk}/",
                 f"/ws/deployments/{world['deployment'].pk}/chat/"):
        connected, code, _ = async_to_sync(connect)(path, outsider)
        assert (connected, code) == (False, 4404), path
    teammate = session_headers(client, users["teammate"])
    connected, _, first = async_to_sync(connect)(f"/ws/jobs/{world['train_job'].pk}/", teammate)
    assert connected and first["event"] == "snapshot"
