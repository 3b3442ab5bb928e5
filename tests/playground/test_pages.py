"""The Playground's pages through the Django test client: who sees what (the owner writes, a
teammate reads without a composer or buttons and is refused on every change, the outsider gets
404 everywhere), the new-chat form (only ready deployments; errors name their field), the branch
switcher, ratings and preferences, settings and documents, side by side, the arena (names hidden
until the vote), feedback export, HTTP tools, and stored model output and user text that hold
<script> or <img onerror> showing as text.

Answers are stored as a finished stream leaves them (services.finish_turn): nothing streams here,
the placeholders' streams start only when a transaction commits, which these tests never do.
Fixtures (deployment, conversation, data dir): conftest.py."""
from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.jobs.models import Job
from apps.leaderboards.models import ArenaVote
from apps.playground import arena, services
from apps.playground.models import Battle, Comparison, Conversation, Document, Feedback, HttpTool, Message, Preference
from apps.serving.models import DeploymentState

SCRIPT = "<script>alert('pwned')</script>"
IMG = '<img src=x onerror="alert(1)">'


def answer(reply: Message, text: str) -> Message:
    services.finish_turn(reply.pk, status="done", content=text, usage={"prompt_tokens": 3, "completion_tokens": 2})
    reply.refresh_from_db()
    return reply


def exchange(user, conversation, content, reply_text, **where):
    (asked,), (reply,) = services.send(user, conversation, content=content, **where)
    return asked, answer(reply, reply_text)


@pytest.fixture
def chat(users, conversation):
    """A conversation with two branches: "What is 2+2?" answered twice (a regeneration)."""
    owner = users["owner"]
    asked, first = exchange(owner, conversation, "What is 2+2?", "It is **4**.")
    second = answer(services.regenerate(owner, first), "Four.")
    return {"conversation": conversation, "asked": asked, "first": first, "second": second}


@pytest.fixture
def two_deployments(users, deployment, make_deployment):
    """The fixture's deployment and another serving a different model version."""
    return [deployment, make_deployment(users["owner"], name="other-chat", model="other")]


def comparison_of(user, deployments) -> Comparison:
    comparison = services.side_by_side(user, deployments=deployments, content="Name a fruit", settings={"max_tokens": 8})
    for reply in Message.objects.filter(conversation=comparison.conversation, role="assistant"):
        answer(reply, f"fruit from column {reply.column}")
    return comparison


def battle_of(user) -> Battle:
    battle = arena.start_battle(user, content="Tell me a joke")
    for reply in Message.objects.filter(conversation=battle.conversation, role="assistant"):
        answer(reply, f"joke {reply.column}")
    return battle


def pages(chat, comparison, battle) -> list[str]:
    conversation = chat["conversation"]
    return [f"/playground/c/{conversation.pk}/", f"/playground/c/{conversation.pk}/?leaf={chat['first'].pk}",
            f"/playground/c/{conversation.pk}/thread/", f"/playground/c/{conversation.pk}/export.json",
            f"/playground/c/{conversation.pk}/export.md", f"/playground/compare/{comparison.pk}/",
            f"/playground/compare/{comparison.pk}/?fragment=columns", f"/playground/arena/{battle.pk}/"]


def posts(chat, battle) -> list[tuple[str, dict]]:
    conversation, first = chat["conversation"], chat["first"]
    return [(f"/playground/c/{conversation.pk}/settings/", {"temperature": "0.5", "top_p": "1", "max_tokens": "64",
                                                            "protocol": "auto"}),
            (f"/playground/c/{conversation.pk}/delete/", {}),
            (f"/playground/c/{conversation.pk}/documents/", {"document": SimpleUploadedFile("notes.txt", b"hello")}),
            (f"/playground/messages/{first.pk}/rate/", {"rating": "1"}),
            (f"/playground/messages/{first.pk}/prefer/", {}),
            (f"/playground/arena/{battle.pk}/vote/", {"outcome": "a"})]


def test_the_owner_and_a_teammate_open_every_page_and_an_outsider_gets_404(client, users, chat, two_deployments):
    owner = users["owner"]
    comparison, battle = comparison_of(owner, two_deployments), battle_of(owner)
    for name, expected in (("owner", 200), ("teammate", 200), ("outsider", 404)):
        client.force_login(users[name])
        for url in pages(chat, comparison, battle):
            assert client.get(url).status_code == expected, (name, url)
        home = client.get("/playground/").content.decode()
        assert ("What is 2+2?" in home) is (name != "outsider")

    client.force_login(users["outsider"])
    for url, data in posts(chat, battle):
        assert client.post(url, data).status_code == 404, url
    assert client.get(f"/playground/messages/{chat['first'].pk}/rate/").status_code == 405


