"""Weight quantization of a full model folder: int8 with torchao (CPU or GPU) and 4-bit NF4 with
bitsandbytes (CUDA only).

int8 design. torchao's Int8WeightOnlyConfig (per-row symmetric int8 weights, activations in
the compute dtype) is applied to every Linear AND to the input embedding. transformers 5
serialises torchao tensors to safetensors itself (flattened ``x._weight_qdata`` /
``x._weight_scale`` tensors plus a JSON layout in the file metadata, rebuilt on load from an
allowlist of torchao classes, never with pickle), and `from_pretrained` reloads such a folder
with no extra arguments. We still write the weights file ourselves, because:
- quantizing only the Linears leaves the embedding in bf16. For SmolLM2-135M (a 49k x 576
  embedding tied to the output head, 21% of the weights) that gives 0.61 of the bf16 bytes;
  the embedding must be int8 too to reach <= 0.6;
- with tied embeddings, transformers' save_pretrained then writes the shared int8 tensor
  twice (its tied-weight de-duplication does not see through the flattened names), and the
  reload crashes comparing the two copies (aten.equal is not implemented for Int8Tensor).
So the state dict is flattened with torchao's own `flatten_tensor_state_dict` after dropping
the tied aliases (lm_head.weight), which on reload transformers re-ties to the int8 embedding
exactly as it does for an unquantized tied model. config.json gets the matching
TorchAoConfig, so loading is plain `AutoModelForCausalLM.from_pretrained(folder)`.
"""
from __future__ import annotations

from pathlib import Path

from ..reporting import Reporter, check_cancelled
from .errors import ModelFolderError
from .facts import FolderFacts
from .loading import load_causal_lm
from .saving import save_with_tokenizer, write_model_folder
from .validation import ADAPTER, CONFIG, check_folder, read_json

INT8_WEIGHTS_FILE = "model.safetensors"
CPU_ERROR = "4-bit quantization needs a CUDA GPU; int8 runs on CPU"


def quantize_int8(src_dir: Path, out_dir: Path, reporter: Reporter, *, compute_dtype: str = "bfloat16") -> FolderFacts:
    """int8 weight-only copy of the model in `src_dir`, written atomically to `out_dir`.

    `compute_dtype` is the dtype of activations and of the weights left unquantized (norms);
    bf16 halves those and is what the size target (<= 0.6 of the bf16 model) is measured on."""
    src_dir = Path(src_dir)
    _require_full_precision_model(src_dir)
    reporter.progress(0.0, "Loading the model")
    model, tokenizer = load_causal_lm(src_dir, dtype=compute_dtype)
    check_cancelled(reporter)
    reporter.progress(0.4, "Quantizing Linear and embedding weights to int8 (torchao)")
    config = _quantize_int8_in_place(model)
    check_cancelled(reporter)
    reporter.progress(0.7, "Saving the int8 model")

    def write(folder: Path) -> None:
        _save_torchao_model(model, config, folder)
        tokenizer.save_pretrained(folder)

    facts = write_model_folder(out_dir, reporter, write)
    reporter.log(f"int8 model: {facts.size_bytes:,} bytes, {facts.parameter_count:,} parameters")
    reporter.progress(1.0, "Quantized to int8")
    return facts


def quantize_4bit(src_dir: Path, out_dir: Path, reporter: Reporter) -> FolderFacts:
    """NF4 (double-quantized, bf16 compute) copy with bitsandbytes; needs a CUDA GPU."""
    import torch

    # Checked before importing bitsandbytes, whose CPU import is slow and noisy.
    if not torch.cuda.is_available():
        raise ModelFolderError("device", CPU_ERROR)
    src_dir = Path(src_dir)
    _require_full_precision_model(src_dir)
    try:
        import bitsandbytes  # noqa: F401  (transformers needs it for the 4-bit layers)
    except ImportError:
        raise ModelFolderError("bitsandbytes", "is not installed (pip install bitsandbytes)") from None
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .loading import MODEL_LOAD_OPTIONS, load_tokenizer

    reporter.progress(0.0, "Loading and quantizing the model to NF4 (bitsandbytes)")
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        src_dir, quantization_config=config, device_map="cuda", use_safetensors=True, **MODEL_LOAD_OPTIONS
    )
    check_cancelled(reporter)
    reporter.progress(0.7, "Saving the 4-bit model")
    facts = write_model_folder(out_dir, reporter, save_with_tokenizer(model, load_tokenizer(src_dir)))
    reporter.progress(1.0, "Quantized to NF4")
    return facts


def _require_full_precision_model(src_dir: Path) -> None:
    kind, _ = check_folder(src_dir)
    if kind == ADAPTER:
        raise ModelFolderError(str(src_dir), "is an adapter: merge it into its base, then quantize the merged model")
    if "quantization_config" in read_json(src_dir, CONFIG):
        raise ModelFolderError(str(src_dir), "is already quantized")


def _quantize_int8_in_place(model):
    """Apply torchao int8 weight-only to Linear and Embedding modules; returns the
    TorchAoConfig that describes the result in config.json."""
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from transformers import TorchAoConfig

    # set_inductor_config=False: that option tunes torch.compile globally, a side effect a
    # worker process serving other jobs should not get from a quantization.
    int8 = Int8WeightOnlyConfig(set_inductor_config=False)
    quantize_(model, int8, filter_fn=lambda module, _name: isinstance(module, (torch.nn.Linear, torch.nn.Embedding)))
    if model.all_tied_weights_keys:
        # quantize_ replaced the embedding's Parameter (and the head's, separately): re-share
        # the int8 embedding with the output head, as in the source model.
        model.tie_weights(recompute_mapping=True)
    return TorchAoConfig(quant_type=int8, include_input_output_embeddings=True)


def _save_torchao_model(model, quantization_config, folder: Path) -> None:
    """config.json + generation_config.json + one safetensors file with torchao's flattened
    layout (see the module docstring for why not model.save_pretrained)."""
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    state = model.state_dict()
    for alias in model.all_tied_weights_keys:  # {"lm_head.weight": "model.embed_tokens.weight"}
        state.pop(alias, None)
    tensors, metadata = flatten_tensor_state_dict(state)
    metadata["format"] = "pt"
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    save_file(tensors, folder / INT8_WEIGHTS_FILE, metadata=metadata)
    model.config.quantization_config = quantization_config
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
