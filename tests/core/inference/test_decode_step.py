"""The solo path's lean decode step (workers/core/inference/decode_step.py): bitwise the model's
own forward on the architectures it knows, refused (the forward kept) everywhere else."""
from __future__ import annotations

import pytest

from tests.core.inference.conftest import make_engine
from tests.core.inference.test_engine import PROMPTS, greedy, reference_tokens

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
             num_attention_heads=4, max_position_embeddings=256)


def tiny(architecture: str, **overrides):
    """A random-initialised model of `architecture` (sdpa, fp32), its linears on oneDNN and its
    projections fused as the engine does them."""
    import torch
    import transformers

    from workers.core.inference.onednn_linear import fuse_projections, use_onednn_linears

    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    config = config_class(**{**SMALL, **overrides})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).eval()
    use_onednn_linears(model)
    fuse_projections(model)
    return model


def sequence_cache(model, capacity: int):
    from workers.core.inference.plain import cache_classes

    return cache_classes()[0](model.config.num_hidden_layers, capacity)


def forward(model, ids, cache):
    return model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits.float()


def nudge(step):
    """Make `step` differ from the model by one rounding: its final norm's output x (1 + 2^-20)."""
    norm = step.final_norm
    step.final_norm = lambda hidden: norm(hidden) * (1 + 2**-20)
    return step


@pytest.mark.parametrize("architecture, overrides", [
    ("LlamaForCausalLM", {"num_key_value_heads": 2}),  # grouped-query attention
    ("LlamaForCausalLM", {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True}),
    ("MistralForCausalLM", {"num_key_value_heads": 2, "sliding_window": None}),
    ("Qwen2ForCausalLM", {"num_key_value_heads": 2}),  # q/k/v biases
])
def test_the_lean_step_gives_the_forwards_logits_keys_and_values_bit_for_bit(architecture, overrides):
    import torch

    from workers.core.inference import decode_step

    model = tiny(architecture, **overrides)
    step, why_not = decode_step.build(model)
    assert why_not is None
    prompt = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.inference_mode():
        reference, lean = sequence_cache(model, 64), sequence_cache(model, 64)
        forward(model, prompt, reference)
        forward(model, prompt, lean)
        token = int(forward(model, prompt, sequence_cache(model, 8))[0, -1].argmax())
        for position in range(prompt.shape[1], prompt.shape[1] + 30):
            expected = forward(model, torch.tensor([[token]]), reference)[:, -1]
            assert torch.equal(step(token, lean, position), expected), f"position {position}"
            token = int(expected.argmax())
    for layer_reference, layer_lean in zip(reference.layers, lean.layers):
        assert torch.equal(layer_reference.keys, layer_lean.keys)
        assert torch.equal(layer_reference.values, layer_lean.values)


def test_architectures_it_does_not_know_and_unfused_projections_keep_the_forward():
    from workers.core.inference import decode_step

    step, why_not = decode_step.build(tiny("Qwen3ForCausalLM", num_key_value_heads=2, head_dim=16))  # q/k norms
    assert step is None and "Qwen3ForCausalLM" in why_not

    import transformers

    unfused = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL)).eval()  # cpu_linear: aten
    unfused.config._attn_implementation = "sdpa"
    assert decode_step.build(unfused) == (None, "q|k|v are not one fused product")
    eager = tiny("LlamaForCausalLM")
    eager.config._attn_implementation = "eager"
    assert decode_step.build(eager) == (None, "attention is not sdpa")


def test_a_step_that_differs_from_the_forward_in_the_last_bit_is_refused():
    import torch

    from workers.core.inference import decode_step

    model = tiny("LlamaForCausalLM", num_key_value_heads=2)
    step = nudge(decode_step.build(model)[0])
    with torch.inference_mode():
        why = decode_step.verify(step, lambda ids, cache: forward(model, ids, cache),
                                 lambda size: sequence_cache(model, size), model.config.vocab_size)
    assert why is not None and why.startswith("logits differ at position 3")


def test_a_norm_that_is_not_plain_rms_runs_as_its_own_module():
    import torch

    from workers.core.inference.decode_step import _norm

    class OffsetNorm(torch.nn.Module):  # Gemma-style (1 + weight): F.rms_norm would be wrong
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.randn(16)), 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)

    module = OffsetNorm()
    assert _norm(module) is module
    llama_norm = tiny("LlamaForCausalLM").model.norm
    assert _norm(llama_norm) is not llama_norm  # plain RMS: one F.rms_norm, bitwise the module's


def test_an_engine_decodes_a_solo_request_on_the_verified_lean_step_and_equals_generate(serve_model_dir, reference_model):
    engine = make_engine(serve_model_dir)
    try:
        step = engine.runner.decode_step
        assert step is not None  # built and verified before start() returned
        calls = []
        engine.runner.decode_step = lambda *args: calls.append(args[2]) or step(*args)
        ids = reference_model[1](PROMPTS[2])["input_ids"]
        handle = engine.submit(greedy_request(ids, 16))
        assert handle.result(30)["type"] == "end"
        assert handle.token_ids == reference_tokens(reference_model, ids, 16)
        # every token after the first (the prefill's) came from the step, at its own position
        assert calls == list(range(len(ids), len(ids) + len(handle.token_ids) - 1))
    finally:
        engine.close()


def test_an_engine_whose_lean_step_disagrees_serves_on_the_models_forward(serve_model_dir, reference_model, monkeypatch):
    from workers.core.inference import decode_step

    real_build = decode_step.build

    def off_by_a_bit(model):
        step, why = real_build(model)
        return nudge(step), why

    monkeypatch.setattr(decode_step, "build", off_by_a_bit)
    engine = make_engine(serve_model_dir)
    try:
        assert engine.runner.decode_step is None
        ids = reference_model[1](PROMPTS[2])["input_ids"]
        handle = engine.submit(greedy_request(ids, 16))
        assert handle.result(30)["type"] == "end"
        assert handle.token_ids == reference_tokens(reference_model, ids, 16)
    finally:
        engine.close()


def test_cpu_linear_aten_serves_on_the_models_own_forward(serve_model_dir):
    engine = make_engine(serve_model_dir, cpu_linear="aten")
    try:
        assert engine.runner.decode_step is None and not engine.runner.lean_decode
    finally:
        engine.close()


def greedy_request(ids, n):
    from workers.core.inference.engine import EngineRequest

    return EngineRequest(prompt_ids=ids, sampling=greedy(n))
