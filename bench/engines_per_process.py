"""Two CPU engines in one process, as a serve worker with several slots hosts them. Run:
.venv/bin/python bench/engines_per_process.py [--rounds 2]

Engine A (the ~30M Llama of bench/serving.py) decodes 4 requests one after another (solo) and 8
at once, alone in the process, then beside a second started engine B that is idle (it served one
request, so it has decoded), then beside B decoding requests in a loop. Printed as tokens/s and as
a ratio against "A alone" of the same round. No target; why it matters: every CPU engine of a
process runs on one compute thread (workers/core/inference/compute_thread.py), because each
thread that runs parallel torch work keeps an OpenMP pool and libgomp throttles every pool once
the process's OpenMP threads outnumber the cores.

Measured 2026-12-05 (2-core AMD EPYC VM, quiet), two rounds each:
  a thread per engine (before): A alone 92.6 / 89.8 solo, 288 / 258 at 8; beside idle B 73.0 /
    71.5 and 220 / 233 (0.79x); beside busy B 48.0 / 46.0 and 148 / 139.
  one compute thread (now): A alone 96.1 / 96.5, 293 / 275; beside idle B 92.5 / 93.2 and
    278 / 290 (0.96x); beside busy B 46.8 / 47.0 and 175 / 181.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import engine_config, llama30m_dir, run_engine, workload  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from workers.core.inference.engine import Engine

    class Defaults:  # bench/serving.py's engine settings
        kv_mib, max_batch_tokens, runner, cpu_linear = 0, 0, "auto", "onednn"

    folder = llama30m_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    one_by_one, together = workload(tokenizer, 4, seed=1, quick=True), workload(tokenizer, 8, seed=8, quick=True)
    first = Engine(engine_config(Defaults, [together], 32, "none"), folder)
    second = Engine(engine_config(Defaults, [together], 32, "none"), folder)

    def measure() -> tuple[float, float]:
        run_engine(first, one_by_one[:1], False)
        return run_engine(first, one_by_one, False)[0], run_engine(first, together, True)[0]

    first.start()
    try:
        for number in range(1, args.rounds + 1):
            alone = measure()
            second.start()
            run_engine(second, one_by_one[:1], False)
            idle = measure()
            stop = threading.Event()

            def keep_busy() -> None:
                while not stop.is_set():
                    run_engine(second, one_by_one[:1], False)

            busy_thread = threading.Thread(target=keep_busy)
            busy_thread.start()
            busy = measure()
            stop.set()
            busy_thread.join()
            second.close()
            for label, (solo, batch) in (("A alone", alone), ("A beside idle B", idle), ("A beside busy B", busy)):
                print(f"round {number}  {label:16} solo {solo:6.1f} tok/s ({solo / alone[0]:.2f}x)   "
                      f"8 at once {batch:6.1f} tok/s ({batch / alone[1]:.2f}x)", flush=True)
    finally:
        first.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
