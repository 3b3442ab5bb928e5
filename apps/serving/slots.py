"""Serve slots: how many replicas the online workers of a queue host at once, what holds each
slot, and why a queued replica waits.

A worker's capacity is its pool's size, from its heartbeat (WorkerNode.devices["serve_slots"],
written by workers/tasks/presence.py; a worker from before slots reports none and runs one job at
a time). What holds its slots is counted from the jobs it leases (RUNNING, lease not expired):
the database knows that the moment a replica starts or ends, the heartbeat only at its next beat.
Queued jobs of the queue are taken oldest first, so a queued replica finds a slot only when the
jobs ahead of it leave one free.

Names in a reason: a deployment the viewer may see is "owner/name"; any other is "another user's
deployment" (within a team names are no secret, to an outsider they are)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import reduce
from operator import or_

from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_noop

from apps.accounts.visibility import visible_to
from apps.jobs.models import Job, JobStatus
from apps.serving.models import Deployment, Replica
from apps.studio.labels import queue_label
from apps.training.services import online_workers

ANOTHER_USERS = gettext_noop("another user's deployment")
MAX_NAMES = 6  # named holders in a reason; the rest are counted
MAX_QUEUED = 500  # queued jobs read to place a replica; one further back waits behind all of them


@dataclass(frozen=True)
class Holder:
    """A job that holds (or, queued, will take) a slot."""

    job_id: int
    kind: str
    deployment_id: int | None = None
    served_name: str = ""


@dataclass
class QueueSlots:
    queue: str
    workers: list[str] = field(default_factory=list)  # online workers consuming the queue
    capacity: int = 0
    holders: list[Holder] = field(default_factory=list)  # running on those workers
    queued: list[Holder] = field(default_factory=list)  # queued on the queue, oldest first

    @property
    def used(self) -> int:
        return min(self.capacity, len(self.holders))

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self.holders))

    @property
    def free_for_new(self) -> int:
        """Slots a replica queued now would find: the queued jobs take the free ones first."""
        return max(0, self.free - len(self.queued))

    def summary(self, viewer) -> str:
        """One line for the deploy form: "1 of 3 serve slots free (used by alice/smollm2, a train job)"."""
        if not self.workers:
            return no_worker_reason(self.queue)
        text = gettext("%(free)s of %(capacity)s %(queue)s slots free") % {
            "free": self.free_for_new, "capacity": self.capacity, "queue": queue_label(self.queue)}
        details = [gettext("used by %(holders)s") % {"holders": describe(self.holders, viewer)}] if self.holders else []
        if self.queued:
            details.append(gettext("%(n)s queued") % {"n": len(self.queued)})
        return text + (f" ({'; '.join(details)})" if details else "")

    def as_dict(self, viewer) -> dict:
        visible = names_visible_to(viewer, self.holders)
        return {"queue": self.queue, "workers": len(self.workers), "capacity": self.capacity, "used": self.used,
                "free": self.free_for_new, "queued": len(self.queued),
                "used_by": [name_of(h, visible) for h in self.holders], "summary": self.summary(viewer)}


def worker_capacity(node) -> int:
    slots = (node.devices or {}).get("serve_slots")
    try:
        return max(1, int(slots["capacity"]))
    except (TypeError, KeyError, ValueError):
        return 1


def _holders(jobs) -> list[Holder]:
    rows = []
    for job in jobs:
        replica = getattr(job, "replica", None) if job.kind == "serve" else None
        if replica is not None:
            rows.append(Holder(job.pk, job.kind, replica.deployment_id, replica.deployment.served_name))
        else:
            rows.append(Holder(job.pk, job.kind))
    return rows


def queue_slots(queue: str) -> QueueSlots:
    nodes = online_workers(queue)
    slots = QueueSlots(queue, [n.name for n in nodes], sum(worker_capacity(n) for n in nodes))
    jobs = Job.objects.select_related("replica__deployment__owner")
    if nodes:
        # lease_owner is "<node name>:<pid>" (the pid of a prefork child differs from the node's)
        leased = reduce(or_, (Q(lease_owner__startswith=f"{n.name}:") for n in nodes))
        running = jobs.filter(leased, status=JobStatus.RUNNING, lease_expires_at__gte=timezone.now())
        slots.holders = _holders(running.order_by("started_at", "id"))
    slots.queued = _holders(jobs.filter(queue=queue, status=JobStatus.QUEUED).order_by("created_at", "id")[:MAX_QUEUED])
    return slots


def names_visible_to(viewer, holders) -> set[int]:
    """The ids of the holders' deployments the viewer may see."""
    ids = {h.deployment_id for h in holders if h.deployment_id}
    if not ids or viewer is None:
        return set()
    return set(visible_to(Deployment.objects.filter(pk__in=ids), viewer).values_list("pk", flat=True))


