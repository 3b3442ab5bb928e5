"""The playground's services: the conversation tree (paths, branching by edit and regenerate),
what the model is sent, refusals that store nothing, exports, documents, HTTP tools and the
quota. Nothing here streams: the placeholders' streams start only when a transaction commits,
which these (rolled back) tests never do."""
import json

import pytest
import redis
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from apps.playground import exports, services
from apps.playground.models import Conversation, Message, MessageStatus
from apps.serving import gateway
from apps.serving.models import UsageDay


def answer(message: Message, text: str, status=MessageStatus.DONE) -> Message:
    """What a finished stream stores."""
    services.finish_turn(message.pk, status=status, content=text, usage={"prompt_tokens": 3, "completion_tokens": 2})
    message.refresh_from_db()
    return message


def exchange(user, conversation, content, reply_text, **where):
    (asked,), (reply,) = services.send(user, conversation, content=content, **where)
    return asked, answer(reply, reply_text)


def test_messages_follow_the_shown_branch_and_an_edit_starts_a_sibling_branch(users, conversation):
    owner = users["owner"]
    q1, a1 = exchange(owner, conversation, "What is 2+2?", "4")
    q2, a2 = exchange(owner, conversation, "And times 3?", "12")
    assert [m.pk for m in services.path(conversation)] == [q1.pk, a1.pk, q2.pk, a2.pk]
    assert a1.model_version == conversation.deployment.version and a1.deployment == conversation.deployment

    edited, a2b = exchange(owner, conversation, "And times 5?", "20", edit_of=q2)
    assert edited.parent_id == a1.pk and [m.pk for m in services.siblings(edited)] == [q2.pk, edited.pk]
    assert [m.content for m in services.path(conversation)] == ["What is 2+2?", "4", "And times 5?", "20"]

    leaf = services.select_branch(owner, conversation, q2)  # the switcher goes back to the first branch
    assert leaf.pk == a2.pk and [m.pk for m in services.path(conversation)] == [q1.pk, a1.pk, q2.pk, a2.pk]
    q3, _ = exchange(owner, conversation, "Thanks", "You're welcome")  # after the shown leaf
    assert q3.parent_id == a2.pk


def test_regenerate_makes_a_sibling_answer_and_the_model_sees_only_the_shown_path(users, conversation):
    owner = users["owner"]
    _, a1 = exchange(owner, conversation, "Hi", "Hello")
    q2, a2 = exchange(owner, conversation, "Name a colour", "red")
    again = services.regenerate(owner, a2)
    assert again.parent_id == q2.pk and again.status == MessageStatus.STREAMING
    assert [m.pk for m in services.siblings(again)] == [a2.pk, again.pk]
    assert services.current_leaf(conversation).pk == again.pk
    body = services.chat_body(again)
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name a colour"}]
    assert body["model"] == conversation.deployment.served_name and body["max_tokens"] == 16
    with pytest.raises(services.RefusedInput, match="still being written"):
        services.send(owner, conversation, content="next")  # one answer at a time


def test_a_follow_up_goes_after_a_finished_answer_only(users, conversation):
    owner = users["owner"]
    q1, a1 = exchange(owner, conversation, "one", "1")
    with pytest.raises(services.RefusedInput) as refused:
        services.send(owner, conversation, content="two", parent=q1)
    assert refused.value.field == "parent_id"
    _, _ = exchange(owner, conversation, "two", "2", parent=a1)
    assert conversation.messages.count() == 4


@pytest.mark.parametrize("content, field", [("", "content"), ("   ", "content"), ("x" * 32_001, "content"),
                                            ("a\x00b", "content")])
def test_a_bad_message_is_refused_naming_the_field_and_stores_nothing(users, conversation, content, field):
    with pytest.raises(services.RefusedInput) as refused:
        services.send(users["owner"], conversation, content=content)
    assert refused.value.field == field and not conversation.messages.exists()


@pytest.mark.parametrize("kwargs, field", [
    ({"settings": {"temperature": 3}}, "settings.temperature"),
    ({"settings": {"max_tokens": 0}}, "settings.max_tokens"),
    ({"settings": {"seed": 1}}, "settings.seed"),
    ({"tools": ["shell"]}, "tools[0]"),
    ({"protocol": "json"}, "protocol"),
    ({"title": "t" * 201}, "title"),
])
def test_bad_conversation_settings_are_refused_naming_the_field(users, deployment, kwargs, field):
    with pytest.raises(services.RefusedInput) as refused:
        services.create_conversation(users["owner"], deployment=deployment, **kwargs)
    assert refused.value.field == field and not Conversation.objects.exists()


