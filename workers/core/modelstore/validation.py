"""Safety rules for Hugging Face layout folders, shared by folder inspection, archive
extraction and loading.

Only safetensors weights are ever loaded and remote code is never trusted, so a folder is
refused outright when it holds anything that could execute on load: pickle-based weights
(torch.load runs arbitrary code), Python files (custom modelling code), or a config whose
``auto_map`` points at such code. Symlinks are refused too: they could make a registry folder
read (or a later write clobber) files outside it.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import ModelFolderError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so")

CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

BASE = "base"
ADAPTER = "adapter"


def refuse_forbidden_name(name: str) -> None:
    """Refuse a file name (folder-relative or archive member) by its suffix alone."""
    lowered = name.lower()
    if lowered.endswith(PICKLE_SUFFIXES):
        raise ModelFolderError(name, "pickle weights are refused (only .safetensors weights are loaded)")
    if lowered.endswith(CODE_SUFFIXES):
        raise ModelFolderError(name, "custom code is refused (trust_remote_code is never enabled)")


def list_files(folder: Path) -> list[str]:
    """Every regular file under `folder`, as sorted posix paths relative to it.

    Refuses symlinks (to files or folders), special files (fifos, devices, sockets) and
    forbidden names, naming the first offender."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise ModelFolderError(str(folder), "not a folder")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            full = Path(root, name)
            rel = full.relative_to(folder).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise ModelFolderError(rel, "symlinks are refused (a model folder must be self-contained)")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ModelFolderError(rel, "not a regular file (fifos, devices and sockets are refused)")
            refuse_forbidden_name(rel)
            found.append(rel)
    return sorted(found)


def read_json(folder: Path, name: str) -> dict:
    try:
        data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(name, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(name, "must hold a JSON object")
    return data


def refuse_code_hooks(folder: Path, files: list[str]) -> None:
    """transformers' ``auto_map`` (in config.json, tokenizer_config.json, processor configs...)
    names classes in Python files shipped with the model; refuse it even though we never pass
    trust_remote_code, so such a folder fails at upload instead of at load."""
    for name in files:
        if "/" in name or not name.endswith("config.json"):
            continue
        if "auto_map" in read_json(folder, name):
            raise ModelFolderError(name, "custom code (auto_map) is refused (trust_remote_code is never enabled)")


def folder_kind(folder: Path, files: list[str]) -> str:
    """"adapter" for a PEFT adapter folder, "base" for a full model; refuses a folder that is
    neither or has no safetensors weights."""
    top = {name for name in files if "/" not in name}
    if ADAPTER_CONFIG in top and (ADAPTER_WEIGHTS in top or CONFIG not in top):
        if ADAPTER_WEIGHTS not in top:
            raise ModelFolderError(
                ADAPTER_WEIGHTS, "missing: an adapter folder needs adapter_config.json and adapter_model.safetensors"
            )
        return ADAPTER
    if CONFIG not in top:
        raise ModelFolderError(
            CONFIG,
            "missing: a model folder needs config.json (or adapter_config.json and "
            "adapter_model.safetensors for an adapter)",
        )
    if not any(name.endswith(".safetensors") for name in top):
        raise ModelFolderError("model.safetensors", "missing: the folder has no *.safetensors weights")
    if SAFETENSORS_INDEX in top:
        shards = set(read_json(folder, SAFETENSORS_INDEX).get("weight_map", {}).values())
        for shard in sorted(shards - top):
            raise ModelFolderError(shard, f"missing: listed in {SAFETENSORS_INDEX}")
    return BASE


def check_folder(folder: Path) -> tuple[str, list[str]]:
    """All safety and layout rules, without hashing: (kind, files). Cheap enough to run before
    every load."""
    files = list_files(folder)
    refuse_code_hooks(folder, files)
    return folder_kind(folder, files), files
