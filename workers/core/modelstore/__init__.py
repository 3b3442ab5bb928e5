"""The model registry's plain-Python core: validate, describe, extract, convert, load, merge,
quantize, evaluate and export Hugging Face layout model folders.

Importing this package is cheap: torch, transformers, peft and torchao are imported inside the
functions that need them. Only safetensors weights are ever loaded and remote code is never
trusted (see validation.py).
"""
from .archive import safe_extract_archive
from .errors import ModelFolderError
from .evaluate import perplexity
from .export import archive_size, archive_stream
from .facts import FileFact, FolderFacts, inspect_folder
from .gguf import convert_gguf, find_starter_gguf, import_starter
from .loading import load_causal_lm
from .merge import merge_adapter
from .quantize import quantize_4bit, quantize_int8

__all__ = [
    "FileFact",
    "FolderFacts",
    "ModelFolderError",
    "archive_size",
    "archive_stream",
    "convert_gguf",
    "find_starter_gguf",
    "import_starter",
    "inspect_folder",
    "load_causal_lm",
    "merge_adapter",
    "perplexity",
    "quantize_4bit",
    "quantize_int8",
    "safe_extract_archive",
]
