"""Atomic checkpoints, exact resume after SIGKILL, keep-last-K and cancel."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.core.training.conftest import spec_params
from workers.core.kinds import run_core_job
from workers.core.reporting import ConsoleReporter, JobCancelled
from workers.core.training import checkpoints

REPO = Path(__file__).resolve().parents[3]

KILLER = textwrap.dedent("""
    import json, os, signal, sys
    from workers.core.kinds import run_core_job
    from workers.core.reporting import ConsoleReporter

    class KillAt(ConsoleReporter):
        def metric(self, name, step, value):
            super().metric(name, step, value)
            if name == "loss" and step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)  # the worker dies, mid-run, without cleanup

    run_core_job("train", json.loads(open(sys.argv[1]).read()), KillAt())
""")


def losses(reporter) -> dict[int, float]:
    return {step: value for name, step, value in reporter.metrics if name == "loss"}


@pytest.mark.parametrize("packing", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_resume_after_sigkill_reproduces_every_later_loss(tmp_path, tiny_base, alpaca_chat, packing):
    common = dict(base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)], max_steps=10, save_every=4,
                  lora_dropout=0.1, packing=packing)  # dropout: the RNG state must be restored too
    reference = ConsoleReporter()
    run_core_job("train", spec_params(tmp_path / "ref", **common), reference)

    params = spec_params(tmp_path / "run", **common)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(params))
    killed = subprocess.run([sys.executable, "-c", KILLER, str(spec_file), "6"], cwd=REPO, capture_output=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert checkpoints.latest_checkpoint(tmp_path / "run" / "ckpt")["step"] == 4
    assert not (tmp_path / "run" / "out").exists()

    resumed = ConsoleReporter()
    result = run_core_job("train", params, resumed)
    assert result["resumed_from"].endswith("checkpoint-4")
    later = losses(resumed)
    assert sorted(later) == list(range(5, 11))
    for step, value in later.items():
        assert value == pytest.approx(losses(reference)[step], abs=1e-5), step
    assert result["final_metrics"]["steps"] == 10


def test_a_crash_between_tensors_and_manifest_leaves_the_previous_checkpoint_latest(tmp_path, tiny_base,
                                                                                     alpaca_chat, monkeypatch):
    real = checkpoints.write_manifest

    def crash_at_step_4(folder, step, files):
        if step == 4:
            raise OSError("disk gone")  # the tensors are in place, the manifest never gets written
        real(folder, step, files)

    monkeypatch.setattr(checkpoints, "write_manifest", crash_at_step_4)
    params = spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)], max_steps=6,
                         save_every=2)
    with pytest.raises(OSError):
        run_core_job("train", params, ConsoleReporter())
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert checkpoints.latest_checkpoint(ckpt)["name"] == "checkpoint-2"
    monkeypatch.setattr(checkpoints, "write_manifest", real)
    reporter = ConsoleReporter()
    result = run_core_job("train", params, reporter)
    assert result["resumed_from"].endswith("checkpoint-2")
    assert any("checkpoint-4" in line for line in reporter.lines)  # the partial folder was cleaned up
    assert [c["name"] for c in result["checkpoints"]] == ["checkpoint-4", "checkpoint-6"]


def test_only_the_last_k_complete_checkpoints_are_kept_and_each_has_all_the_state(tmp_path, tiny_base, alpaca_chat):
    result = run_core_job("train", spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                               max_steps=5, save_every=1, keep_checkpoints=2), ConsoleReporter())
    assert [c["name"] for c in result["checkpoints"]] == ["checkpoint-4", "checkpoint-5"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint-4", "checkpoint-5"]
    folder = tmp_path / "ckpt" / "checkpoint-5"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 5 and manifest["complete"] is True
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json"} <= set(manifest["files"])


def test_commit_writes_the_manifest_last_and_ignores_folders_without_one(tmp_path):
    staged = tmp_path / "stage" / "checkpoint-3"
    staged.mkdir(parents=True)
    (staged / "weights.bin").write_bytes(b"x")
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "checkpoint-9").mkdir()  # a crashed save: no manifest
    (root / "checkpoint-9" / "weights.bin").write_bytes(b"half")
    checkpoints.commit_checkpoint(staged, root, 3, keep=2)
    assert checkpoints.latest_checkpoint(root)["step"] == 3
    assert checkpoints.resolve_resume(root, "") == str(root / "checkpoint-3")
    assert checkpoints.clean_incomplete(root) == ["checkpoint-9"]
    from workers.core.specs import SpecError

    with pytest.raises(SpecError, match="resume_from"):
        checkpoints.resolve_resume(root, str(root / "checkpoint-9"))
    assert checkpoints.resolve_resume(root, "none") is None


class StopAfter(ConsoleReporter):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def should_stop(self) -> bool:
        return any(name == "loss" and s >= self.step for name, s, _ in self.metrics)


def test_cancel_stops_within_two_steps_and_writes_no_output(tmp_path, tiny_base, alpaca_chat):
    reporter = StopAfter(2)
    with pytest.raises(JobCancelled):
        run_core_job("train", spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                          max_steps=50), reporter)
    assert max(losses(reporter)) <= 4
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial*"))
