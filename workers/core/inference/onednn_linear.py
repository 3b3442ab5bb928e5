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

        def needs_autograd(self, input) -> bool:  # noqa: A002
            """oneDNN's op has no autograd formula: training goes through ATen's linear."""
            return input.requires_grad or (self.weight.requires_grad and torch.is_grad_enabled())

        def forward(self, input):  # noqa: A002  (nn.Linear's own parameter name)
            if self.needs_autograd(input):
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
    lead_class = fused_linear_classes()[0]
    by_shape = {}
    for module in model.modules():
        if type(module) is cls:
            by_shape.setdefault((module.in_features, module.out_features, module.bias is not None), module)
        elif type(module) is lead_class:  # its product is the group's (a follower computes nothing)
            by_shape.setdefault((module.in_features, sum(module.fused_sizes), module.bias is not None), module)
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


# Sibling projections that read the same input: attention's q/k/v, the gated MLP's gate/up.
FUSABLE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@functools.cache
def fused_linear_classes():
    """(FusedLead, FusedFollower), or None without oneDNN. The lead of a group computes the whole
    group's product with one weight (the group's weights, concatenated, the layers' own weights
    being views of it) and hands each follower its slice of the output for that same input
    tensor; a follower called with any other input computes its own product."""
    cls = onednn_linear_class()
    if cls is None:
        return None
    import torch

    op = torch.ops.mkldnn._linear_pointwise

    class FusedLead(cls):
        def forward(self, input):  # noqa: A002
            if self.needs_autograd(input):
                return super().forward(input)
            parts = op(input, self.fused_weight, self.fused_bias, "none", [], "").split(self.fused_sizes, dim=-1)
            for follower, part in zip(self.followers, parts[1:]):
                follower.handed = (input, part)
            return parts[0]

    class FusedFollower(cls):
        handed = None

        def forward(self, input):  # noqa: A002
            handed, self.handed = self.handed, None
            if handed is not None and handed[0] is input:  # the lead's input: the object itself, held alive
                return handed[1]
            return super().forward(input)

    return FusedLead, FusedFollower


def fuse_projections(model) -> int:
    """Fuse each group of FUSABLE_GROUPS whose layers are all oneDNN linears of the same input
    width (with biases on all or none) into one product per group; returns how many groups.
    Why: at batch 1 on SmolLM2 a layer's k and v weights are 0.4 MB each, too small to stream at
    the machine's bandwidth, and each product pays the op's fixed cost: one q|k|v and one
    gate|up product per layer decoded 15-20% more tokens/s (prototype, 2 cores). No memory is
    added: the concatenated weight replaces the layers' own, which become views of it, so the
    parameters, state dict and in-place updates (a merged adapter) stay the layers'. Greedy
    tokens stay equal to `generate`'s (engine tests, bench/serving.py)."""
    import torch

    classes, cls = fused_linear_classes(), onednn_linear_class()
    if classes is None:
        return 0
    lead_class, follower_class = classes
    fused = 0
    for module in model.modules():
        for names in FUSABLE_GROUPS:
            layers = [getattr(module, name, None) for name in names]
            if not all(type(layer) is cls for layer in layers):
                continue
            if len({layer.in_features for layer in layers}) != 1 or len({layer.bias is None for layer in layers}) != 1:
                continue
            with torch.no_grad():
                weight = torch.cat([layer.weight.detach() for layer in layers]).contiguous()
                bias = None if layers[0].bias is None else torch.cat([layer.bias.detach() for layer in layers])
                start = 0
                for layer in layers:
                    end = start + layer.out_features
                    layer.weight.data = weight[start:end]
                    if bias is not None:
                        layer.bias.data = bias[start:end]
                    start = end
            lead = layers[0]
            lead.__class__ = lead_class
            lead.fused_weight, lead.fused_bias = weight, bias
            lead.fused_sizes = [layer.out_features for layer in layers]
            lead.followers = layers[1:]
            for follower in layers[1:]:
                follower.__class__ = follower_class
            fused += 1
    return fused