def test_a_teammate_reads_without_a_composer_and_every_change_is_refused(client, users, chat, two_deployments):
    battle = battle_of(users["owner"])
    client.force_login(users["teammate"])
    home = client.get("/playground/").content.decode()
    assert "read-only · owner" in home
    page = client.get(f"/playground/c/{chat['conversation'].pk}/").content.decode()
    assert 'id="readonly-note"' in page and "Four." in page
    for absent in ('id="composer"', 'data-action="edit"', 'data-action="regenerate"', "rate-form", 'id="settings-form"',
                   'id="document-form"', 'id="delete-form"'):
        assert absent not in page, absent
    for url, data in posts(chat, battle):
        assert client.post(url, data).status_code == 403, url
    assert Conversation.objects.filter(pk=chat["conversation"].pk).exists()
    assert not Feedback.objects.exists() and not Preference.objects.exists() and not Document.objects.exists()
    assert not ArenaVote.objects.exists()


def test_stored_model_output_and_user_text_with_script_or_img_onerror_show_as_text(client, users, conversation,
                                                                                    two_deployments):
    owner = users["owner"]
    conversation.system_prompt = f"sys {SCRIPT}"
    conversation.save()
    asked, reply = exchange(owner, conversation, f"user says {IMG}", f"model says {SCRIPT} and {IMG}\n\n[x](javascript:alert(1))")
    Message.objects.filter(pk=reply.pk).update(trace=[
        {"index": 0, "type": "model", "turn": 1, "output": SCRIPT, "tool_calls": [{"name": "calculator", "arguments": {"expression": IMG}}]},
        {"index": 1, "type": "tool", "turn": 1, "tool": "calculator", "arguments": {"expression": IMG}, "observation": SCRIPT,
         "status": "ok", "duration_ms": 3}])
    Feedback.objects.create(user=owner, message=reply, rating=1)
    comparison = services.side_by_side(owner, deployments=two_deployments, content=f"compare {IMG}")
    for column_reply in Message.objects.filter(conversation=comparison.conversation, role="assistant"):
        answer(column_reply, f"column says {SCRIPT}")
    client.force_login(owner)
    for url in (f"/playground/c/{conversation.pk}/", f"/playground/c/{conversation.pk}/thread/",
                f"/playground/compare/{comparison.pk}/", "/playground/feedback/", "/playground/"):
        html = client.get(url).content.decode()
        assert "<script>alert" not in html and "<img src=x" not in html and 'href="javascript:' not in html, url
        assert "&lt;script&gt;" in html or "&lt;img" in html or url == "/playground/", url
    page = client.get(f"/playground/c/{conversation.pk}/").content.decode()
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page  # the user's message, as typed
    assert page.count('class="step step-') == 2 and "calculator" in page  # the trace, escaped too


def test_the_empty_home_page_says_how_to_start_and_a_new_chat_lists_only_ready_deployments(client, users, make_deployment):
    owner = users["owner"]
    client.force_login(owner)
    page = client.get("/playground/").content.decode()
    assert 'id="conversations-empty"' in page and 'id="no-deployment"' in page and 'id="serve-slots"' in page

    ready = make_deployment(owner, name="ready-one")
    stopped = make_deployment(owner, name="stopped-one")
    stopped.state = DeploymentState.STOPPED
    stopped.save()
    page = client.get("/playground/").content.decode()
    assert "owner/ready-one" in page and "owner/stopped-one" not in page and 'id="no-deployment"' not in page
    for name in ("calculator", "python", "datetime", "unit_converter", "document_search"):
        assert f'value="{name}"' in page
    assert 'value="react"' in page and "Temperature" in page and "Randomness of each token" in page

    refused = client.post("/playground/new/", {"deployment": str(stopped.pk), "temperature": "9", "top_p": "1",
                                               "max_tokens": "64", "protocol": "auto"})
    assert refused.status_code == 422 and not Conversation.objects.exists()
    text = refused.content.decode()
    assert "deployment: choose a ready deployment you may use" in text and "temperature: " in text

    made = client.post("/playground/new/", {"deployment": str(ready.pk), "system_prompt": "Be brief.", "temperature": "0.2",
                                            "top_p": "0.9", "max_tokens": "64", "tools": ["calculator", "datetime"],
                                            "protocol": "native"})
    conversation = Conversation.objects.get()
    assert made.status_code == 302 and made["Location"] == f"/playground/c/{conversation.pk}/"
    assert conversation.tools == ["calculator", "datetime"] and conversation.protocol == "native"
    assert conversation.settings == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64}
    page = client.get(made["Location"]).content.decode()
    assert 'id="thread-empty"' in page and 'id="composer"' in page and "calculator, datetime" in page


