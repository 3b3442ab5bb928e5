"""Workers announce themselves: a thread in each worker process upserts its WorkerNode row
every WORKER_HEARTBEAT_SECONDS, so the dashboard shows who is online and with which devices.

Each worker also reports its serve slots, `devices["serve_slots"]`: {"capacity": the pool's
concurrency (the replicas it can host at once), "used": [{"job", "deployment", "replica"} of each
replica running in this process]}. Only ids: the row is readable by every signed-in user, and the
studio names deployments to a viewer only when the viewer may see them (apps/serving/slots.py,
which counts a worker's used slots from the jobs it leases: those are known at once, the
heartbeat only at its next beat, and a prefork pool's children do not share this registry).
A slot taken or freed wakes the heartbeat, so the row follows within moments.

Runs in the Celery parent process, which must never import torch or initialise CUDA (children
forked after that hang in OpenMP): GPUs are read with nvidia-smi, not torch.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
from contextlib import contextmanager

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection
from django.utils import timezone

log = logging.getLogger(__name__)
_stop = threading.Event()
_wake = threading.Event()  # beat now: stopping, or a slot was taken or freed
_node: dict = {}
_slots_lock = threading.Lock()
_slots: dict[int, dict] = {}  # job id → what holds the slot


def detect_devices() -> dict:
    import psutil

    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            for line in out.strip().splitlines():
                index, name, mem_mib = (part.strip() for part in line.split(","))
                gpus.append({"index": int(index), "name": name, "memory_gb": round(int(mem_mib) / 1024, 1)})
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            log.warning("nvidia-smi failed: %s", exc)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and gpus:
        wanted = {int(i) for i in visible.split(",") if i.strip().isdigit()}
        gpus = [g for g in gpus if g["index"] in wanted]
    return {
        "cpu_cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "torch_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def slot_capacity() -> int:
    """Replicas this worker process hosts at once (its pool's concurrency; 1 before it is ready)."""
    return int(_node.get("capacity") or 1)


@contextmanager
def holding_slot(job_id: int, deployment_id: int, replica_id: str):
    """Mark one of this worker's serve slots used by a replica for the block's duration."""
    with _slots_lock:
        _slots[job_id] = {"job": job_id, "deployment": deployment_id, "replica": replica_id}
    _wake.set()
    try:
        yield
    finally:
        with _slots_lock:
            _slots.pop(job_id, None)
        _wake.set()


def slot_report() -> dict:
    with _slots_lock:
        used = [dict(_slots[job_id]) for job_id in sorted(_slots)]
    return {"capacity": slot_capacity(), "used": used}


def _beat() -> None:
    from apps.jobs.models import WorkerNode

    now = timezone.now()
    devices = {**_node["devices"], "serve_slots": slot_report()}
    WorkerNode.objects.update_or_create(
        name=_node["name"],
        defaults={"hostname": socket.gethostname(), "queues": _node["queues"], "pid": os.getpid(),
                  "devices": devices, "last_seen_at": now, "stopped_at": None},
        create_defaults={"hostname": socket.gethostname(), "queues": _node["queues"], "pid": os.getpid(),
                         "devices": devices, "last_seen_at": now, "started_at": now},
    )


def _loop() -> None:
    try:
        while not _stop.is_set():
            _wake.clear()
            try:
                _beat()
            except Exception:
                log.exception("worker heartbeat failed")
            _wake.wait(settings.WORKER_HEARTBEAT_SECONDS)
    finally:
        connection.close()


@worker_ready.connect
def _on_ready(sender=None, **kwargs) -> None:
    _node.update(
        name=sender.hostname,
        queues=sorted(q.name for q in sender.app.amqp.queues.consume_from.values()),
        devices=detect_devices(),
        # The pool's size: a threads pool of N runs N replica tasks at once (-c N), solo one.
        capacity=getattr(getattr(sender, "controller", None), "concurrency", None) or 1,
    )
    threading.Thread(target=_loop, name="worker-presence", daemon=True).start()


@worker_shutdown.connect
def _on_shutdown(**kwargs) -> None:
    _stop.set()
    _wake.set()
    if not _node:
        return
    try:
        from apps.jobs.models import WorkerNode

        WorkerNode.objects.filter(name=_node["name"]).update(stopped_at=timezone.now())
    except Exception:
        log.exception("could not mark the worker stopped")
