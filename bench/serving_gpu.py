"""Serving throughput on a GPU, as a fraction of the bandwidth roofline.
Run: python bench/serving_gpu.py            (CUDA; finishes in under 3 minutes)
     python bench/serving_gpu.py --smoke    (tiny sizes on CPU: checks the script runs)

Model: a Qwen2.5-0.5B-shaped Llama (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864, vocab 151936), random init, bf16. Prompt 128 tokens (random ids), 128 new tokens, greedy
(the end token is never produced on purpose, but a random model may: tokens are counted).
Measured:
  roofline   = measured device copy bandwidth / weight bytes (tokens/s at batch 1 if every
               step only streamed the weights once);
  generate   = plain `model.generate`, batch 1, on a separate copy of the weights;
  engine x1  = the serving engine (workers.core.inference.engine), one request;
  engine x32 = 32 concurrent requests through the engine (total tokens/s).
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
    roofline = bandwidth / weight_bytes
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; transformers {transformers.__version__}")
    print(f"weights {weight_bytes / 1e9:.3f} GB; copy bandwidth {bandwidth / 1e9:.0f} GB/s; roofline {roofline:,.0f} tok/s at batch 1")

    rng = random.Random(0)
    prompts = [[rng.randrange(1, shape["vocab_size"] - 1) for _ in range(prompt_len)] for _ in range(args.concurrent)]

    plain = copy.deepcopy(model)  # generate never runs on the engine's model
    run_generate(plain, prompts[0], 8, device, eos)  # warm-up
    generate_tps = run_generate(plain, prompts[0], new_tokens, device, eos)
    print(f"generate   batch 1: {generate_tps:8.1f} tok/s  ({generate_tps / roofline:.1%} of roofline)", flush=True)
    del plain

    config = EngineConfig(device=device, dtype="fp32" if args.smoke else "bf16", exclusive_lane="off",
                          kv_cache_bytes=(32 if args.smoke else 4096) * 1024**2, block_size=32 if args.smoke else 256,
                          max_concurrent=max(32, args.concurrent), max_new_tokens_cap=4096,
                          cuda_graphs=args.cuda_graphs)
    engine = Engine.from_model(config, model, IdsOnlyTokenizer(shape["vocab_size"], eos))
    start = time.perf_counter()
    engine.start()
    print(f"engine started in {time.perf_counter() - start:.1f} s (KV {engine.capacity_tokens} tokens)", flush=True)
    run_engine(engine, prompts[:2], 8)  # warm-up (graphs, kernels)
    one = run_engine(engine, prompts[:1], new_tokens)
    print(f"engine     batch 1: {one:8.1f} tok/s  ({one / roofline:.1%} of roofline)", flush=True)
    many = run_engine(engine, prompts, new_tokens)
    print(f"engine {args.concurrent:>3} concurrent: {many:8.1f} tok/s in total  ({many / roofline:.2f}x the batch-1 roofline, "
          f"{many / args.concurrent / roofline:.1%} of it per request)", flush=True)
    engine.close()
    summary = {
        "device": name, "transformers": transformers.__version__, "cuda_graphs": args.cuda_graphs, "weights_gb": round(weight_bytes / 1e9, 3),
        "bandwidth_gbps": round(bandwidth / 1e9, 1), "roofline_tps": round(roofline, 1),
        "generate_b1_tps": round(generate_tps, 1), "engine_b1_tps": round(one, 1),
        f"engine_c{args.concurrent}_tps": round(many, 1), "engine_b1_fraction": round(one / roofline, 4),
        "generate_b1_fraction": round(generate_tps / roofline, 4), "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
