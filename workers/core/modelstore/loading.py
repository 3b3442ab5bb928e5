"""Load a registry folder (base, merged, quantized, or an adapter on its base) with transformers.

Every load re-checks the folder's safety rules first (cheap: no hashing), and passes the
options that keep loading offline and code-free: local_files_only, trust_remote_code=False,
use_safetensors. Quantized folders need nothing special: their config.json carries the
quantization_config and transformers rebuilds the quantized weights from it.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ModelFolderError
from .validation import ADAPTER, BASE, check_folder

# Offline, no custom code, safetensors only: the same for every from_pretrained call here.
SAFE_LOAD_OPTIONS = {"local_files_only": True, "trust_remote_code": False}
# For every model load (registry, serving, training, quantizing, GGUF, the document embedder):
# transformers 5.25 kernelizes layers with kernels fetched from the hub by default (use_kernels=None
# means on), which needs the network, and on CUDA hosts the `kernels` package or the load fails.
MODEL_LOAD_OPTIONS = {**SAFE_LOAD_OPTIONS, "use_kernels": False}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_causal_lm(folder: Path, *, dtype=None, device: str = "cpu", base_folder: Path | None = None):
    """(model, tokenizer) in eval mode.

    `dtype`: a torch dtype or its name ("bfloat16"); None keeps the dtype the folder was saved
    in. `device`: "cpu", "cuda", "cuda:1"... For an adapter folder pass `base_folder`: the base
    is loaded, then the adapter is applied with peft (not merged)."""
    folder = Path(folder)
    kind, _ = check_folder(folder)
    if kind == ADAPTER:
        if base_folder is None:
            raise ModelFolderError(str(folder), "is a LoRA adapter: pass base_folder= (its base model folder)")
        return _load_adapter(folder, Path(base_folder), dtype=dtype, device=device)
    model = _load_base_model(folder, dtype=dtype, device=device)
    return model, load_tokenizer(folder)


def load_tokenizer(*folders: Path):
    """The tokenizer of the first folder that has one (an adapter may carry its own, e.g. with
    added chat tokens; otherwise its base model's applies)."""
    from transformers import AutoTokenizer

    for folder in folders:
        if any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
            return AutoTokenizer.from_pretrained(folder, **SAFE_LOAD_OPTIONS)
    raise ModelFolderError(str(folders[0]), "has no tokenizer (tokenizer.json or tokenizer_config.json)")


def torch_dtype(dtype):
    """None -> "auto" (the saved dtype); a name -> the torch dtype; a torch dtype unchanged."""
    import torch

    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ModelFolderError("dtype", f"unknown dtype {dtype!r} (e.g. float32, bfloat16, float16)")
    return resolved


def _load_base_model(folder: Path, *, dtype, device: str):
    from transformers import AutoModelForCausalLM

    # device_map places the weights directly on the device (and is what bitsandbytes needs).
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch_dtype(dtype), device_map=device, use_safetensors=True, **MODEL_LOAD_OPTIONS
    )
    return model.eval()


def _load_adapter(adapter_folder: Path, base_folder: Path, *, dtype, device: str):
    from peft import PeftModel

    if check_folder(base_folder)[0] != BASE:
        raise ModelFolderError(str(base_folder), "base_folder must be a full model, not an adapter")
    base = _load_base_model(base_folder, dtype=dtype, device=device)
    # PeftModel ignores the adapter's recorded base_model_name_or_path: the base given here is
    # used, and the adapter weights come from adapter_model.safetensors (checked above).
    model = PeftModel.from_pretrained(base, adapter_folder, is_trainable=False)
    return model.eval(), load_tokenizer(adapter_folder, base_folder)
