"""The pre-flight memory estimate (workers/core/training/preflight.py) against the peak memory a
training run really reaches: peak RSS minus the RSS after imports, in a fresh process, the spec run
through the training path with the product's defaults (tests/core/training/peak_memory.py). The
estimate must stay within 30% of it, above or below: too low lets a job start that the worker
cannot hold, too high refuses one it could."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.core.training.conftest import spec_params
from tests.core.training.peak_memory import measure
from workers.core.training.preflight import preflight

CPU = {"kind": "cpu", "name": "cpu", "memory_bytes": 64 * 2**30}  # room for every case: only the estimate is read
BENCH_SMOLLM2 = Path("/tmp/puyu-bench/smollm2")  # bench/serving.py's converted copy, reused when present


def estimate_and_peak(params: dict) -> tuple[int, int]:
    report = preflight(params, CPU)
    assert report["ok"], report["errors"]
    return report["memory"]["total"], measure(params, steps=2)["peak_above_imports"]


def assert_within_30_percent(estimate: int, peak: int) -> None:
    assert 0.7 * peak <= estimate <= 1.3 * peak, (
        f"estimated {estimate / 2**20:.0f} MiB, measured {peak / 2**20:.0f} MiB ({estimate / peak:.2f}x)")


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_the_estimate_for_a_tiny_llama_is_within_30_percent_of_its_measured_peak(tmp_path, tiny_base, alpaca_chat,
                                                                                 finetune):
    params = spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)], finetune=finetune)
    assert_within_30_percent(*estimate_and_peak(params))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2 inside pytest's temporary folders (the spec refuses a base model outside the data
    dir, tests/core/conftest.py): bench/serving.py's converted copy linked in when present."""
    folder = tmp_path_factory.mktemp("smollm2") / "smollm2"
    if (BENCH_SMOLLM2 / "config.json").exists():
        shutil.copytree(BENCH_SMOLLM2, folder, copy_function=link_or_copy)
        return folder
    from workers.core.modelstore.gguf import convert_gguf, find_starter_gguf
    from workers.core.reporting import ConsoleReporter

    convert_gguf(find_starter_gguf(), folder, ConsoleReporter())
    return folder


def link_or_copy(source, target) -> None:
    try:
        os.link(source, target)  # 540 MB of weights: no copy where both lie on one file system
    except OSError:
        shutil.copy2(source, target)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_estimate_for_a_lora_of_smollm2_on_tool_dialogues_is_within_30_percent_of_its_measured_peak(
        tmp_path, smollm2):
    """The case of issue #14: SFT LoRA of SmolLM2-135M at 256 tokens, batch 4 (estimated 2.3 GB,
    measured 5.0 GB before the calibration and the chunked loss)."""
    from workers.core.data.generators import tool_use_dialogues, write_jsonl

    data = tmp_path / "tool_use.jsonl"
    write_jsonl(tool_use_dialogues(40, 0), data)
    params = spec_params(tmp_path, base_model_dir=str(smollm2), train_files=[str(data)], finetune="lora",
                         max_length=256, batch_size=4, lora_dropout=0.05, learning_rate=2e-4, eval_fraction=0.0)
    assert_within_30_percent(*estimate_and_peak(params))