def test_a_teammate_reads_but_cannot_change_and_an_outsider_cannot_even_find_it(users, conversation):
    from django.http import Http404

    exchange(users["owner"], conversation, "hi", "hello")
    assert services.get_conversation(users["teammate"], conversation.pk) == conversation
    for act in (lambda u: services.send(u, conversation, content="mine now"),
                lambda u: services.update_conversation(u, conversation, title="pwned"),
                lambda u: services.delete_conversation(u, conversation)):
        with pytest.raises(services.PermissionDenied):
            act(users["teammate"])
    with pytest.raises(Http404):
        services.get_conversation(users["outsider"], conversation.pk)
    with pytest.raises(Http404):  # nor start one on the owner's deployment
        services.create_conversation(users["outsider"], deployment=conversation.deployment)
    conversation.refresh_from_db()
    assert conversation.title == "hi" and conversation.messages.count() == 2


def test_the_json_export_keeps_the_whole_tree_and_the_markdown_the_shown_path(users, conversation):
    owner = users["owner"]
    q1, a1 = exchange(owner, conversation, "What is **2+2**?", "It is `4`.")
    stopped = services.regenerate(owner, a1)
    answer(stopped, "It is", MessageStatus.STOPPED)
    data = exports.export_json(conversation)
    json.dumps(data)  # serialisable as is
    assert data["conversation"]["system_prompt"] == "Be brief." and data["conversation"]["deployment"] == "owner/tiny-chat"
    assert [(m["id"], m["parent_id"], m["status"]) for m in data["messages"]] == [
        (q1.pk, None, "done"), (a1.pk, q1.pk, "done"), (stopped.pk, q1.pk, "stopped")]
    assert data["messages"][1]["model_version"] == str(conversation.deployment.version)

    text = exports.export_markdown(conversation)
    assert text.startswith("# What is **2+2**?\n")
    assert "> What is **2+2**?" in text and "Be brief." in text
    assert "It is\n" in text and "(stopped" in text and "It is `4`." not in text  # only the shown branch