def test_the_switcher_shows_each_branch_and_the_owner_keeps_the_one_chosen(client, users, chat):
    conversation, first, second = chat["conversation"], chat["first"], chat["second"]
    client.force_login(users["owner"])
    page = client.get(f"/playground/c/{conversation.pk}/").content.decode()
    assert "Four." in page and "It is <strong>4</strong>." not in page
    assert '<span class="sibling-position">2/2</span>' in page
    assert f'href="/playground/c/{conversation.pk}/?leaf={first.pk}"' in page  # ‹ goes to the first answer

    page = client.get(f"/playground/c/{conversation.pk}/?leaf={first.pk}").content.decode()
    assert "It is <strong>4</strong>." in page and '<span class="sibling-position">1/2</span>' in page
    assert services.current_leaf(conversation).pk == first.pk  # a reload shows the same branch
    assert "It is <strong>4</strong>." in client.get(f"/playground/c/{conversation.pk}/").content.decode()

    client.force_login(users["teammate"])  # a teammate browses without moving the owner's branch
    client.get(f"/playground/c/{conversation.pk}/?leaf={second.pk}")
    assert services.current_leaf(conversation).pk == first.pk


def test_thumbs_and_this_one_is_better_swap_their_buttons_and_are_stored(client, users, chat):
    first, second = chat["first"], chat["second"]
    client.force_login(users["owner"])
    response = client.post(f"/playground/messages/{first.pk}/rate/", {"rating": "1"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'class="thumb thumb-up pressed"' in response.content.decode()
    assert Feedback.objects.get(message=first).rating == 1
    client.post(f"/playground/messages/{first.pk}/rate/", {"rating": "0"}, HTTP_HX_REQUEST="true")
    assert not Feedback.objects.filter(message=first).exists()
    assert client.post(f"/playground/messages/{first.pk}/rate/", {"rating": "5"}).status_code == 422

    response = client.post(f"/playground/messages/{second.pk}/prefer/", HTTP_HX_REQUEST="true")
    assert "✓ better" in response.content.decode()
    assert list(Preference.objects.values_list("better", "worse")) == [(second.pk, first.pk)]
    assert client.post(f"/playground/messages/{chat['asked'].pk}/prefer/").status_code == 422  # not an answer


def test_settings_and_documents_change_the_conversation_and_refusals_name_the_field(client, users, chat):
    conversation = chat["conversation"]
    client.force_login(users["owner"])
    client.post(f"/playground/c/{conversation.pk}/settings/", {
        "system_prompt": "Answer in French.", "temperature": "1.1", "top_p": "0.8", "max_tokens": "99",
        "tools": ["calculator"], "protocol": "react"})
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Answer in French." and conversation.tools == ["calculator"]
    assert conversation.protocol == "react" and conversation.settings["max_tokens"] == 99

    response = client.post(f"/playground/c/{conversation.pk}/settings/", {"temperature": "0.5", "top_p": "1",
                                                                         "max_tokens": "99999", "protocol": "auto"},
                           follow=True)
    assert "max_tokens: " in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.settings["max_tokens"] == 99

    client.post(f"/playground/c/{conversation.pk}/documents/", {"document": SimpleUploadedFile("notes.md", b"# Notes\nhi")})
    refused = client.post(f"/playground/c/{conversation.pk}/documents/", {"document": SimpleUploadedFile("x.exe", b"MZ")},
                          follow=True)
    assert [d.name for d in conversation.documents.all()] == ["notes.md"]
    page = refused.content.decode()
    assert "document: " in page and "notes.md" in page and 'id="document-search-off"' in page


def test_side_by_side_asks_every_chosen_deployment_and_shows_a_column_each(client, users, two_deployments):
    client.force_login(users["owner"])
    page = client.get("/playground/compare/").content.decode()
    assert "owner/tiny-chat" in page and "owner/other-chat" in page
    refused = client.post("/playground/compare/", {"deployments": [str(two_deployments[0].pk)], "content": "hi",
                                                   "temperature": "0.7", "top_p": "1", "max_tokens": "32"})
    assert refused.status_code == 422 and "deployments: tick two to four deployments" in refused.content.decode()
    response = client.post("/playground/compare/", {"deployments": [str(d.pk) for d in two_deployments], "content": "Hi all",
                                                    "temperature": "0.7", "top_p": "1", "max_tokens": "32"})
    comparison = Comparison.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/playground/compare/{comparison.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert page.count('class="column card"') == 2 and "Hi all" in page
    assert "<code>owner/tiny-chat</code>" in page and "<code>owner/other-chat</code>" in page


def test_the_arena_hides_the_names_until_the_vote_and_links_the_ratings(client, users, deployment, make_deployment):
    owner = users["owner"]
    client.force_login(owner)
    page = client.get("/playground/arena/").content.decode()
    assert 'id="arena-needs-two"' in page and 'href="/leaderboards/arena/"' in page
    refused = client.post("/playground/arena/", {"content": "Hi"})
    assert refused.status_code == 422 and "deployments: the arena needs two ready deployments" in refused.content.decode()

    make_deployment(owner, name="other-chat", model="other")
    response = client.post("/playground/arena/", {"content": "Tell me a joke"})
    battle = Battle.objects.get()
    assert response["Location"] == f"/playground/arena/{battle.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "Model A" in page and "Model B" in page and "owner/tiny-chat" not in page and "owner/other-chat" not in page
    assert re.search(r'id="vote-a"\s+disabled', page)  # both answers still being written

    refused = client.post(f"/playground/arena/{battle.pk}/vote/", {"outcome": "a"}, follow=True)
    assert "outcome: wait until both answers are finished" in refused.content.decode()
    for reply in Message.objects.filter(conversation=battle.conversation, role="assistant"):
        answer(reply, f"joke {reply.column}")
    page = client.post(f"/playground/arena/{battle.pk}/vote/", {"outcome": "tie"}, follow=True).content.decode()
    vote = ArenaVote.objects.get()
    assert vote.outcome == "tie" and {vote.model_a_id, vote.model_b_id} == {battle.version_a_id, battle.version_b_id}
    assert 'id="vote-result"' in page and "a tie" in page and "owner/tiny-chat" in page and "owner/other-chat" in page
    assert 'id="vote-form"' not in page


def test_feedback_is_listed_and_exported_as_a_dataset_version_job(client, users, chat):
    owner, first, second = users["owner"], chat["first"], chat["second"]
    client.force_login(owner)
    assert 'id="rated-empty"' in client.get("/playground/feedback/").content.decode()
    services.give_feedback(owner, first, rating=-1)
    services.give_feedback(owner, second, rating=1)
    services.prefer(owner, second, first)
    page = client.get("/playground/feedback/").content.decode()
    assert 'class="rating down"' in page and "Four." in page and 'id="preferences-empty"' not in page

    refused = client.post("/playground/feedback/", {"kind": "preference", "dataset_name": "bad name!"})
    assert refused.status_code == 422 and "dataset_name: " in refused.content.decode()
    response = client.post("/playground/feedback/", {"kind": "preference", "dataset_name": "my-prefs",
                                                     "conversations": [str(chat["conversation"].pk)]}, follow=True)
    job = Job.objects.get(kind="dataset_import")
    page = response.content.decode()
    assert f'href="/jobs/{job.pk}/"' in page and "being made" in page
    assert 'hx-trigger="every 2s"' in page  # the table follows the job until it ends


def test_http_tools_show_the_allowlist_and_refusals_name_the_field(client, users, settings):
    settings.PLAYGROUND_HTTP_ALLOWLIST = ["api.example.org"]
    client.force_login(users["owner"])
    page = client.get("/playground/tools/").content.decode()
    assert "<code>api.example.org</code>" in page and 'id="tools-empty"' in page

    fields = {"name": "weather", "description": "Weather in a city", "method": "GET",
              "url_template": "https://elsewhere.example.com/w?city={city}",
              "parameters_schema": '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'}
    refused = client.post("/playground/tools/", fields)
    assert refused.status_code == 422 and "url_template: " in refused.content.decode() and not HttpTool.objects.exists()
    refused = client.post("/playground/tools/", {**fields, "parameters_schema": "{not json"})
    assert refused.status_code == 422 and "parameters_schema: is not JSON" in refused.content.decode()

    saved = client.post("/playground/tools/", {**fields, "url_template": "https://api.example.org/w?city={city}"})
    assert saved.status_code == 302 and HttpTool.objects.get().name == "weather"
    client.force_login(users["teammate"])
    page = client.get("/playground/tools/").content.decode()
    assert "Weather in a city" in page and "Delete" not in page
    assert client.post(f"/playground/tools/{HttpTool.objects.get().pk}/delete/").status_code == 403
    client.force_login(users["outsider"])
    page = client.get("/playground/tools/").content.decode()
    assert "Weather in a city" not in page and 'id="tools-empty"' in page
