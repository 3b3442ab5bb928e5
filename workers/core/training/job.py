"""The `train` core job (placeholder until the training core lands)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSpec:
    method: str = "sft"


def run_training(spec: TrainSpec, reporter) -> dict:
    raise NotImplementedError("training core not built yet")
