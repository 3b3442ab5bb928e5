"""The `serve` core job (placeholder until the inference core lands)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReplicaSpec:
    deployment_id: int = 0


def run_replica(spec: ReplicaSpec, reporter) -> dict:
    raise NotImplementedError("inference core not built yet")
