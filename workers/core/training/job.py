"""The `train` job's runner. `run_training` (kinds.py names it) trains in this process, or, for
`num_processes > 1`, launches torchrun (distributed.py), and every rank it starts runs `run_rank`
(`python -m workers.core.training.job <run folder>`). The spec is spec.py's; the training itself is
the recipe for `spec.method` (recipes.py).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from workers.core.reporting import JobCancelled, JobSuspended
from workers.core.specs import build_spec
from workers.core.training import distributed
from workers.core.training.recipes import run_recipe
from workers.core.training.spec import TrainSpec


def run_training(spec: TrainSpec, reporter) -> dict:
    """Train as `spec` says; returns facts of the output folder, final metrics, checkpoints kept,
    the checkpoint resumed from, and (dry runs) the measured speed. Raises JobCancelled when the
    reporter asks to stop (nothing is written to output_dir then)."""
    if spec.num_processes > 1:
        return distributed.launch(spec, reporter)
    return run_recipe(spec, reporter)


def run_rank(run_dir: str) -> int:
    """One torchrun rank: the spec the parent wrote to the run folder, trained with the others;
    rank 0 reports through the run folder's events file and writes result.json (distributed.py)."""
    distributed.die_with_parent()  # torchrun is our parent; it dies with the worker (launch's preexec_fn)
    if not distributed.parent_is_torchrun():  # torchrun died before the line above
        return 1
    run_dir = Path(run_dir)
    params = json.loads((run_dir / distributed.SPEC).read_text())
    params["num_processes"] = 1  # this process is one rank: never launch again
    spec = build_spec(TrainSpec, params)
    rank = int(os.environ.get("RANK", "0"))
    stop, result_file = run_dir / distributed.STOP, run_dir / distributed.RESULT
    reporter_class = distributed.EventReporter if rank == 0 else distributed.NullReporter
    reporter = reporter_class(run_dir / distributed.EVENTS, stop)
    try:
        result = run_recipe(spec, reporter, stop_file=str(stop))
    except JobCancelled:
        result = {"cancelled": True}
    except JobSuspended as exc:
        result = {"suspended": str(exc) or "suspended"}
    except Exception as exc:
        if rank == 0:
            result_file.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    if rank == 0:
        result_file.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_rank(sys.argv[1]))
