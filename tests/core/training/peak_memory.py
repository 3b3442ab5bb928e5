"""Peak memory of a training run as the product runs it, measured in a fresh Python process so that
nothing of another run (or of pytest) is in the figure.

`measure(params)` starts `python -m tests.core.training.peak_memory PARAMS_JSON`. The child imports
the libraries a training job uses (torch, transformers with its Trainer and Llama modules, peft,
accelerate), notes its RSS ("baseline": the libraries, the same for every run), then runs the spec
through the training path itself (`run_recipe`: model loading, data, the Trainer with the spec's
defaults, the loss of loss.py) as a dry run of `steps` optimizer steps, which saves nothing, and
reports the peak RSS (VmHWM) minus the baseline, also as it stood before the first
step (loading can be the peak of a small run). The dry run's own timing comes back as seconds per
step.

Not counted: the pages of library files (shared objects, mostly torch's kernels) that the run maps
for the first time, the growth of RssFile from the baseline. They are shared and the kernel may
drop them at any time, so a job does not need them; and their number depends on how the page
cache holds the files: a freshly installed environment (large folios) mapped 47 MiB for a tiny
LoRA run where one installed weeks earlier mapped 25 MiB, which alone moved the tiny case's peak
from 54 to 79 MiB (2026-12-04). Anonymous memory grew by 27 and 25 MiB in the two.

Used by tests/core/training/test_preflight_calibration.py (the pre-flight estimate against it) and
bench/train_memory.py (LoRA vs full fine-tuning). The spec's paths must lie in the data dir of the
caller's environment (PUYU_DATA_DIR), which the child inherits.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def measure(params: dict, *, steps: int = 3, timeout: float = 1800, env: dict | None = None) -> dict:
    """{"peak_above_imports", "library_pages_mapped", "peak_rss", "baseline_rss" (bytes), "seconds_per_step",
    "gradient_checkpointing"} of `params` (TrainSpec fields) trained for `steps` steps, fresh process."""
    params = {**params, "dry_run_steps": steps}
    done = subprocess.run([sys.executable, "-m", "tests.core.training.peak_memory", json.dumps(params)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed (exit {done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(params: dict) -> dict:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import Trainer  # noqa: F401  (imports accelerate)

    from workers.core.reporting import ConsoleReporter
    from workers.core.specs import build_spec
    from workers.core.training.recipes import DPORecipe, LMRecipe
    from workers.core.training.spec import TrainSpec

    baseline, baseline_files = _status_bytes("VmRSS"), _status_bytes("RssFile")
    spec = build_spec(TrainSpec, params)
    recipe = (DPORecipe if spec.method == "dpo" else LMRecipe)(spec, ConsoleReporter())  # as run_recipe
    try:
        recipe.setup()
        # the model loaded, the data rendered, nothing trained yet
        setup_peak, setup_files = _status_bytes("VmHWM"), _status_bytes("RssFile")
        result = recipe.train()
    finally:
        recipe.cleanup()
    peak, files = _status_bytes("VmHWM"), _status_bytes("RssFile")
    return {"peak_above_imports": peak - baseline - (files - baseline_files),
            "setup_peak_above_imports": setup_peak - baseline - (setup_files - baseline_files),
            "library_pages_mapped": files - baseline_files, "peak_rss": peak, "baseline_rss": baseline,
            "seconds_per_step": result["dry_run"]["seconds_per_step"], "gradient_checkpointing": spec.gradient_checkpointing}


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status: VmRSS the resident set now, VmHWM the high-water RSS of this process's own memory (not
    getrusage's ru_maxrss: Linux carries that over from the parent across vfork + exec, so a child
    of a large pytest process reports the parent's size as its peak); RssFile its file pages."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line: peak memory is measured on Linux only")


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
