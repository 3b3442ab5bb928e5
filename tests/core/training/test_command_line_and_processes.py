"""The command line (`python -m workers.core train spec.yaml`, no Django) and the multi-process
path (torchrun, 2 gloo processes on CPU), plus spec validation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.core.training.conftest import spec_params
from workers.core.reporting import ConsoleReporter, JobCancelled
from workers.core.specs import SpecError, build_spec
from workers.core.training.job import run_training
from workers.core.training.presets import BUILTIN_PRESETS
from workers.core.training.spec import METHODS, TrainSpec

REPO = Path(__file__).resolve().parents[3]


def test_python_m_workers_core_train_spec_yaml_works_without_django(tmp_path, tiny_base, alpaca_chat):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec_params(tmp_path, base_model_dir=str(tiny_base),
                                                    train_files=[str(alpaca_chat)], max_steps=2)))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",  # no DJANGO_SETTINGS_MODULE
           "PUYU_DATA_DIR": os.environ["PUYU_DATA_DIR"]}  # the store the spec's paths lie in (tests/core/conftest.py)
    done = subprocess.run([sys.executable, "-m", "workers.core", "train", str(spec_file)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is only the result (the Trainer's log printer is removed)
    assert result["facts"]["kind"] == "adapter" and result["final_metrics"]["steps"] == 2
    assert "django" not in done.stderr.lower()


def test_every_builtin_preset_is_a_valid_spec_once_paths_are_filled_in_and_keeps_its_fields(tmp_path):
    assert "sft-lora-small" in BUILTIN_PRESETS
    for name, preset in BUILTIN_PRESETS.items():
        data = os.environ["PUYU_DATA_DIR"]
        paths = {"train_files": [f"{data}/datasets/train.jsonl"], "output_dir": f"{data}/models/out",
                 "checkpoint_dir": f"{data}/checkpoints/run"}
        if preset["method"] != "pretrain":
            paths["base_model_dir"] = f"{data}/models/base"
        spec = build_spec(TrainSpec, {**preset, **paths})
        assert isinstance(spec, TrainSpec), name
        assert {field: getattr(spec, field) for field in preset} == preset, name  # nothing dropped or defaulted
        assert spec.method in METHODS and spec.max_steps > 0, name


@pytest.mark.parametrize("overrides, field", [
    ({"method": "rlhf"}, "method"),
    ({"method": "dpo", "data_format": "text"}, "data_format"),
    ({"base_model_dir": "relative/path"}, "base_model_dir"),
    ({"train_files": []}, "train_files"),
    ({"max_length": 8}, "max_length"),
    ({"sample_every": 5}, "sample_prompts"),
    ({"lora_targets": ["os.system"]}, "lora_targets"),
    ({"finetune": "qlora", "precision": "fp32"}, "precision"),
])
def test_bad_specs_name_their_field(overrides, field):
    data = os.environ["PUYU_DATA_DIR"]
    params = {"base_model_dir": f"{data}/models/m", "train_files": [f"{data}/datasets/d.jsonl"],
              "output_dir": f"{data}/models/o", "checkpoint_dir": f"{data}/checkpoints/c", **overrides}
    with pytest.raises(SpecError) as info:
        build_spec(TrainSpec, params)
    assert info.value.field == field


def test_qlora_on_a_machine_without_cuda_fails_with_a_clear_error(tmp_path, tiny_base, alpaca_chat):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the GPU path is covered by bench/train_gpu.py
    spec = build_spec(TrainSpec, spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                             finetune="qlora"))
    with pytest.raises(SpecError, match="QLoRA needs a CUDA GPU"):
        run_training(spec, ConsoleReporter())


@pytest.mark.slow
def test_two_gloo_processes_via_torchrun_train_and_report(tmp_path, tiny_base, alpaca_chat):
    reporter = ConsoleReporter()
    spec = build_spec(TrainSpec, spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                             max_steps=4, save_every=2, num_processes=2, torch_threads=1))
    result = run_training(spec, reporter)
    assert result["facts"]["kind"] == "adapter"
    assert sorted(s for n, s, _ in reporter.metrics if n == "loss") == [1, 2, 3, 4]
    assert [c["name"] for c in result["checkpoints"]] == ["checkpoint-2", "checkpoint-4"]
    assert any("2 processes" in line for line in reporter.lines)
    ckpt = tmp_path / "ckpt" / "checkpoint-4"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ckpt.iterdir()}  # both ranks' state


@pytest.mark.slow
def test_cancelling_a_multi_process_run_stops_every_rank(tmp_path, tiny_base, alpaca_chat):
    class StopAfterFirstLoss(ConsoleReporter):
        def should_stop(self):
            return any(n == "loss" for n, _, _ in self.metrics)

    reporter = StopAfterFirstLoss()
    spec = build_spec(TrainSpec, spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                             max_steps=200, num_processes=2, torch_threads=1))
    with pytest.raises(JobCancelled):
        run_training(spec, reporter)
    assert not (tmp_path / "out").exists()


def test_the_modules_the_web_process_imports_load_no_torch():
    code = ("import sys; import workers.core.training.spec, workers.core.training.presets, "
            "workers.core.training.preflight, workers.core.training.templates; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
