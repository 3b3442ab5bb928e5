"""Conversations (trees of messages), their documents and HTTP tools, feedback, side-by-side
comparisons and blind battles. Files live under UPLOAD_DIR by a uuid name, never the user's."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class ConversationKind(models.TextChoices):
    CHAT = "chat", _("Chat")
    COMPARISON = "comparison", _("Side-by-side")
    BATTLE = "battle", _("Arena battle")


class Protocol(models.TextChoices):
    AUTO = "auto", "auto"
    NATIVE = "native", "native"
    REACT = "react", "ReAct"


class HttpTool(models.Model):
    """An HTTP endpoint a user describes for the agent (workers/core/agents/tools/http.py)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_http_tools")
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    method = models.CharField(max_length=6, default="GET")
    url_template = models.CharField(max_length=500)
    parameters = models.JSONField(default=dict, help_text="the JSON schema of the arguments")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_http_tool_name_per_owner")]

    def __str__(self) -> str:
        return self.name

    def definition(self) -> dict:
        """The agent core's HTTP tool definition."""
        return {"name": self.name, "description": self.description, "method": self.method, "url": self.url_template,
                "parameters": self.parameters}


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    kind = models.CharField(max_length=12, choices=ConversationKind.choices, default=ConversationKind.CHAT, db_index=True)
    # Kept when the deployment is deleted: the conversation stays readable (it cannot answer then).
    deployment = models.ForeignKey("serving.Deployment", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    settings = models.JSONField(default=dict, blank=True, help_text="{temperature, top_p, max_tokens}")
    tools = models.JSONField(default=list, blank=True, help_text="built-in tool names")
    protocol = models.CharField(max_length=10, choices=Protocol.choices, default=Protocol.AUTO)
    http_tools = models.ManyToManyField(HttpTool, blank=True, related_name="conversations")
    # The end of the path the page shows (the branch switcher moves it).
    current_leaf = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def uses_agent(self) -> bool:
        """Replies run as agent turns (a job) when any tool is on."""
        return bool(self.tools) or self.http_tools.exists()


class MessageRole(models.TextChoices):
    USER = "user", _("User")
    ASSISTANT = "assistant", _("Assistant")
    TOOL = "tool", _("Tool")


class MessageStatus(models.TextChoices):
    STREAMING = "streaming", _("Streaming")
    DONE = "done", _("Done")
    STOPPED = "stopped", _("Stopped")
    FAILED = "failed", _("Failed")


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=10, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=MessageStatus.choices, default=MessageStatus.DONE)
    error = models.TextField(blank=True, help_text="why the answer failed or stopped")
    # Which column of a comparison or battle (None in a plain chat), and who answered in it.
    column = models.PositiveSmallIntegerField(null=True, blank=True)
    deployment = models.ForeignKey("serving.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+", help_text="the version the deployment served when the answer was asked")
    usage = models.JSONField(default=dict, blank=True)
    trace = models.JSONField(default=list, blank=True, help_text="the agent's steps (workers/core/agents/loop.py)")
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="playground_messages")
    request_id = models.CharField(max_length=40, blank=True, help_text="the engine request while it streams (to stop it)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role} message {self.pk}"

    @property
    def owner_id(self):
        return self.conversation.owner_id

    @property
    def is_finished(self) -> bool:
        return self.status != MessageStatus.STREAMING


class Document(models.Model):
    """A file attached to a conversation for the document search tool."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="documents")
    name = models.CharField(max_length=200)
    stored_name = models.CharField(max_length=80)  # a uuid under UPLOAD_DIR
    size = models.BigIntegerField()
    kind = models.CharField(max_length=4, help_text="txt, md or pdf")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self):
        return settings.UPLOAD_DIR / self.stored_name


class Feedback(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_feedback")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    rating = models.SmallIntegerField(help_text="+1 or -1")
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "message"], name="unique_feedback_per_message")]


class Preference(models.Model):
    """"This one is better": two answers to the same prompt (siblings)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_preferences")
    better = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="preferred_over")
    worse = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="beaten_by")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["user", "better", "worse"], name="unique_preference")]


class Comparison(models.Model):
    """Side-by-side: one message to 2–4 deployments; its conversation holds one column each."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_comparisons")
    conversation = models.OneToOneField(Conversation, on_delete=models.CASCADE, related_name="comparison")
    deployments = models.JSONField(default=list, help_text="deployment ids, one per column")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class Battle(models.Model):
    """Two anonymous deployments (different model versions) answer one prompt; the names are
    revealed after the vote, which becomes an ArenaVote."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_battles")
    conversation = models.OneToOneField(Conversation, on_delete=models.CASCADE, related_name="battle")
    prompt = models.TextField()
    deployment_a = models.ForeignKey("serving.Deployment", null=True, on_delete=models.SET_NULL, related_name="+")
    deployment_b = models.ForeignKey("serving.Deployment", null=True, on_delete=models.SET_NULL, related_name="+")
    version_a = models.ForeignKey("registry.ModelVersion", null=True, on_delete=models.SET_NULL, related_name="+")
    version_b = models.ForeignKey("registry.ModelVersion", null=True, on_delete=models.SET_NULL, related_name="+")
    outcome = models.CharField(max_length=10, blank=True, help_text="a, b, tie or both_bad once voted")
    revealed = models.BooleanField(default=False)
    vote = models.ForeignKey("leaderboards.ArenaVote", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    voted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    @property
    def owner_id(self):
        return self.user_id


class FeedbackExport(models.Model):
    """Lineage of a dataset version made from feedback: the job that imports it and the
    conversations it came from."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="playground_export")
    kind = models.CharField(max_length=12, help_text="preference or sft")
    records = models.PositiveIntegerField()
    conversations = models.ManyToManyField(Conversation, related_name="feedback_exports")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