def name_of(holder: Holder, visible: set[int]) -> str:
    if holder.deployment_id is None:
        return gettext("a %(kind)s job") % {"kind": holder.kind}
    return holder.served_name if holder.deployment_id in visible else gettext(ANOTHER_USERS)


def describe(holders, viewer) -> str:
    """"alice/smollm2 ×2, another user's deployment, a train job" (in slot order, at most MAX_NAMES)."""
    visible = names_visible_to(viewer, holders)
    counts = Counter(name_of(h, visible) for h in holders)
    parts = [name if n == 1 else f"{name} ×{n}" for name, n in counts.items()]
    if len(parts) > MAX_NAMES:
        parts = parts[:MAX_NAMES] + [gettext("%(n)s more") % {"n": len(parts) - MAX_NAMES}]
    return ", ".join(parts)


def no_worker_reason(queue: str) -> str:
    return gettext("no %(queue)s worker is running: start the studio with `make run`, or a worker for queue %(queue)s") % {
        "queue": queue_label(queue)}


def waiting_reason(replica: Replica, viewer, slots: QueueSlots | None = None) -> str:
    """Why a queued replica has not started ("" when it is not waiting, or a slot is free for it)."""
    job = replica.job
    if job.status != JobStatus.QUEUED:
        return ""
    slots = slots or queue_slots(job.queue)
    if not slots.workers:
        return no_worker_reason(slots.queue)
    position = next((i for i, h in enumerate(slots.queued) if h.job_id == job.pk), len(slots.queued))
    if position < slots.free:
        return ""  # a worker takes it now
    # The free slots go to the jobs queued before it.
    taking = slots.holders + slots.queued[:slots.free]
    behind = position - slots.free
    reason = gettext("waiting for a free %(queue)s slot: %(used)s of %(capacity)s used by %(holders)s") % {
        "queue": queue_label(slots.queue), "used": min(len(taking), slots.capacity), "capacity": slots.capacity,
        "holders": describe(taking, viewer)}
    if behind:
        reason += gettext("; %(n)s more queued before it") % {"n": behind}
    return reason + gettext("; stop one or add a worker")


def replica_reasons(replicas, viewer, cache: dict | None = None) -> dict[str, str]:
    """replica_id → its waiting reason, for the queued ones (one slot count per queue)."""
    cache = {} if cache is None else cache
    reasons = {}
    for replica in replicas:
        if replica.job.status != JobStatus.QUEUED:
            continue
        queue = replica.job.queue
        if queue not in cache:
            cache[queue] = queue_slots(queue)
        reason = waiting_reason(replica, viewer, cache[queue])
        if reason:
            reasons[replica.replica_id] = reason
    return reasons


def active_replicas(deployment: Deployment):
    return list(deployment.replica_set.select_related("job").exclude(state__in=("stopped", "failed")))


def deployment_reason(deployment: Deployment, viewer, cache: dict | None = None) -> str:
    """Why the deployment's replicas wait: the first waiting replica's reason ("" when none waits)."""
    reasons = replica_reasons(active_replicas(deployment), viewer, cache)
    return next(iter(reasons.values()), "")
