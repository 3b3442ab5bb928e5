"""The plain runner's oneDNN linears (workers/core/inference/onednn_linear.py) and the passing
thread that keeps engine loads from leaving an OpenMP pool behind. Greedy parity of the engine
with `generate` on these linears is in test_engine.py (its engines use the default, onednn)."""
from __future__ import annotations

import threading

import pytest

from tests.core.inference.conftest import make_engine


def _linear_kinds(model) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for module in model.modules():
        if "Linear" in type(module).__name__:
            kinds[type(module).__name__] = kinds.get(type(module).__name__, 0) + 1
    return kinds


def test_the_switched_linears_compute_what_torch_linear_computes_and_keep_their_parameters():
    import torch

    from workers.core.inference.onednn_linear import use_onednn_linears

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 32, bias=False))
    first = model[0]
    x = torch.randn(3, 5, 64)
    with torch.inference_mode():
        expected = model(x).clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_onednn_linears(model) == 2
    assert all(isinstance(layer, torch.nn.Linear) for layer in (model[0], model[2]))
    assert type(model[0]).__name__ == "OneDNNLinear"
    with torch.inference_mode():
        got = model(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model[0] is first  # switched in place: references held elsewhere (peft, hooks) stay valid


def test_a_switched_linear_still_trains_through_torchs_own_linear():
    import torch

    from workers.core.inference.onednn_linear import use_onednn_linears

    layer = torch.nn.Linear(8, 4)
    use_onednn_linears(layer)
    layer(torch.randn(2, 8)).sum().backward()  # oneDNN's op has no autograd formula: aten takes over
    assert layer.weight.grad is not None and layer.weight.grad.shape == (4, 8)


def test_quantized_and_non_fp32_linears_are_left_alone():
    import torch

    from workers.core.inference.onednn_linear import use_onednn_linears

    half = torch.nn.Linear(8, 8).to(torch.bfloat16)
    quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 8)), {torch.nn.Linear})
    assert use_onednn_linears(half) == 0 and type(half) is torch.nn.Linear
    assert use_onednn_linears(quantized) == 0


def test_the_engine_runs_onednn_linears_by_default_and_torchs_own_when_asked(serve_model_dir):
    default, aten = make_engine(serve_model_dir), make_engine(serve_model_dir, cpu_linear="aten")
    try:
        assert set(_linear_kinds(default.model)) == {"OneDNNLinear"}
        assert set(_linear_kinds(aten.model)) == {"Linear"}
    finally:
        default.close()
        aten.close()


def test_an_int8_engine_keeps_its_quantized_linears(serve_model_dir):
    engine = make_engine(serve_model_dir, quantize="int8-dynamic")
    try:
        assert "OneDNNLinear" not in _linear_kinds(engine.model)
    finally:
        engine.close()


def test_the_cpu_linear_setting_is_validated():
    from workers.core.inference.engine import EngineConfig
    from workers.core.specs import SpecError

    with pytest.raises(SpecError, match="cpu_linear"):
        EngineConfig(cpu_linear="mkl").validate()


def test_work_in_a_passing_thread_returns_its_result_or_raises_its_error_on_the_caller():
    from workers.core.inference.engine import run_in_passing_thread

    names = []
    assert run_in_passing_thread(lambda: names.append(threading.current_thread().name) or 42) == 42
    assert names and names[0] != threading.current_thread().name
    with pytest.raises(ValueError, match="bad folder"):
        run_in_passing_thread(lambda: (_ for _ in ()).throw(ValueError("bad folder")))
    assert not any(thread.name == "passing-torch-work" for thread in threading.enumerate())


def test_an_engine_closed_and_started_again_serves_the_same_greedy_tokens(serve_model_dir):
    from workers.core.inference.engine import EngineRequest
    from workers.core.inference.sampling import SamplingParams

    engine = make_engine(serve_model_dir)
    try:
        def tokens():
            handle = engine.submit(EngineRequest(prompt="ROMEO:", sampling=SamplingParams(max_tokens=8, temperature=0.0)))
            handle.result(timeout=60)
            return handle.token_ids

        first = tokens()
        engine.close()
        engine.start()  # weights stay loaded: the runner is built again
        assert tokens() == first and len(first) == 8
    finally:
        engine.close()



