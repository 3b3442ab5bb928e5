"""The conversation's websocket: ws/playground/conversations/<id>/.

Session users who may see the conversation (others: close 4404; anonymous: 4401). On connect the
socket joins the conversation's group and gets {"event": "snapshot", "conversation", "messages",
"leaf_id", "may_send"}: the shown path (every column's, side by side), partial answers included.
Then every event of the conversation arrives as it happens (replies.py): "message", "delta",
"end"; an agent turn's steps are relayed from its job's live events as {"event": "step",
"message_id", "step"} and its end as "end".

Actions (the owner, or staff; a teammate watching who sends one is closed with 4403):
    {"action": "send", "content", "parent_id"?, "edit_of"?}   a message (a side-by-side or battle
        conversation: to every column) and its answer(s)
    {"action": "regenerate", "message_id"}     another answer beside that one
    {"action": "stop", "message_id"?}          stop that answer (default: every running one)
    {"action": "select", "message_id"}         show the branch through that message
    {"action": "snapshot"}                     the snapshot again (after a gap in "offset")
A refused action answers {"event": "error", "field", "error"} and changes nothing."""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404
from django.utils import translation
from django.utils.translation import gettext

from apps.accounts.language import socket_language
from apps.accounts.visibility import PermissionDenied, can_manage
from apps.jobs.events import group_name as job_group
from apps.jobs.models import FINISHED_STATUSES, Job
from apps.jobs.services import InvalidParams
from apps.playground import services
from apps.playground.models import Message, MessageStatus
from apps.playground.replies import group_name

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
ACTIONS = ("send", "regenerate", "stop", "select", "snapshot")
MAX_FRAME_CHARS = 64_000  # a message is at most 32,000 characters


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.user = self.scope.get("user")
        self.jobs: dict[int, int] = {}  # job id → the answer it writes
        self.ended: set[int] = set()  # agent answers whose end this socket sent (it may come twice)
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        self.may_send = await self._visible()
        if self.may_send is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = group_name(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._send_snapshot()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        for job_id in list(self.jobs):
            await self.channel_layer.group_discard(job_group(job_id), self.channel_name)

    @database_sync_to_async
    def _visible(self) -> bool | None:
        """None: may not see it; else whether the user may act on it."""
        conversation = services.visible_conversations(self.user).filter(pk=self.conversation_id).first()
        return None if conversation is None else can_manage(self.user, conversation)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        # Refusals read in the page's language (the socket's cookie or Accept-Language).
        with translation.override(socket_language(self.scope)):
            if text_data is None or len(text_data) > MAX_FRAME_CHARS:
                await self.send_json({"event": "error", "field": "frame", "error": gettext(
                    "send JSON text of at most %(max)s characters") % {"max": format(MAX_FRAME_CHARS, ",")}})
                return
            try:
                content = await self.decode_json(text_data)
            except ValueError:
                await self.send_json({"event": "error", "field": "frame", "error": gettext("is not JSON")})
                return
            await self.receive_json(content, **kwargs)

    async def receive_json(self, content, **kwargs):
        action = content.get("action") if isinstance(content, dict) else None
        if action not in ACTIONS:
            await self.send_json({"event": "error", "field": "action",
                                  "error": gettext("must be one of %(values)s") % {"values": ", ".join(ACTIONS)}})
            return
        if action == "snapshot":
            await self._send_snapshot()
            return
        if not self.may_send:
            await self.close(code=CLOSE_FORBIDDEN)  # a teammate may watch, not send
            return
        try:
            await database_sync_to_async(getattr(self, f"_do_{action}"))(content)
            if action == "select":
                await self._send_snapshot()
        except InvalidParams as exc:
            await self.send_json({"event": "error", "field": exc.field, "error": exc.reason})
        except Http404:
            await self.send_json({"event": "error", "field": "message_id",
                                  "error": gettext("no such message in this conversation (or the conversation is gone)")})
        except PermissionDenied:
            await self.close(code=CLOSE_FORBIDDEN)

    # -- actions (sync, in a thread) --------------------------------------------------------------
    def _conversation(self):
        return services.get_conversation(self.user, self.conversation_id)

    def _message(self, content: dict, key: str = "message_id", required: bool = True) -> Message | None:
        value = content.get(key)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise services.RefusedInput(key, gettext("must be a message id (an integer)"))
        message = services.visible_messages(self.user).filter(pk=value, conversation_id=self.conversation_id).first()
        if message is None:
            raise Http404
        return message

    def _do_send(self, content: dict) -> None:
        services.send(self.user, self._conversation(), content=content.get("content"),
                      parent=self._message(content, "parent_id", required=False),
                      edit_of=self._message(content, "edit_of", required=False))

    def _do_regenerate(self, content: dict) -> None:
        services.regenerate(self.user, self._message(content))

    def _do_stop(self, content: dict) -> None:
        if content.get("message_id") is not None:
            services.stop_reply(self.user, self._message(content))
            return
        for message in self._conversation().messages.filter(status=MessageStatus.STREAMING):
            services.stop_reply(self.user, message)

    def _do_select(self, content: dict) -> None:
        services.select_branch(self.user, self._conversation(), self._message(content))

    # -- events -----------------------------------------------------------------------------------
    async def _send_snapshot(self) -> None:
        snapshot, running = await self._snapshot()
        await self.send_json(snapshot)
        for job_id, message_id in running:
            await self._follow(job_id, message_id)

    @database_sync_to_async
    def _snapshot(self):
        conversation = self._conversation_for_snapshot()
        services.reconcile_conversation(conversation)
        hide = services.hides_models(conversation)
        shown = services.shown_messages(conversation)
        messages = [services.message_payload(m, hide_models=hide) for m in shown]
        running = [(m.job_id, m.pk) for m in shown if m.job_id and m.status == MessageStatus.STREAMING]
        leaf = services.current_leaf(conversation)
        return {"event": "snapshot", "conversation": {"id": conversation.pk, "kind": conversation.kind,
                                                      "title": conversation.title},
                "messages": messages, "leaf_id": leaf.pk if leaf else None, "may_send": bool(self.may_send)}, running

    def _conversation_for_snapshot(self):
        try:
            return self._conversation()
        except Http404:  # deleted (or the team changed) since connecting
            from apps.playground.models import Conversation

            return Conversation(pk=self.conversation_id, owner=self.user)

    async def playground_events(self, message):
        for event in message["events"]:
            await self._relay(event)

    async def _relay(self, event: dict) -> None:
        if event.get("event") == "end" and event.get("message_id") in self.ended:
            return  # the job's status got here first (_end)
        await self.send_json(event)
        if event.get("event") == "end":
            # An agent turn's end, pushed by the worker that settled it: stop following its job.
            job_id = next((job for job, answer in self.jobs.items() if answer == event.get("message_id")), None)
            if job_id is not None:
                await self._unfollow(job_id)
        elif event.get("event") == "message":
            payload = event["message"]
            if payload.get("job_id") and payload.get("status") == MessageStatus.STREAMING:
                await self._follow(payload["job_id"], payload["id"])

    async def _follow(self, job_id: int, message_id: int) -> None:
        """Relay an agent turn: join its job's group, then catch up on the steps logged so far (the
        page drops a step it already has by its index) and on its end if it came first."""
        if job_id in self.jobs:
            return
        self.jobs[job_id] = message_id
        await self.channel_layer.group_add(job_group(job_id), self.channel_name)
        steps, finished = await self._catch_up(job_id, message_id)
        for step in steps:
            await self.send_json({"event": "step", "message_id": message_id, "step": step})
        if finished:
            await self._end(job_id)

    @database_sync_to_async
    def _catch_up(self, job_id: int, message_id: int):
        job = Job.objects.filter(pk=job_id).first()
        if job is None:
            return [], True
        return services.trace_from_log(job), job.status in FINISHED_STATUSES

    async def job_event(self, message):
        # Job events do not name their job; a conversation runs one answer at a time, so the
        # socket follows at most one running agent turn (an ended one is left at once).
        data = message.get("data") or {}
        if message["event"] == "log":
            step = services.parse_step(data.get("message") or "")
            if step is not None:
                for message_id in list(self.jobs.values()):
                    await self.send_json({"event": "step", "message_id": message_id, "step": step})
        elif message["event"] == "status" and data.get("status") in FINISHED_STATUSES:
            for job_id in list(self.jobs):
                await self._end(job_id)

    async def _end(self, job_id: int) -> None:
        message_id = self.jobs.get(job_id)
        if message_id is None:
            return
        event = await self._finished(message_id)
        if event is None:  # recorded, but this read came first: the job's status will repeat it
            return
        if self.jobs.get(job_id) != message_id:  # its pushed end was sent meanwhile
            return
        await self._unfollow(job_id)
        await self.send_json(event)

    async def _unfollow(self, job_id: int) -> None:
        self.ended.add(self.jobs.pop(job_id))
        await self.channel_layer.group_discard(job_group(job_id), self.channel_name)

    @database_sync_to_async
    def _finished(self, message_id: int) -> dict | None:
        message = Message.objects.select_related("conversation").filter(pk=message_id).first()
        if message is None:
            return {"event": "end", "message_id": message_id, "status": MessageStatus.FAILED, "html": "", "content": "",
                    "usage": {}, "error": "deleted"}
        message = services.reconcile(message)
        if not message.is_finished:
            return None
        return services.end_event(message, hide_models=services.hides_models(message.conversation))