def test_feedback_becomes_canonical_preference_and_sft_records_with_lineage(users, conversation, settings):
    from apps.datasets.models import DatasetRequest, DatasetUpload

    owner = users["owner"]
    q1, good = exchange(owner, conversation, "Capital of France?", "Paris")
    bad = answer(services.regenerate(owner, good), "Lyon")
    services.give_feedback(owner, good, rating=1)
    services.give_feedback(owner, bad, rating=-1)
    _, also = exchange(owner, conversation, "And of Italy?", "Rome", parent=good)
    services.give_feedback(owner, also, rating=1)
    other = services.create_conversation(owner, deployment=conversation.deployment)
    _, first = exchange(owner, other, "2+2?", "4")
    second = answer(services.regenerate(owner, first), "5")
    services.prefer(owner, first, second)

    job = exports.export_feedback(owner, kind="preference", dataset_name="flywheel")
    request = DatasetRequest.objects.select_related("upload", "dataset").get(job=job)
    assert (job.kind, request.source, request.dataset.name, request.upload.format) == (
        "dataset_import", "feedback", "flywheel", "preference")
    assert request.upload.filename.startswith(f"playground preference feedback from conversations {conversation.pk}, {other.pk}")
    records = [json.loads(line) for line in request.upload.path.read_text().splitlines()]
    system = {"role": "system", "content": "Be brief."}
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records} == {("4", "5"), ("Paris", "Lyon")}
    paris = next(r for r in records if r["chosen"][0]["content"] == "Paris")
    assert paris["prompt"] == [system, {"role": "user", "content": "Capital of France?"}]
    assert paris["chosen"] == [{"role": "assistant", "content": "Paris"}]
    assert set(job.playground_export.conversations.all()) == {conversation, other}

    sft = exports.export_feedback(owner, kind="sft", conversation_ids=[conversation.pk], dataset_name="flywheel")
    upload = DatasetUpload.objects.get(pk=DatasetRequest.objects.get(job=sft).upload_id)
    chats = [json.loads(line)["messages"] for line in upload.path.read_text().splitlines()]
    assert chats == [[system, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
                     [system, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"},
                      {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome"}]]
    assert upload.dataset_id == request.dataset_id  # a new version of the same dataset


def test_a_feedback_export_without_feedback_or_of_a_teammates_conversation_is_refused(users, conversation):
    with pytest.raises(services.RefusedInput) as refused:
        exports.export_feedback(users["owner"], kind="sft", dataset_name="empty")
    assert refused.value.field == "conversation_ids"
    with pytest.raises(services.RefusedInput) as refused:
        exports.export_feedback(users["teammate"], kind="sft", conversation_ids=[conversation.pk], dataset_name="x")
    assert refused.value.field == "conversation_ids"
    with pytest.raises(services.RefusedInput) as refused:
        exports.export_feedback(users["owner"], kind="dpo", dataset_name="x")
    assert refused.value.field == "kind"


@pytest.mark.slow  # the dataset import job runs in this process (~15 s: it loads the data libraries)
@pytest.mark.django_db(transaction=True)
def test_the_feedback_import_job_registers_a_feedback_version_naming_the_conversations(users, deployment):
    from workers.tasks import datasets

    owner = users["owner"]
    conversation = services.create_conversation(owner, deployment=deployment)
    # no stream here: the messages are written as a finished stream stores them
    asked = Message.objects.create(conversation=conversation, role="user", content="Say hi")
    reply = Message.objects.create(conversation=conversation, parent=asked, role="assistant", content="Hi!",
                                   deployment=deployment)
    services.give_feedback(owner, reply, rating=1)
    job = exports.export_feedback(owner, kind="sft", dataset_name="hi-set")
    datasets.dataset_import.run(job.pk)
    job.refresh_from_db()
    assert job.status == "SUCCEEDED", job.error
    version = job.produced_dataset
    assert (version.source, version.canonical, version.rows) == ("feedback", "chat", 1)
    assert f"conversations {conversation.pk}" in version.source_detail
    row = json.loads(version.path.read_text().splitlines()[0])
    assert row["messages"][-1] == {"role": "assistant", "content": "Hi!"}


def test_feedback_and_preferences_are_the_owners_and_only_on_finished_answers(users, conversation):
    owner = users["owner"]
    _, a1 = exchange(owner, conversation, "hi", "hello")
    pending = services.regenerate(owner, a1)
    with pytest.raises(services.RefusedInput, match="finished"):
        services.give_feedback(owner, pending, rating=1)
    with pytest.raises(services.PermissionDenied):
        services.give_feedback(users["teammate"], a1, rating=-1)
    with pytest.raises(services.RefusedInput) as refused:
        services.give_feedback(owner, a1, rating=5)
    assert refused.value.field == "rating"
    services.give_feedback(owner, a1, rating=1)
    services.give_feedback(owner, a1, rating=0)  # taken back
    assert not a1.feedback.exists()
    _, b1 = exchange(users["owner"], services.create_conversation(owner, deployment=conversation.deployment), "x", "y")
    with pytest.raises(services.RefusedInput) as refused:
        services.prefer(owner, a1, b1)  # not two answers to the same message
    assert refused.value.field == "worse_id"


def test_a_side_by_side_asks_every_deployment_in_its_own_column(users, deployment, make_deployment):
    owner = users["owner"]
    other = make_deployment(owner, name="other", model="other")
    comparison = services.side_by_side(owner, deployments=[deployment, other], content="Hi both")
    conversation = comparison.conversation
    replies = list(conversation.messages.filter(role="assistant").order_by("column"))
    assert [(m.column, m.deployment_id, m.status) for m in replies] == [(0, deployment.pk, "streaming"),
                                                                      (1, other.pk, "streaming")]
    for message, text in zip(replies, ("one", "two")):
        answer(message, text)
    asked, follow = services.send(owner, conversation, content="Again")  # a follow-up goes to every column
    assert [m.column for m in follow] == [0, 1] and [m.parent_id for m in asked] == [r.pk for r in replies]
    services.prefer(owner, replies[1], replies[0])  # columns can be compared
    with pytest.raises(services.RefusedInput) as refused:
        services.side_by_side(owner, deployments=[deployment], content="x")
    assert refused.value.field == "deployments"


def test_the_protocol_auto_is_native_when_the_chat_template_renders_tools(users, make_deployment):
    owner = users["owner"]
    with_tools = make_deployment(owner, "tools", "m1", template="{% if tools %}{{ tools }}{% endif %}{{ messages }}")
    plain = make_deployment(owner, "plain", "m2", template="{{ messages }}")
    for deployment, expected in ((with_tools, "native"), (plain, "react")):
        conversation = services.create_conversation(owner, deployment=deployment, tools=["calculator"])
        assert services.resolve_protocol(conversation, deployment, deployment.version) == expected
    conversation.protocol = "native"
    assert services.resolve_protocol(conversation, plain, plain.version) == "native"


def test_an_agent_turn_is_queued_on_the_agent_queue_with_the_history(users, deployment):
    owner = users["owner"]
    conversation = services.create_conversation(owner, deployment=deployment, tools=["calculator"], protocol="native",
                                                system_prompt="Use tools.")
    (asked,), (reply,) = services.send(owner, conversation, content="What is 12*34?")
    job = reply.job
    assert (job.kind, job.queue, job.owner) == ("agent_turn", "agent", owner)
    assert job.params["messages"] == [{"role": "system", "content": "Use tools."},
                                      {"role": "user", "content": "What is 12*34?"}]
    assert (job.params["tools"], job.params["protocol"], job.params["deployment_id"]) == (["calculator"], "native",
                                                                                          deployment.pk)


def test_document_search_needs_a_document_and_documents_are_stored_by_a_uuid(users, deployment, settings):
    owner = users["owner"]
    conversation = services.create_conversation(owner, deployment=deployment, tools=["document_search"])
    with pytest.raises(services.RefusedInput, match="document search needs a document"):
        services.send(owner, conversation, content="What does the file say?")
    assert not conversation.messages.exists()
    for name, body, reason in (("notes.exe", b"MZ", "attach a"), ("fake.pdf", b"hello", "not a PDF"),
                               ("bin.txt", b"\xff\xfe\x00bad" * 10, "not UTF-8"), ("big.md", b"x" * 2048, "the limit")):
        settings.PLAYGROUND_MAX_DOCUMENT_BYTES = 1024
        with pytest.raises(services.RefusedInput, match=reason):
            services.attach_document(owner, conversation, SimpleUploadedFile(name, body))
    document = services.attach_document(owner, conversation, SimpleUploadedFile("../../etc/notes.md", b"# Notes\nThe key is 42."))
    assert document.name == "notes.md" and document.kind == "md" and document.path.parent == settings.UPLOAD_DIR
    assert document.path.read_bytes() == b"# Notes\nThe key is 42." and "notes" not in document.stored_name
    (_,), (reply,) = services.send(owner, conversation, content="What is the key?")
    assert reply.job.params["documents"] == [str(document.path)] and reply.job.params["document_names"] == ["notes.md"]
    with pytest.raises(services.PermissionDenied):
        services.delete_document(users["teammate"], document)


def test_http_tools_must_call_an_allowlisted_host_and_pass_the_cores_checks(users, settings):
    owner = users["owner"]
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    settings.PLAYGROUND_HTTP_ALLOWLIST = []
    with pytest.raises(services.RefusedInput, match="no host is allowlisted"):
        services.create_http_tool(owner, name="weather", url_template="https://api.example.org/w?city={city}",
                                  parameters_schema=schema)
    settings.PLAYGROUND_HTTP_ALLOWLIST = ["api.example.org"]
    for url, field in (("https://evil.example/w?city={city}", "url_template"),
                       ("https://api.example.org/w?city={town}", "url_template"),
                       ("ftp://api.example.org/w", "url_template")):
        with pytest.raises(services.RefusedInput) as refused:
            services.create_http_tool(owner, name="weather", url_template=url, parameters_schema=schema)
        assert refused.value.field == field, url
    with pytest.raises(services.RefusedInput) as refused:
        services.create_http_tool(owner, name="calculator", url_template="https://api.example.org/")
    assert refused.value.field == "name"
    tool = services.create_http_tool(owner, name="weather", description="Weather by city",
                                     url_template="https://api.example.org/w?city={city}", parameters_schema=schema)
    assert tool.definition()["url"] == "https://api.example.org/w?city={city}"


def test_a_used_up_playground_quota_refuses_the_next_answer_and_usage_counts_on_the_playground_key(users, conversation):
    owner = users["owner"]
    key = services.playground_key(owner)
    assert key.name == "Studio playground" and services.playground_key(owner) == key  # one kept key
    services.record_usage(owner, conversation.deployment_id, {"prompt_tokens": 10, "completion_tokens": 5})
    day = UsageDay.objects.get(key=key)
    assert (day.requests, day.prompt_tokens, day.completion_tokens) == (1, 10, 5)
    key.token_quota_per_day = 15
    key.save()
    with pytest.raises(services.QuotaExceeded, match="15 playground tokens"):
        services.send(owner, conversation, content="one more")
    assert not conversation.messages.exists()


def test_answers_still_running_count_against_the_playground_quota(users, conversation):
    """The quota reads the gateway's running counter of the key (what the database recorded plus
    what requests in flight reserved) when there is one."""
    owner = users["owner"]
    key = services.playground_key(owner)
    key.token_quota_per_day = 15
    key.save()
    counter = gateway.quota_key(key.key_hash[:24], timezone.now().date().isoformat())
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(counter, 15, ex=60)  # reserved by answers still running: nothing recorded yet
    try:
        with pytest.raises(services.QuotaExceeded, match="15 playground tokens"):
            services.send(owner, conversation, content="one more")
    finally:
        client.delete(counter)
    assert not UsageDay.objects.exists() and not conversation.messages.exists()


def test_the_built_in_tool_names_are_the_agent_cores():
    from workers.core.agents.tools import BUILTIN_TOOLS

    assert services.BUILTIN_TOOLS == tuple(BUILTIN_TOOLS)
