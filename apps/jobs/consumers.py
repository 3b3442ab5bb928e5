"""The live job websocket. Refuses anonymous users and anyone who may not see the job; on
connect it joins the job's group first and then sends the state from the database, so nothing
that happens in between is lost (the page drops duplicates by log seq and metric step)."""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.accounts.visibility import visible_to
from apps.jobs.events import group_name
from apps.jobs.models import Job
from apps.jobs.snapshot import job_snapshot

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if not await self._may_see(user):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = group_name(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"event": "snapshot", "data": await self._snapshot()})

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        # The page may ask for a fresh snapshot (e.g. after it noticed a gap).
        if content.get("action") == "snapshot":
            await self.send_json({"event": "snapshot", "data": await self._snapshot()})

    async def job_event(self, message):
        await self.send_json({"event": message["event"], "data": message["data"]})

    @database_sync_to_async
    def _may_see(self, user) -> bool:
        return visible_to(Job.objects.all(), user).filter(pk=self.job_id).exists()

    @database_sync_to_async
    def _snapshot(self) -> dict:
        return job_snapshot(Job.objects.get(pk=self.job_id))
