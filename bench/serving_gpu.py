"""Serving throughput on a GPU, as a fraction of the bandwidth roofline.
Run: python bench/serving_gpu.py            (CUDA; finishes in under 3 minutes)
     python bench/serving_gpu.py --smoke    (tiny sizes on CPU: checks the script runs)

Model: a Qwen2.5-0.5B-shaped Llama (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864, vocab 151936), random init, bf16. Prompt 128 tokens (random ids), 128 new tokens, greedy
(the end token is never produced on purpose, but a random model may: tokens are counted).
Measured:
  roofline   = read bandwidth / weight bytes (tokens/s at batch 1 if every step only streamed
               the weights once), read bandwidth = half the measured read+write copy rate, as
               on CPU (bench/serving.py); the strict roofline counts all of the copy rate;
  generate   = plain `model.generate`, batch 1, on a separate copy of the weights;
  stock x32  = transformers' own continuous batching (`model.generate_batch`, its defaults), the
               same 32 prompts: the baseline the engine's 32-request figure is divided by;
  engine x1  = the serving engine (workers.core.inference.engine), one request, per runner
               (--runners: the manager, the CUDA default, and the plain runner);
  engine x32 = 32 concurrent requests through the engine (total tokens/s), per runner.
Each is printed with its fraction of the roofline; the last line is one JSON summary.
Guards: transformers older than 5.24 (the GPU machines may have 5.17) are handled by the
engine's version checks; nothing here needs flash-attention.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN05_SHAPE = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=4864, vocab_size=151936, max_position_embeddings=4096)
SMOKE_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=512, max_position_embeddings=512)


class IdsOnlyTokenizer:
    """The engine decodes text for stop strings and deltas; a random-vocab model has no real
    tokenizer, so text is empty and only token counts matter here."""

    chat_template = None

    def __init__(self, vocab_size: int, eos: int):
        self.vocab_size = vocab_size
        self.eos_token_id = eos
        self.pad_token_id = eos

    def __len__(self):
        return self.vocab_size

    def decode(self, ids, skip_special_tokens=True):
        return ""


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - start)  # read + write


def build_model(shape: dict, dtype, device: str):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos = shape["vocab_size"] - 1
    config = LlamaConfig(**shape, bos_token_id=0, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=eos, pad_token_id=eos)
    return model, eos


def run_generate(model, prompt, new_tokens, device, eos):
    import torch

    ids = torch.tensor([prompt], device=device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=eos)
    sync(device)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def run_stock_batching(model, prompts, new_tokens, eos):
    """transformers' continuous batching as a user gets it: `generate_batch` with its defaults."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.generated_tokens) for o in outputs.values()) / elapsed


