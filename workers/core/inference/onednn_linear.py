"""The plain runner's linear layers through oneDNN (CPU, fp32).

Why: a decode step is a chain of skinny matrix products (1 to 32 rows against weights of a few
hundred columns), and ATen's fp32 `linear` hands those to MKL's gemv/gemm, which streams such
weights at about half the machine's read bandwidth. oneDNN's inner-product primitive, which torch
ships for inductor as `torch.ops.mkldnn._linear_pointwise`, reads the same row-major weight (no
repacking, no second copy) much faster at these shapes. Measured on the 2-core AMD EPYC (AVX2),
torch 2.13, weight shapes of SmolLM2 and the ~30M Llama, as weight GB/s of ATen -> oneDNN:
1 row 10.9 -> 18.5 (512x512), 10.4 -> 20.3 (1408x512), 15.1 -> 27.2 (512x1408), 2.5x on
SmolLM2's 49152x576 head; 8 rows 1.3-2.1x; 32 rows 1.1-1.9x; 512 rows (prefill) 1.1-1.3x.

The products are the same sums in another order: outputs differ from ATen's in the last bits
(~1e-6 relative), as a batched matmul already does from generate's batch-1 one. Greedy tokens are
checked against `generate` by the engine tests and by bench/serving.py at every level.

No library does this swap: transformers has no CPU kernel option for plain linears, and
torch.compile (which would pick the same primitive) costs minutes of compilation per model on
this machine and recompiles as the KV length changes.
"""
from __future__ import annotations

import functools


@functools.cache
def onednn_linear_class():
    """OneDNNLinear (an nn.Linear subclass: same parameters, state dict and isinstance checks),
    or None when this torch has no usable oneDNN inner product (a build without mkldnn, or one
    whose result disagrees with ATen's on a probe)."""
    import torch

    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    if op is None:
        return None
    try:
        with torch.inference_mode():
            probe_w, probe_b, probe_x = torch.randn(24, 16), torch.randn(24), torch.randn(2, 3, 16)
            got = op(probe_x, probe_w, probe_b, "none", [], "")
            if not torch.allclose(got, torch.nn.functional.linear(probe_x, probe_w, probe_b), rtol=1e-4, atol=1e-4):
                return None
    except (RuntimeError, NotImplementedError):
        return None

    class OneDNNLinear(torch.nn.Linear):
        """nn.Linear whose forward runs oneDNN's inner product (inference: no autograd formula)."""

        def forward(self, input):  # noqa: A002  (nn.Linear's own parameter name)
            if input.requires_grad or (self.weight.requires_grad and torch.is_grad_enabled()):
                return super().forward(input)
            return op(input, self.weight, self.bias, "none", [], "")

    return OneDNNLinear


def use_onednn_linears(model) -> int:
    """Switch every plain fp32 CPU nn.Linear of `model` to oneDNN in place; returns how many.
    Other layer types (torch's dynamic int8 linears, bf16/fp16 weights) are left alone; peft's LoRA
    layers wrap plain nn.Linear modules (the base layer, lora_A/B), and those are switched."""
    import torch

    cls = onednn_linear_class()
    if cls is None:
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32:
            module.__class__ = cls
            switched += 1
    return switched


_warmed: set[tuple] = set()  # (in, out, bias, rows) whose primitive this process has built


def warm_primitives(model, max_rows: int) -> int:
    """Build oneDNN's primitive for each (rows, weight shape) a decode step of 1 to `max_rows`
    rows asks for; returns how many were built. oneDNN builds one per input shape on first use and
    caches it for the process (~0.4 ms each here): a cold burst of 32 requests on the ~30M Llama
    built ~155 of them while it decoded, ~60 ms of a 2.5 s run. Shapes are the cache's key, not
    the weights, so one layer per shape is enough, once per process."""
    import torch

    cls = onednn_linear_class()
    if cls is None:
        return 0
    by_shape = {}
    for module in model.modules():
        if type(module) is cls:
            by_shape.setdefault((module.in_features, module.out_features, module.bias is not None), module)
    built = 0
    with torch.inference_mode():
        for (features, outputs, bias), module in by_shape.items():
            for rows in range(1, max_rows + 1):
                if (features, outputs, bias, rows) in _warmed:
                    continue
                module(torch.zeros(rows, 1, features))  # the decode step's [rows, 1, features] input
                _warmed.add((features, outputs, bias, rows))
                built += 1
    return built
