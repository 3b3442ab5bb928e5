"""What the registry records about a model folder, read from its files without loading a model:
parameter count and dtype from the safetensors headers, context length and architecture from
config.json, LoRA settings from adapter_config.json, and a sha256 of every file."""
from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelFolderError
from .validation import ADAPTER, ADAPTER_CONFIG, CONFIG, check_folder, read_json

# A safetensors file starts with an 8-byte little-endian header length, then a JSON header.
# Real headers are at most a few MB; the cap stops a hostile file from making us read GBs.
MAX_HEADER_BYTES = 100 * 2**20
HASH_CHUNK = 2**20

SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"}
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass
class FileFact:
    path: str  # relative to the folder, posix
    size: int
    sha256: str


@dataclass
class FolderFacts:
    kind: str
    architecture: str
    model_type: str
    parameter_count: int
    context_length: int | None
    dtype: str
    size_bytes: int
    files: list[FileFact] = field(default_factory=list)
    has_chat_template: bool = False
    adapter: dict | None = None
    quantization: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FolderFacts":
        """The inverse of to_dict (e.g. for facts stored as JSON in the database)."""
        return cls(**{**data, "files": [FileFact(**fact) for fact in data.get("files", [])]})


@dataclass
class TensorStats:
    """Totals over the safetensors files of a folder."""

    parameter_count: int = 0
    elements_by_dtype: Counter = field(default_factory=Counter)


def read_safetensors_header(path: Path, name: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file: {tensor name: {"dtype", "shape", ...}} and the
    free-form string metadata (where torchao records its quantized tensor layout)."""
    try:
        with open(path, "rb") as handle:
            raw_length = handle.read(8)
            if len(raw_length) < 8:
                raise ModelFolderError(name, "not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", raw_length)
            if length > MAX_HEADER_BYTES:
                raise ModelFolderError(name, f"not a safetensors file (header of {length} bytes)")
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(name, f"not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFolderError(name, "not a safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelFolderError(name, "not a safetensors file (__metadata__ is not an object)")
    for tensor, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        valid_shape = isinstance(shape, list) and all(isinstance(dim, int) and dim >= 0 for dim in shape)
        if not valid_shape or not isinstance(info.get("dtype"), str):
            raise ModelFolderError(name, f"not a safetensors file (bad entry for {tensor!r})")
    return header, metadata


def numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def tensor_stats(folder: Path, weight_files: list[str]) -> TensorStats:
    """Parameter count and element count per dtype, from headers only.

    Tied weights are stored once by transformers, so summing the stored tensors counts each
    parameter once (as `sum(p.numel() for p in model.parameters())` does). Quantized layouts
    store one parameter as several tensors; it counts as its original number of weights and
    the scales/zero points are bookkeeping:
    - torchao (listed in the file metadata): ``x._weight_qdata`` holds the int8 weights,
      ``x._weight_scale``/``x._weight_zero_point`` are skipped;
    - bitsandbytes 4-bit: ``x.weight`` packs two weights per uint8, ``x.weight.absmax``,
      ``x.weight.quant_map``, ``x.weight.quant_state.*``... are skipped."""
    stats = TensorStats()
    for name in weight_files:
        tensors, metadata = read_safetensors_header(folder / name, name)
        torchao_parts = torchao_quantized_parts(metadata)
        packed_4bit = {t.split(".quant_state.")[0] for t in tensors if ".quant_state.bitsandbytes__" in t}
        for tensor, info in tensors.items():
            count = numel(info["shape"])
            if tensor in torchao_parts and not tensor.endswith("_qdata"):
                continue
            if any(tensor.startswith(f"{weight}.") for weight in packed_4bit):
                continue
            if tensor in packed_4bit:
                count *= 2
            stats.parameter_count += count
            dtype = SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"].lower())
            stats.elements_by_dtype[dtype] += count
    return stats


def torchao_quantized_parts(metadata: dict) -> set[str]:
    """Flattened tensor names (``x._weight_qdata``, ``x._weight_scale``...) of the torchao
    tensor subclasses described in a safetensors file's metadata (the layout written by
    torchao.prototype.safetensors.flatten_tensor_state_dict)."""
    try:
        names = json.loads(metadata.get("tensor_names", "[]"))
    except (json.JSONDecodeError, TypeError):
        return set()
    parts = set()
    for name in names if isinstance(names, list) else []:
        try:
            layout = json.loads(metadata.get(name, "{}"))
        except (json.JSONDecodeError, TypeError):
            continue
        if not isinstance(layout, dict) or layout.get("_type") in (None, "Tensor"):
            continue
        module, _, parameter = name.rpartition(".")
        for key in ("_tensor_data_names", "optional_tensor_data_names"):
            listed = layout.get(key)
            parts.update(f"{module}._{parameter}_{part}" for part in (listed if isinstance(listed, list) else []))
    return parts


def quantization_facts(config: dict) -> dict | None:
    """A short description of config.json's ``quantization_config`` (None if not quantized)."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    method = quant.get("quant_method", "unknown")
    if method == "torchao":
        quant_type = (quant.get("quant_type") or {}).get("default", {}).get("_type", "")
        if quant_type == "Int8WeightOnlyConfig":
            return {"method": "torchao-int8-weight-only", "bits": 8}
        return {"method": f"torchao-{quant_type or 'unknown'}", "bits": None}
    if method == "bitsandbytes":
        if quant.get("load_in_4bit"):
            return {"method": f"bitsandbytes-{quant.get('bnb_4bit_quant_type', 'nf4')}", "bits": 4}
        return {"method": "bitsandbytes-int8", "bits": 8}
    return {"method": str(method), "bits": quant.get("bits")}


