"""The same token stream over a websocket, for the playground: ws/deployments/<id>/chat/.

Session users only, and only for deployments they may see (like the job websocket). Send
{"messages": [...], "max_tokens": …, "temperature": …, "tools": …}; receive {"event": "start"},
{"event": "delta", "text"}, then {"event": "end", "text", "finish_reason", "tool_calls", "usage"}
or {"event": "error", "status", "error": {OpenAI error}}. {"action": "cancel"} stops the answer;
closing the socket cancels it too. One request at a time per socket."""
from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext

from apps.accounts.language import socket_language
from apps.serving import access
from apps.serving.openai_format import ApiError, finish_reason, parse_request
from apps.serving.openai_views import open_exchange

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class DeploymentChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.user = self.scope.get("user")
        self.task = None
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.deployment_id = int(self.scope["url_route"]["kwargs"]["deployment_id"])
        if not await database_sync_to_async(self._may_see)():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()

    def _may_see(self) -> bool:
        return access.visible_deployments(self.user).filter(pk=self.deployment_id).exists()

    async def disconnect(self, code):
        if self.task is not None and not self.task.done():
            self.task.cancel()  # _answer cancels the request at the replica; wait until it has
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def receive_json(self, content, **kwargs):
        if content.get("action") == "cancel":
            if self.task is not None:
                self.task.cancel()
            return
        # Errors read in the page's language (the socket's cookie or Accept-Language); the answer's
        # task starts with the language active, as a copy of this context.
        with translation.override(socket_language(self.scope)):
            if self.task is not None and not self.task.done():
                await self.send_json({"event": "error", "status": 409, "error": {
                    "message": gettext("one request at a time on a socket: wait for its end or send "
                                       "{\"action\": \"cancel\"}"),
                    "type": "invalid_request_error", "param": None, "code": "busy"}})
                return
            self.task = asyncio.create_task(self._answer(content))

    async def _answer(self, content: dict) -> None:
        exchange = None
        try:
            caller, target = await sync_to_async(access.admit_session)(self.user, self.deployment_id)
            body = {**{k: v for k, v in content.items() if k != "action"}, "model": target.served_name, "stream": True}
            spec = parse_request(body, "chat", settings.SERVING_DEFAULT_MAX_TOKENS)
            exchange = await open_exchange("chat", spec, caller, target)
            event = await exchange.until_start()
            await self.send_json({"event": "start"})
            while event.get("type") != "end":
                event = await exchange.next()
                if event.get("type") == "delta" and event.get("text"):
                    await self.send_json({"event": "delta", "text": event["text"]})
            await self.send_json({"event": "end", "text": event.get("text") or "", "finish_reason": finish_reason(event),
                                  "tool_calls": event.get("tool_calls"), "usage": event.get("usage")})
        except ApiError as exc:
            await self.send_json({"event": "error", "status": exc.status, **exc.body()})
        except asyncio.CancelledError:
            if exchange is not None:
                await asyncio.shield(exchange.abort())
            raise
