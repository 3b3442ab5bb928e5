"""The playground API as owner, teammate and outsider: the owner acts, a teammate reads (403 on
any change), an outsider gets 404 for every object by id and never sees it in a list."""
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.playground import services
from apps.playground.models import Conversation, Message
from puyu_site.api import api as studio_api


@pytest.fixture
def chat(users, conversation):
    """A conversation with one finished exchange and a document."""
    owner = users["owner"]
    (asked,), (reply,) = services.send(owner, conversation, content="hi")
    services.finish_turn(reply.pk, status="done", content="hello **there**")
    reply.refresh_from_db()
    document = services.attach_document(owner, conversation, SimpleUploadedFile("n.txt", b"notes"))
    return conversation, asked, reply, document


def test_the_owner_creates_chats_sends_and_reads_the_path(users, deployment, api):
    owner = users["owner"]
    created = api(owner, "post", "/api/playground/conversations",
                  {"deployment_id": deployment.pk, "system_prompt": "Be brief.", "settings": {"temperature": 0.2}})
    assert created.status_code == 201, created.content
    conversation = created.json()
    assert conversation["settings"] == {"temperature": 0.2, "top_p": 1.0, "max_tokens": 512}
    sent = api(owner, "post", f"/api/playground/conversations/{conversation['id']}/messages", {"content": "Hello?"})
    assert sent.status_code == 201, sent.content
    body = sent.json()
    assert body["messages"][0]["content"] == "Hello?" and body["replies"][0]["status"] == "streaming"
    reply_id = body["replies"][0]["id"]
    assert body["replies"][0]["model_version_id"] == deployment.version_id
    services.finish_turn(reply_id, status="done", content="Hi!")
    path = api(owner, "get", f"/api/playground/conversations/{conversation['id']}/messages").json()
    assert [m["content"] for m in path["messages"]] == ["Hello?", "Hi!"] and path["leaf_id"] == reply_id
    assert api(owner, "get", f"/api/playground/messages/{reply_id}").json()["html"] == "<p>Hi!</p>\n"
    again = api(owner, "post", f"/api/playground/messages/{reply_id}/regenerate")
    assert again.status_code == 201 and again.json()["parent_id"] == body["messages"][0]["id"]
    siblings = api(owner, "get", f"/api/playground/messages/{reply_id}/siblings").json()
    assert [m["id"] for m in siblings] == [reply_id, again.json()["id"]]
    stopped = api(owner, "post", f"/api/playground/messages/{again.json()['id']}/stop")
    assert stopped.json()["status"] == "stopped"
    listed = api(owner, "get", "/api/playground/conversations").json()
    assert [c["id"] for c in listed] == [conversation["id"]] and listed[0]["title"] == "Hello?"


@pytest.mark.parametrize("body, detail", [
    ({"content": ""}, "content: must not be empty"),
    ({"content": "x" * 32_001}, "content: is longer than 32,000 characters"),
])
def test_a_refused_message_is_a_422_naming_the_field(users, conversation, api, body, detail):
    response = api(users["owner"], "post", f"/api/playground/conversations/{conversation.pk}/messages", body)
    assert response.status_code == 422 and response.json()["detail"] == detail
    assert not conversation.messages.exists()


def test_a_teammate_reads_everything_but_changes_nothing(users, chat, api):
    conversation, asked, reply, document = chat
    mate = users["teammate"]
    base = f"/api/playground/conversations/{conversation.pk}"
    for path in (base, f"{base}/messages", f"{base}/export?fmt=json", f"{base}/export?fmt=md", f"{base}/documents",
                 f"/api/playground/messages/{reply.pk}"):
        assert api(mate, "get", path).status_code == 200, path
    assert conversation.pk in [c["id"] for c in api(mate, "get", "/api/playground/conversations").json()]
    acts = [("patch", base, {"title": "pwned"}), ("delete", base, None),
            ("post", f"{base}/messages", {"content": "mine"}),
            ("post", f"/api/playground/messages/{reply.pk}/regenerate", None),
            ("post", f"/api/playground/messages/{reply.pk}/stop", None),
            ("post", f"/api/playground/messages/{reply.pk}/select", None),
            ("post", f"/api/playground/messages/{reply.pk}/feedback", {"rating": 1}),
            ("delete", f"/api/playground/documents/{document.pk}", None)]
    for method, path, body in acts:
        assert api(mate, method, path, body).status_code == 403, (method, path)
    upload = api(mate, "post", f"{base}/documents", None, data={"document": SimpleUploadedFile("x.txt", b"x")})
    assert upload.status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "hi" and conversation.messages.count() == 2 and conversation.documents.count() == 1
    assert not reply.feedback.exists()


