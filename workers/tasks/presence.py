"""Workers announce themselves: a thread in each worker process upserts its WorkerNode row
every WORKER_HEARTBEAT_SECONDS, so the dashboard shows who is online and with which devices.

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

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection
from django.utils import timezone

log = logging.getLogger(__name__)
_stop = threading.Event()
_node: dict = {}


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


def _beat() -> None:
    from apps.jobs.models import WorkerNode

    now = timezone.now()
    WorkerNode.objects.update_or_create(
        name=_node["name"],
        defaults={"hostname": socket.gethostname(), "queues": _node["queues"], "pid": os.getpid(),
                  "devices": _node["devices"], "last_seen_at": now, "stopped_at": None},
        create_defaults={"hostname": socket.gethostname(), "queues": _node["queues"], "pid": os.getpid(),
                         "devices": _node["devices"], "last_seen_at": now, "started_at": now},
    )


def _loop() -> None:
    try:
        while True:
            try:
                _beat()
            except Exception:
                log.exception("worker heartbeat failed")
            if _stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
                return
    finally:
        connection.close()


@worker_ready.connect
def _on_ready(sender=None, **kwargs) -> None:
    _node.update(
        name=sender.hostname,
        queues=sorted(q.name for q in sender.app.amqp.queues.consume_from.values()),
        devices=detect_devices(),
    )
    threading.Thread(target=_loop, name="worker-presence", daemon=True).start()


@worker_shutdown.connect
def _on_shutdown(**kwargs) -> None:
    _stop.set()
    if not _node:
        return
    try:
        from apps.jobs.models import WorkerNode

        WorkerNode.objects.filter(name=_node["name"]).update(stopped_at=timezone.now())
    except Exception:
        log.exception("could not mark the worker stopped")
