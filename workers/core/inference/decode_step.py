"""The solo path's decode step for Llama-shaped models, written as few torch ops (plain.py).

Why: at batch 1 a SmolLM2-135M token took ~38 ms through the model's own forward on the 2-core
CPU, of which the linears were ~25 ms. Most of the rest was transformers' plumbing around them
(decorators, keyword routing, output capture, five module calls per layer) and ~40 small ops per
layer. This step runs the same computation on the model's own weights in ~20 ops per layer:
~34 ms a token in the same process (+15-20% tokens/s), logits bitwise those of the model's
forward. The ops are the forward's, in its order, except two swaps that give bitwise the same
numbers:
- the RMS norm's six ops (pow, mean, add, rsqrt, mul, mul) as one F.rms_norm, used only when a
  probe at build time finds it bitwise equal to the model's own norm (else the norm module runs);
- rotate_half(x) * sin (slice, slice, neg, cat, mul) as x.roll(half) * sin with its first half
  negated: (-a) * b and a * (-b) are the same float, negation being exact.
q and k are rotated in one go (one view of the fused q|k|v product).

No library does this on CPU without compiling: torch.compile would fuse further, but compiles
for minutes per model on this machine and again as the KV length grows; serving engines (vLLM,
LMDeploy) keep model code of their own for the same reason.

Safety: only the architectures below, in sdpa, with the engine's fused projections
(onednn_linear.fuse_projections: `cpu_linear: aten` never gets here). The runner checks a built
step against the model's own forward before it uses it (`verify`: two decode steps after a
prompt, logits and keys/values compared bitwise) and keeps the forward on any difference, so a
transformers release that changes these models' maths cannot change what the engine computes.
"""
from __future__ import annotations

from typing import Callable

# Their decoder layers are the same code: norm, q|k|v, rotary, cache, sdpa, o, residual, norm,
# gated MLP, residual (Qwen2 adds q/k/v biases, carried by the fused product).
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def build(model) -> tuple[Callable | None, str | None]:
    """(a DecodeStep, None) for a model this step reproduces, else (None, why not)."""
    from .onednn_linear import fused_linear_classes

    name = type(model).__name__
    if name not in ARCHITECTURES:
        return None, f"architecture {name} (the lean step knows {', '.join(ARCHITECTURES)})"
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return None, "attention is not sdpa"
    classes = fused_linear_classes()
    if classes is None:
        return None, "no oneDNN fused projections"
    lead = classes[0]
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        if type(attention.q_proj) is not lead or attention.q_proj.followers != [attention.k_proj, attention.v_proj]:
            return None, "q|k|v are not one fused product"
        if type(mlp.gate_proj) is not lead or mlp.gate_proj.followers != [mlp.up_proj]:
            return None, "gate|up are not one fused product"
    return DecodeStep(model), None


def _norm(module) -> Callable:
    """The norm as one F.rms_norm when that is bitwise the module's result on probes, else the module."""
    import torch
    import torch.nn.functional as F

    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if weight is None or eps is None:
        return module
    shape = (weight.shape[-1],)
    generator = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        probe = torch.randn((2, 3, shape[0]), generator=generator, dtype=weight.dtype) * scale
        if not torch.equal(F.rms_norm(probe, shape, weight, eps), module(probe)):
            return module
    return lambda hidden: F.rms_norm(hidden, shape, weight, eps)


class DecodeStep:
    """One token of one sequence through the model: `step(token, cache, position)` appends the
    token's keys and values to `cache` (plain.py's SequenceCache) and returns fp32 logits
    [1, vocab]. Holds the fused weights it reads as plain tensors (no module lookups per token):
    in-place updates reach it, a weight replaced by another tensor would not (the engine replaces
    none after start; a new runner builds a new step)."""

    def __init__(self, model) -> None:
        import torch

        self.torch = torch
        self.op = torch.ops.mkldnn._linear_pointwise
        core = model.model
        config = model.config.get_text_config()
        first = core.layers[0].self_attn
        self.head_dim = first.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.embed, self.rotary, self.head = core.embed_tokens, core.rotary_emb, model.lm_head
        self.final_norm = _norm(core.norm)
        self.layers = []
        for layer in core.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                _norm(layer.input_layernorm), attention.q_proj.fused_weight, attention.q_proj.fused_bias,
                attention.o_proj, attention.scaling,
                _norm(layer.post_attention_layernorm), mlp.gate_proj.fused_weight, mlp.gate_proj.fused_bias,
                mlp.act_fn, mlp.down_proj,
            ))

    def __call__(self, token: int, cache, position: int):
        torch, op = self.torch, self.op
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        half = head_dim // 2
        hidden = self.embed(torch.tensor([[token]]))
        cos, sin = self.rotary(hidden, torch.tensor([[position]]))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # rotate_half's sign, folded into sin
        for index, (norm1, qkv_weight, qkv_bias, o_proj, scaling, norm2, gate_up_weight, gate_up_bias, act,
                    down_proj) in enumerate(self.layers):
            x = norm1(hidden)
            qkv = op(x, qkv_weight, qkv_bias, "none", [], "").view(1, 1, heads + 2 * kv_heads, head_dim).transpose(1, 2)
            qk = qkv[:, : heads + kv_heads]
            qk = qk * cos + qk.roll(half, -1) * sin
            keys, values = cache.layers[index].update(qk[:, heads:], qkv[:, heads + kv_heads :])
            attended = torch.nn.functional.scaled_dot_product_attention(
                qk[:, :heads], keys, values, scale=scaling, enable_gqa=kv_heads != heads)
            hidden = hidden + o_proj(attended.reshape(1, 1, heads * head_dim))
            x = norm2(hidden)
            gate, up = op(x, gate_up_weight, gate_up_bias, "none", [], "").chunk(2, dim=-1)
            hidden = hidden + down_proj(act(gate) * up)
        return self.head(self.final_norm(hidden))[:, -1].float()


def verify(step: Callable, forward: Callable, new_cache: Callable, vocab_size: int) -> str | None:
    """None when `step` gives bitwise the logits, keys and values of the model's own `forward`
    (ids [1, n], cache -> fp32 logits [1, kept, vocab]) over two decode steps after a 3-token
    prompt, else what differed. `new_cache(capacity)` makes an empty SequenceCache."""
    import torch

    prompt = torch.tensor([[token % vocab_size for token in (1, 2, 3)]])
    reference, candidate = new_cache(8), new_cache(8)
    forward(prompt, reference)
    forward(prompt, candidate)
    for position, token in ((3, 4 % vocab_size), (4, 5 % vocab_size)):
        expected = forward(torch.tensor([[token]]), reference)[:, -1]
        got = step(token, candidate, position)
        if not torch.equal(expected, got):
            return f"logits differ at position {position} (max {float((expected - got).abs().max()):.3g})"
    for number, (want, have) in enumerate(zip(reference.layers, candidate.layers)):
        if not (torch.equal(want.keys, have.keys) and torch.equal(want.values, have.values)):
            return f"layer {number}'s cached keys or values differ"
    return None
