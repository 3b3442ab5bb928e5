"""GPU training speed and memory, for a machine with CUDA (the lead runs it there).

1. MFU of a 0.5B-shaped Llama (Qwen2.5-0.5B shape: hidden 896, 24 layers, 14 heads, 2 kv heads,
   intermediate 4864, vocab 151936, tied embeddings) at 2,048 tokens per sample, batch 8, with:
     plain_bf16        the baseline: bf16 weights, torch AdamW (foreach), labels -> HF loss
                       (the measured anchor: ~26% MFU on an H200)
     product           the training path of workers/core/training for full fine-tuning: fp32 master
                       weights + bf16 autocast + fused AdamW, padding-free packed batches
                       (position_ids restart per sample, no attention_mask, use_cache=False)
     product_compiled  the same + torch.compile(model)
     bf16_fused_compiled  bf16 weights + fused AdamW + torch.compile (fastest, no fp32 master copy)
   MFU = 6 x parameters (embeddings included, as the anchor) x tokens/s / 989 TFLOP/s (H100/H200
   dense bf16); "mfu_with_attention" adds 12 x layers x hidden x seq per token.
2. Peak memory, LoRA (r=16, all linear, bf16 frozen base, fp32 adapters) vs full fine-tuning
   (product path) at 1 x 2,048 tokens, with and without gradient checkpointing.

Measured on an H200 (torch 2.11, transformers 5.17, 2026-11-28, two runs): plain_bf16 25.2-25.5% MFU
(84-85k tokens/s, matching the 26% anchor), product 23.4-23.7%, product_compiled 31.9-32.7%,
bf16_fused_compiled 33.3%; a chunked cross-entropy variant (chunked_ce_loss, bf16 + compiled decoder)
gave 26.2%, slower than compiling the whole model, so it is only kept for the memory rows.
LoRA / full peak memory at 1 x 2,048: 0.57 (0.49 with gradient checkpointing, 0.49 with chunked CE
too). Targets (40% MFU, 0.35 memory) were NOT reached.

Must finish in < 4 min: variants are skipped (and said so) once the time budget is spent.
Robust to transformers 5.17 (no brand-new APIs); no network. Prints one JSON line at the end.

    python3 bench/train_gpu.py            # on a GPU machine
    python3 bench/train_gpu.py --smoke    # tiny sizes on CPU: checks that the script runs
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time

PEAK_FLOPS = 989e12
BUDGET_S = 210


def config(smoke: bool):
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=512, max_position_embeddings=256,
                           tie_word_embeddings=True, use_cache=False)
    return LlamaConfig(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, max_position_embeddings=4096,
                       tie_word_embeddings=True, rope_theta=1e6, use_cache=False)


def make_model(cfg, device, dtype):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg._attn_implementation = "sdpa"
    with torch.device(device):  # initialise on the device: seconds instead of a minute on CPU
        model = LlamaForCausalLM(cfg)
    return model.to(device=device, dtype=dtype).train()


def batch(cfg, batch_size, seq, device, packed: bool):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq), generator=g)
    out = {"input_ids": ids.to(device), "labels": ids.clone().to(device)}
    if packed:  # one 2,048-token sample per row: position_ids 0..seq-1, no attention_mask (the packed path)
        out["position_ids"] = torch.arange(seq).expand(batch_size, seq).contiguous().to(device)
    else:
        out["attention_mask"] = torch.ones_like(ids).to(device)
    return out


def chunked_ce_loss(body, lm_head, data, chunk: int = 4096):
    """Causal-LM loss without materialising the [tokens, vocab] logits at once: the decoder body
    gives hidden states, the head + cross-entropy run per chunk of tokens under activation
    checkpointing, so only one chunk's fp32 logits exist at a time (a "Liger-free" fused loss)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    kwargs = {k: v for k, v in data.items() if k != "labels"}
    hidden = body(**kwargs, use_cache=False).last_hidden_state
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = data["labels"][:, 1:].reshape(-1)
    count = (y != -100).sum()

    def piece(hh, yy):
        return F.cross_entropy(lm_head(hh).float(), yy, ignore_index=-100, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        total = total + checkpoint(piece, h[i:i + chunk], y[i:i + chunk], use_reentrant=False)
    return total / count


def run_variant(name, cfg, device, *, batch_size, seq, steps, autocast, master_fp32, fused, compiled, packed,
                chunked=False):
    import torch

    cuda = device == "cuda"
    dtype = torch.float32 if (master_fp32 or not cuda) else torch.bfloat16
    model = make_model(cfg, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    kwargs = {"lr": 1e-5}
    if cuda:
        kwargs["fused" if fused else "foreach"] = True
    optimizer = torch.optim.AdamW(model.parameters(), **kwargs)
    forward = torch.compile(model) if compiled and not chunked else model
    body = torch.compile(model.model) if compiled and chunked else model.model
    data = batch(cfg, batch_size, seq, device, packed)

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast and cuda):
            if chunked:
                loss = chunked_ce_loss(body, model.lm_head, data)
            else:
                loss = forward(**data, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    started = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation)
        step()
    sync(device)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = (time.perf_counter() - started) / steps
    tokens_per_s = batch_size * seq / seconds
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq
    result = {"tokens_per_s": round(tokens_per_s), "seconds_per_step": round(seconds, 4),
              "mfu": round(6 * params * tokens_per_s / PEAK_FLOPS, 4),
              "mfu_with_attention": round((6 * params + attention) * tokens_per_s / PEAK_FLOPS, 4),
              "warmup_seconds": round(warm, 1), "loss": round(float(loss), 3), "parameters": params}
    model = optimizer = forward = body = data = None  # drop the references before freeing the cache
    free(device)
    return result


def peak_memory(cfg, device, *, lora: bool, checkpointing: bool, seq: int, chunked: bool = False):
    import torch

    free(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cuda = device == "cuda"
    model = make_model(cfg, device, torch.bfloat16 if (lora and cuda) else torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        if checkpointing:
            model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"lr": 1e-5}
    if cuda:
        kwargs["fused"] = True
    optimizer = torch.optim.AdamW(trainable, **kwargs)
    data = batch(cfg, 1, seq, device, packed=True)
    for _ in range(2):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            if chunked:
                base = model.get_base_model() if lora else model
                loss = chunked_ce_loss(base.model, base.lm_head, data)
            else:
                loss = model(**data, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    peak = torch.cuda.max_memory_allocated() if cuda else rss_peak()
    del model, optimizer, data
    free(device)
    return int(peak)


def rss_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free(device):
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    import torch
    import transformers

    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print(json.dumps({"bench": "train_gpu", "skipped": "no CUDA device (use --smoke to check it runs on CPU)"}))
        return 0
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = config(args.smoke)
    seq = 128 if args.smoke else 2048
    batch_size = args.batch_size or (2 if args.smoke else 8)
    steps = args.steps or (2 if args.smoke else 8)
    variants = {
        "plain_bf16": dict(autocast=False, master_fp32=False, fused=False, compiled=False, packed=False),
        "product": dict(autocast=True, master_fp32=True, fused=True, compiled=False, packed=True),
        "product_compiled": dict(autocast=True, master_fp32=True, fused=True, compiled=not args.smoke, packed=True),
        "bf16_fused_compiled": dict(autocast=False, master_fp32=False, fused=True, compiled=not args.smoke,
                                    packed=True),
    }
    results, skipped, errors = {}, [], {}
    for name, options in variants.items():
        if time.perf_counter() - started > BUDGET_S * 0.7 and name != "plain_bf16":
            skipped.append(name)
            continue
        try:
            results[name] = run_variant(name, cfg, device, batch_size=batch_size, seq=seq, steps=steps, **options)
            print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
        except Exception as exc:  # an OOM or a compile failure must not lose the other numbers
            errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            free(device)
    memory = {}
    for key, lora, ckpt, chunked in (
            ("full", False, False, False), ("lora", True, False, False),
            ("full_checkpointing", False, True, False), ("lora_checkpointing", True, True, False),
            ("full_checkpointing_chunked_ce", False, True, True), ("lora_checkpointing_chunked_ce", True, True, True)):
        if time.perf_counter() - started > BUDGET_S:
            skipped.append(f"memory_{key}")
            continue
        try:
            memory[key] = peak_memory(cfg, device, lora=lora, checkpointing=ckpt, seq=seq, chunked=chunked)
        except Exception as exc:
            errors[f"memory_{key}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            free(device)
    base = results.get("plain_bf16")
    best = max(results.items(), key=lambda kv: kv[1]["mfu"]) if results else (None, None)
    summary = {
        "bench": "train_gpu", "device": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
        "torch": torch.__version__, "transformers": transformers.__version__, "seq": seq, "batch_size": batch_size,
        "variants": results,
        "best": best[0], "best_mfu": best[1]["mfu"] if best[1] else None,
        "speedup_vs_plain_bf16": {k: round(v["tokens_per_s"] / base["tokens_per_s"], 3) for k, v in results.items()}
        if base else None,
        "target_mfu": 0.40, "anchor_plain_bf16_mfu_h200": 0.26,
        "peak_memory_bytes": memory,
        "lora_vs_full_memory": round(memory["lora"] / memory["full"], 3) if {"lora", "full"} <= set(memory) else None,
        "lora_vs_full_memory_checkpointing": round(memory["lora_checkpointing"] / memory["full_checkpointing"], 3)
        if {"lora_checkpointing", "full_checkpointing"} <= set(memory) else None,
        "lora_vs_full_memory_checkpointing_chunked_ce":
            round(memory["lora_checkpointing_chunked_ce"] / memory["full_checkpointing_chunked_ce"], 3)
            if {"lora_checkpointing_chunked_ce", "full_checkpointing_chunked_ce"} <= set(memory) else None,
        "target_lora_vs_full_memory": 0.35,
        "skipped": skipped, "errors": errors, "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