def run_engine(engine, prompts, new_tokens):
    from workers.core.inference.engine import EngineRequest
    from workers.core.inference.sampling import SamplingParams

    start = time.perf_counter()
    handles = [engine.submit(EngineRequest(prompt_ids=p, sampling=SamplingParams(max_tokens=new_tokens, temperature=0.0)))
               for p in prompts]
    finals = [h.result(timeout=600) for h in handles]
    elapsed = time.perf_counter() - start
    errors = [f for f in finals if f["type"] != "end"]
    if errors:
        raise SystemExit(f"engine request failed: {errors[0]}")
    return sum(f["usage"]["completion_tokens"] for f in finals) / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
                        help="the engine's CUDA graphs (auto: on for CUDA)")
    parser.add_argument("--runners", default="manager,plain", help="the engine runners to measure, in order")
    parser.add_argument("--no-stock", action="store_true", help="skip transformers' own continuous batching")
    args = parser.parse_args()

    import random

    import torch
    import transformers

    from workers.core.inference.engine import Engine, EngineConfig

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    shape = SMOKE_SHAPE if args.smoke else QWEN05_SHAPE
    prompt_len, new_tokens = (16, 16) if args.smoke else (128, 128)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    t0 = time.perf_counter()

    model, eos = build_model(shape, dtype, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth(device, 64 * 1024**2 if args.smoke else 1024**3)
    # As on CPU (bench/serving.py): read bandwidth = half the read+write copy rate. The stricter
    # figure (all of the copy rate as read bandwidth) is printed beside it.
    roofline = bandwidth / 2 / weight_bytes
    strict = bandwidth / weight_bytes
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; transformers {transformers.__version__}")
    print(f"weights {weight_bytes / 1e9:.3f} GB; copy bandwidth {bandwidth / 1e9:.0f} GB/s (read+write); roofline "
          f"{roofline:,.0f} tok/s at batch 1 (strict: {strict:,.0f})")

    rng = random.Random(0)
    prompts = [[rng.randrange(1, shape["vocab_size"] - 1) for _ in range(prompt_len)] for _ in range(args.concurrent)]

    reference = copy.deepcopy(model)  # generate and stock batching never run on the engine's model
    run_generate(reference, prompts[0], 8, device, eos)  # warm-up
    generate_tps = run_generate(reference, prompts[0], new_tokens, device, eos)
    print(f"generate   batch 1: {generate_tps:8.1f} tok/s  ({generate_tps / roofline:.1%} of roofline)", flush=True)
    summary = {
        "device": name, "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda_graphs": args.cuda_graphs, "weights_gb": round(weight_bytes / 1e9, 3),
        "bandwidth_gbps": round(bandwidth / 1e9, 1), "roofline_tps": round(roofline, 1),
        "strict_roofline_tps": round(strict, 1), "generate_b1_tps": round(generate_tps, 1), "generate_b1_fraction": round(generate_tps / roofline, 4),
    }
    stock = None
    if not args.no_stock:
        run_stock_batching(reference, prompts[:2], 8, eos)  # warm-up
        stock = run_stock_batching(reference, prompts, new_tokens, eos)
        summary[f"stock_c{args.concurrent}_tps"] = round(stock, 1)
        print(f"stock  {args.concurrent:>3} concurrent: {stock:8.1f} tok/s in total (transformers' generate_batch)", flush=True)
    del reference

    for runner in [r for r in args.runners.split(",") if r]:
        config = EngineConfig(device=device, dtype="fp32" if args.smoke else "bf16", exclusive_lane="off",
                              kv_cache_bytes=(32 if args.smoke else 4096) * 1024**2, block_size=32 if args.smoke else 256,
                              max_concurrent=max(32, args.concurrent), max_new_tokens_cap=4096,
                              cuda_graphs=args.cuda_graphs, runner=runner)
        engine = Engine.from_model(config, model, IdsOnlyTokenizer(shape["vocab_size"], eos))
        start = time.perf_counter()
        engine.start()
        print(f"[{runner}] engine started in {time.perf_counter() - start:.1f} s (KV {engine.capacity_tokens} tokens)", flush=True)
        run_engine(engine, prompts[:2], 8)  # warm-up (graphs, kernels)
        one = run_engine(engine, prompts[:1], new_tokens)
        print(f"[{runner}] engine     batch 1: {one:8.1f} tok/s  ({one / roofline:.1%} of roofline, {one / strict:.1%} of "
              f"the strict one)", flush=True)
        many = run_engine(engine, prompts, new_tokens)
        versus = f", {many / stock:.2f}x stock batching" if stock else ""
        print(f"[{runner}] engine {args.concurrent:>3} concurrent: {many:8.1f} tok/s in total  "
              f"({many / args.concurrent / roofline:.1%} of the roofline per request{versus})", flush=True)
        engine.close()
        summary.update({f"{runner}_b1_tps": round(one, 1), f"{runner}_b1_fraction": round(one / roofline, 4),
                        f"{runner}_c{args.concurrent}_tps": round(many, 1)})
        if stock:
            summary[f"{runner}_c{args.concurrent}_vs_stock"] = round(many / stock, 2)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