def dominant_dtype(stats: TensorStats, config: dict) -> str:
    """The floating dtype holding most elements (what a model is "in"), falling back to the
    config's dtype when the files hold none."""
    floats = [(count, dtype) for dtype, count in stats.elements_by_dtype.items() if dtype in FLOAT_DTYPES]
    if floats:
        return max(floats)[1]
    return str(config.get("dtype") or config.get("torch_dtype") or "")


def has_chat_template(folder: Path, files: list[str]) -> bool:
    if any(name in files for name in CHAT_TEMPLATE_FILES):
        return True
    if any(name.startswith("additional_chat_templates/") for name in files):
        return True
    if "tokenizer_config.json" in files:
        return bool(read_json(folder, "tokenizer_config.json").get("chat_template"))
    return False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def context_length(config: dict) -> int | None:
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for source in (config, text_config):
        for key in CONTEXT_KEYS:
            if isinstance(source.get(key), int):
                return source[key]
    return None


def inspect_folder(folder: Path) -> FolderFacts:
    """Validate a Hugging Face layout folder (see validation.py) and describe it."""
    folder = Path(folder)
    kind, files = check_folder(folder)
    weight_files = [name for name in files if name.endswith(".safetensors")]
    file_facts = [
        FileFact(path=name, size=(folder / name).stat().st_size, sha256=sha256_file(folder / name)) for name in files
    ]
    stats = tensor_stats(folder, weight_files)

    if kind == ADAPTER:
        adapter_config = read_json(folder, ADAPTER_CONFIG)
        # PEFT records the base class only for some models (auto_mapping); "" when unknown.
        architecture = str((adapter_config.get("auto_mapping") or {}).get("base_model_class") or "")
        config: dict = {}
        adapter = {
            "r": adapter_config.get("r"),
            "lora_alpha": adapter_config.get("lora_alpha"),
            "target_modules": _target_modules(adapter_config.get("target_modules")),
            "base_model_name_or_path": adapter_config.get("base_model_name_or_path"),
        }
    else:
        config = read_json(folder, CONFIG)
        architectures = config.get("architectures") or [""]
        architecture = str(architectures[0])
        adapter = None

    quantization = quantization_facts(config)
    dtype = dominant_dtype(stats, config)
    if quantization and quantization["method"] == "torchao-int8-weight-only":
        dtype = "int8-weight-only"
    elif quantization and quantization["bits"] == 4:
        dtype = quantization["method"].removeprefix("bitsandbytes-")
    return FolderFacts(
        kind=kind,
        architecture=architecture,
        model_type=str(config.get("model_type", "")),
        parameter_count=stats.parameter_count,
        context_length=context_length(config) if kind != ADAPTER else None,
        dtype=dtype,
        size_bytes=sum(fact.size for fact in file_facts),
        files=file_facts,
        has_chat_template=has_chat_template(folder, files),
        adapter=adapter,
        quantization=quantization,
    )


def _target_modules(value) -> list[str] | str | None:
    # PEFT stores a list (as a set, so in no fixed order) or a regex string.
    return sorted(value) if isinstance(value, (list, tuple, set)) else value
