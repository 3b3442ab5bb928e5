"""vLLM beside the builtin engine, same model, same prompts, same concurrency levels.
Run: flock /tmp/puyu-cpu.lock .venv/bin/python bench/serving_vllm.py [--quick] (needs `make vllm`).

Workload: bench/serving.py's (at each level 1, 8, 32 a fixed set of requests, prompts of 16-256
token ids from TinyShakespeare or random ids, 16-128 new tokens, seeded; all greedy), on
SmolLM2-135M-Instruct (bench/serving.py's converted copy under /tmp/puyu-bench/smollm2), fp32 in both.
A = the builtin engine (the replica's default backend): the baseline, measured in this run.
V = the vllm backend: vLLM's own OpenAI server as a child process (started once, its start time
    printed and not counted), reached through the relay a replica uses (workers/core/inference/
    vllm_backend.py), so the HTTP hop is part of the figure as it is in serving.
Both stay loaded and alternate (A then V, V then A in the next round), so a busy spell on the
shared machine falls on both. Each gets all requests of a level at once (level 1: one after the
other); tokens/s = generated tokens / wall time; printed: medians of the rounds (1 with --quick,
else 3), V/A, and how many requests gave the same greedy tokens.
Nothing asserts a timing: the machine is shared.

For the serving benchmark's vLLM column: start_vllm() gives a started backend that
bench/serving.py's run_engine() drives like the engine (same submit / result / token_ids), so it
can take its turn in that benchmark's A/B/C order; bench_vllm() times whole levels on its own.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import run_engine, smollm2_dir, workload  # noqa: E402  (after the path insert)

LEVELS = (1, 8, 32)


def engine_config(kv_mib: int = 0, dtype: str = "fp32"):
    from workers.core.inference.engine import EngineConfig

    return EngineConfig(device="cpu", dtype=dtype, max_concurrent=32, exclusive_lane="off", max_new_tokens_cap=512,
                        kv_cache_bytes=kv_mib * 1024**2)


def start_vllm(folder, *, kv_mib: int = 0, dtype: str = "fp32", log=print):
    """A loaded and warmed vllm backend on `folder` (its start is logged, not timed elsewhere);
    close() it when done."""
    from workers.core.inference.vllm_backend import VllmBackend

    backend = VllmBackend(engine_config(kv_mib, dtype), folder, served_name="bench")
    started = time.perf_counter()
    backend.load()
    log(f"vLLM server started in {time.perf_counter() - started:.0f} s "
        f"(KV {backend.capacity_tokens} tokens, max model len {backend.plan.max_model_len})")
    return backend


def start_builtin(folder, *, kv_mib: int = 0, dtype: str = "fp32", log=print):
    """The baseline: the builtin engine with the same budget."""
    from workers.core.inference.engine import Engine

    engine = Engine(engine_config(kv_mib, dtype), folder)
    started = time.perf_counter()
    engine.start()
    log(f"builtin engine started in {time.perf_counter() - started:.1f} s (KV {engine.capacity_tokens} tokens)")
    return engine


def warm(backend, requests_by_level) -> None:
    run_engine(backend, requests_by_level[min(requests_by_level)][:2], concurrent=True)  # first calls set things up


def log_idle_cpu(backend, seconds: float = 5.0, log=print) -> None:
    """What the idle vLLM server's processes take from the cores the other engine is timed on
    (after a settling pause: vLLM's workers busy-poll for a moment after each request)."""
    import psutil

    root = psutil.Process(backend.server.process.pid)
    processes = [root, *root.children(recursive=True)]
    time.sleep(seconds)
    before = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
    time.sleep(seconds)
    after = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
    log(f"idle vLLM server: {100 * (after - before) / seconds:.0f}% of one core ({len(processes)} processes)")


def bench_vllm(folder, requests_by_level: dict[int, list[tuple[list[int], int]]], *, rounds: int = 1,
               kv_mib: int = 0, dtype: str = "fp32", log=print) -> dict[int, dict]:
    """vLLM's tokens/s on `requests_by_level` ({level: [(prompt ids, new tokens)]}), one server
    for all levels: {level: {"tok_s": median of the rounds, "outputs": token ids of the last}}."""
    backend = start_vllm(folder, kv_mib=kv_mib, dtype=dtype, log=log)
    try:
        warm(backend, requests_by_level)
        results = {}
        for level, requests in requests_by_level.items():
            runs = [run_engine(backend, requests, concurrent=level > 1) for _ in range(rounds)]
            results[level] = {"tok_s": statistics.median(tok_s for tok_s, _ in runs), "outputs": runs[-1][1]}
        return results
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round and shorter requests")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--kv-mib", type=int, default=0, help="KV budget for both (0: the engine's CPU default)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    levels = [int(x) for x in args.levels.split(",")]
    requests = {level: workload(tokenizer, 4 if level == 1 else level, seed=level, quick=args.quick) for level in levels}
    rounds = 1 if args.quick else 3
    engines = {"builtin": start_builtin(folder, kv_mib=args.kv_mib)}
    try:
        engines["vllm"] = start_vllm(folder, kv_mib=args.kv_mib)
        for engine in engines.values():
            warm(engine, requests)
        log_idle_cpu(engines["vllm"])
        summary = {}
        for level in levels:
            speeds = {name: [] for name in engines}
            outputs = {}
            for r in range(rounds):
                for name in (("builtin", "vllm") if r % 2 == 0 else ("vllm", "builtin")):
                    tok_s, outputs[name] = run_engine(engines[name], requests[level], concurrent=level > 1)
                    speeds[name].append(tok_s)
            a, v = statistics.median(speeds["builtin"]), statistics.median(speeds["vllm"])
            same = sum(x == y for x, y in zip(outputs["builtin"], outputs["vllm"]))
            print(f"{level:>3} concurrent: builtin {a:7.1f} tok/s | vLLM {v:7.1f} tok/s | vLLM/builtin {v / a:5.2f}x | "
                  f"same greedy tokens {same}/{len(requests[level])}", flush=True)
            summary[level] = {"builtin": round(a, 1), "vllm": round(v, 1), "ratio": round(v / a, 2),
                              "identical": f"{same}/{len(requests[level])}"}
    finally:
        for engine in engines.values():
            engine.close()
    print("\nSUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