def test_warming_builds_each_decode_shape_once_per_process_whatever_the_weights(monkeypatch):
    import torch

    from workers.core.inference import onednn_linear

    # shapes no other test uses: the primitive cache and the warmed set are per process
    model = torch.nn.Sequential(torch.nn.Linear(72, 40), torch.nn.Linear(40, 72, bias=False), torch.nn.Linear(72, 40))
    twin = torch.nn.Sequential(torch.nn.Linear(72, 40))
    assert onednn_linear.use_onednn_linears(model) == 3 and onednn_linear.use_onednn_linears(twin) == 1
    cls = onednn_linear.onednn_linear_class()
    calls = []
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x: calls.append((tuple(x.shape), self.out_features)) or original(self, x))
    assert onednn_linear.warm_primitives(model, 3) == 6  # two distinct shapes x rows 1..3
    assert sorted(calls) == sorted(((rows, 1, inputs), outputs) for rows in (1, 2, 3) for inputs, outputs in ((72, 40), (40, 72)))
    assert onednn_linear.warm_primitives(twin, 3) == 0  # the same shape with other weights: already built
    assert onednn_linear.warm_primitives(model, 4) == 2  # only the new row count


def test_the_engine_warms_its_decode_shapes_up_to_max_concurrent(serve_model_dir):
    from workers.core.inference import onednn_linear
    from workers.core.inference.engine import EngineRequest
    from workers.core.inference.sampling import SamplingParams

    engine = make_engine(serve_model_dir, max_concurrent=5)
    try:
        request = EngineRequest(prompt="ROMEO:", sampling=SamplingParams(max_tokens=2, temperature=0.0))
        assert engine.submit(request).result(60)["type"] == "end"  # served after the warm-up
        config = engine.model.config
        for rows in range(1, 6):
            assert (config.hidden_size, 2 * config.intermediate_size, False, rows) in onednn_linear._warmed  # gate|up
            assert (config.intermediate_size, config.hidden_size, False, rows) in onednn_linear._warmed  # down
            assert (config.hidden_size, config.vocab_size, False, rows) in onednn_linear._warmed  # the head too
    finally:
        engine.close()


def _tiny_llama(seed=0, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=96, vocab_size=120, max_position_embeddings=64)
    settings.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


@pytest.mark.parametrize("bias", [False, True])
def test_fused_projections_give_the_separate_layers_results_with_their_parameters_as_views(bias):
    import torch

    from workers.core.inference.onednn_linear import fuse_projections, use_onednn_linears

    model = _tiny_llama(attention_bias=bias, mlp_bias=bias)
    ids = torch.randint(0, 120, (3, 9), generator=torch.Generator().manual_seed(1))
    use_onednn_linears(model)
    with torch.inference_mode():
        expected = model(input_ids=ids).logits.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert fuse_projections(model) == 4  # q|k|v and gate|up in each of 2 layers
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert type(attention.q_proj).__name__ == "FusedLead" and type(attention.v_proj).__name__ == "FusedFollower"
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the layers' weights are views of the group's one weight: no second copy of the weights
    fused = mlp.gate_proj.fused_weight
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert fused.untyped_storage().nbytes() == fused.numel() * fused.element_size()
    with torch.no_grad():  # an in-place update of a layer's weight (a merged adapter) reaches the group's product
        attention.k_proj.weight.mul_(0)
        hidden = torch.randn(2, 48)
        attention.q_proj(hidden)
        handed = attention.k_proj(hidden)
    zeros = torch.zeros(2, attention.k_proj.out_features)
    assert torch.allclose(handed, zeros + attention.k_proj.bias if bias else zeros)


def test_a_follower_called_with_another_input_or_with_gradients_computes_its_own_product():
    import torch

    from workers.core.inference.onednn_linear import fuse_projections, use_onednn_linears

    model = _tiny_llama()
    use_onednn_linears(model)
    fuse_projections(model)
    mlp = model.model.layers[1].mlp
    first, other = torch.randn(4, 48), torch.randn(4, 48)
    with torch.inference_mode():
        mlp.gate_proj(first)  # hands up_proj its slice for `first` ...
        got = mlp.up_proj(other)  # ... which is not this input's
        assert torch.allclose(got, torch.nn.functional.linear(other, mlp.up_proj.weight), atol=1e-5)
        mlp.gate_proj(first)
        assert torch.allclose(mlp.up_proj(first), torch.nn.functional.linear(first, mlp.up_proj.weight), atol=1e-5)
        assert mlp.up_proj.handed is None  # a handed slice is used once and let go
    loss = mlp(torch.randn(2, 48, requires_grad=True)).sum()  # training: every layer its own ATen product
    loss.backward()
    assert mlp.gate_proj.weight.grad is not None and mlp.up_proj.weight.grad is not None
