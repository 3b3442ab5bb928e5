"""Packed rows: attention within each sample (workers/core/training/packed_attention.py) against
transformers' sdpa with the block-diagonal mask, one training step (forward + backward) of the same
packed batch, on CPU or CUDA.

    .venv/bin/python bench/packed_attention.py                 # CPU: ~30M Llama at 1,024 tokens
    python3 bench/packed_attention.py --device cuda            # GPU: 0.5B shape at 2,048 tokens, bf16

Rows hold samples of 64-640 tokens (seeded), position_ids restarting per sample, no attention_mask,
use_cache=False (the training path's packed batch). The two modes alternate step by step on the
same weights; printed: median seconds per step of each, the ratio masked / sliced (> 1: slicing is
faster), and the largest loss difference. One JSON line ends the output; nothing asserts (the
machines are shared).

Measured 2026-12-04:
  2-core CPU (torch 2.13), ~30M Llama, 8 x 1,024 tokens, 32 samples: masked 13.2 s/step, sliced
    11.2 s/step: sliced 1.18x faster, the same loss (difference 0.0). Used by packed CPU runs.
  H200 (torch 2.11+cu130, transformers 5.25), 0.5B shape in bf16, 8 x 2,048 tokens, 54 samples:
    masked 0.220 s/step, sliced 0.743 s/step: sliced 0.30x (3.4x slower); 4 x 4,096 tokens:
    0.38x. Loss difference <= 1.2e-4 (bf16). So a GPU keeps transformers' masked sdpa.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # (hidden, layers, heads, kv heads, intermediate, vocab)
    "llama-30m": (512, 8, 8, 8, 1408, 8000),
    "0.5b": (896, 24, 14, 2, 4864, 151936),
}


def packed_batch(rows: int, length: int, vocab: int, device, seed: int = 1):
    import torch

    rng = random.Random(seed)
    positions = []
    for _ in range(rows):
        row, left = [], length
        while left > 0:
            n = min(left, rng.randint(64, 640))
            row += range(n)
            left -= n
        positions.append(row)
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids.to(device), "labels": ids.clone().to(device),
            "position_ids": torch.tensor(positions).to(device)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES))
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.core.training import packed_attention

    cuda = args.device == "cuda"
    shape = args.shape or ("0.5b" if cuda else "llama-30m")
    length = args.length or (2048 if cuda else 1024)
    steps = args.steps or (10 if cuda else 3)
    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                         max_position_embeddings=4096, tie_word_embeddings=True, use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16 if cuda else torch.float32).train()
    packed_attention.register()
    data = packed_batch(args.rows, length, vocab, args.device)
    modes = {"masked": "sdpa", "sliced": packed_attention.ATTENTION}
    seconds = {m: [] for m in modes}
    losses = {m: [] for m in modes}

    def step(mode):
        model.config._attn_implementation = modes[mode]
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(**data, use_cache=False).loss
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started, float(loss)

    for mode in modes:  # warm-up
        step(mode)
    for i in range(steps):
        for mode in (modes if i % 2 == 0 else list(modes)[::-1]):
            took, loss = step(mode)
            seconds[mode].append(took)
            losses[mode].append(loss)
    median = {m: statistics.median(v) for m, v in seconds.items()}
    segments = sum(len(packed_attention.segments(row)) for row in data["position_ids"])
    summary = {"bench": "packed_attention", "device": torch.cuda.get_device_name() if cuda else "cpu",
               "torch": torch.__version__, "shape": shape, "rows": args.rows, "length": length,
               "samples": segments, "steps": steps,
               "seconds_per_step": {m: round(v, 4) for m, v in median.items()},
               "tokens_per_s": {m: round(args.rows * length / v) for m, v in median.items()},
               "masked_over_sliced": round(median["masked"] / median["sliced"], 3),
               "max_loss_difference": max(abs(a - b) for a, b in zip(losses["masked"], losses["sliced"]))}
    print(f"{shape} on {summary['device']}: {args.rows} rows x {length} tokens, {segments} samples; "
          f"masked {median['masked']:.3f} s/step, sliced {median['sliced']:.3f} s/step "
          f"-> sliced is {summary['masked_over_sliced']}x the masked speed")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