def test_an_outsider_gets_404_for_every_playground_object_and_sees_none_listed(users, chat, api):
    conversation, asked, reply, document = chat
    outsider = users["outsider"]
    tool = services.HttpTool.objects.create(owner=users["owner"], name="weather", url_template="https://x.example/")
    ids = {"conversation_id": conversation.pk, "message_id": reply.pk, "document_id": document.pk, "tool_id": tool.pk,
           "battle_id": 999_999, "comparison_id": 999_999}
    checked = 0
    for path, operations in studio_api.get_openapi_schema()["paths"].items():
        if not path.startswith("/api/playground/") or "{" not in path:
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), path)
        for method in operations:
            # an empty JSON body: the object is looked up (404) before any body is read
            response = api(outsider, method, concrete, None, data="", content_type="application/json")
            assert response.status_code == 404, f"{method.upper()} {path}: {response.status_code} {response.content[:200]}"
            checked += 1
    assert checked >= 15
    assert api(outsider, "get", "/api/playground/conversations").json() == []
    assert api(outsider, "get", "/api/playground/http-tools").json() == []
    for body in ({"better_id": reply.pk, "worse_id": reply.pk},):
        assert api(outsider, "post", "/api/playground/preferences", body).status_code == 404
    export = api(outsider, "post", "/api/playground/feedback/export",
                 {"kind": "sft", "conversation_ids": [conversation.pk], "dataset_name": "stolen"})
    assert export.status_code == 404
    new = api(outsider, "post", "/api/playground/conversations", {"deployment_id": conversation.deployment_id})
    assert new.status_code == 404
    assert Message.objects.count() == 2 and Conversation.objects.count() == 1


def test_feedback_and_its_export_through_the_api(users, chat, api, settings):
    conversation, asked, reply, _ = chat
    owner = users["owner"]
    assert api(owner, "post", f"/api/playground/messages/{reply.pk}/feedback", {"rating": 1}).json()["rating"] == 1
    job = api(owner, "post", "/api/playground/feedback/export", {"kind": "sft", "dataset_name": "liked"})
    assert job.status_code == 201, job.content
    assert job.json()["kind"] == "dataset_import"
    assert str(settings.DATA_DIR) not in job.content.decode()  # server paths are not shown


def test_documents_and_http_tools_through_the_api(users, conversation, api, settings):
    owner = users["owner"]
    base = f"/api/playground/conversations/{conversation.pk}/documents"
    added = api(owner, "post", base, None, data={"document": SimpleUploadedFile("facts.md", b"# Facts\nTea is green.")})
    assert added.status_code == 201, added.content
    assert added.json()["name"] == "facts.md" and "stored_name" not in added.json()
    refused = api(owner, "post", base, None, data={"document": SimpleUploadedFile("run.sh", b"rm -rf /")})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("document:")
    assert api(owner, "delete", f"/api/playground/documents/{added.json()['id']}").status_code == 204
    assert not conversation.documents.exists()

    settings.PLAYGROUND_HTTP_ALLOWLIST = ["api.example.org"]
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tool = api(owner, "post", "/api/playground/http-tools",
               {"name": "search", "url_template": "https://api.example.org/s?q={q}", "parameters_schema": schema})
    assert tool.status_code == 201, tool.content
    off = api(owner, "post", "/api/playground/http-tools",
              {"name": "leak", "url_template": "https://evil.example/s?q={q}", "parameters_schema": schema})
    assert off.status_code == 422 and off.json()["detail"].startswith("url_template:")
    patched = api(owner, "patch", f"/api/playground/conversations/{conversation.pk}", {"http_tool_ids": [tool.json()["id"]]})
    assert patched.json()["http_tool_ids"] == [tool.json()["id"]]
    assert api(users["teammate"], "delete", f"/api/playground/http-tools/{tool.json()['id']}").status_code == 403
