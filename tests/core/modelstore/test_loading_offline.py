"""Model loads never turn on transformers' hub kernels (use_kernels, on by default since 5.25):
they would be fetched from the hub at run time, and on a CUDA host without the `kernels` package
every load failed (seen on an H200, 2026-12-04). Checked on CPU through the attribute the load
sets, for a base model and for an adapter on its base."""
from workers.core.modelstore.loading import load_causal_lm


def test_a_base_model_loads_without_hub_kernels(tiny_model_dir):
    model, _ = load_causal_lm(tiny_model_dir)
    assert model.use_kernels is False


def test_an_adapter_loads_on_a_base_without_hub_kernels(tiny_adapter_dir, tiny_model_dir):
    model, _ = load_causal_lm(tiny_adapter_dir, base_folder=tiny_model_dir)
    assert model.get_base_model().use_kernels is False
