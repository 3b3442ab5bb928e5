"""The common tail of every job that produces a model folder: write it into a temporary
sibling, check the result with the same rules an upload goes through, then rename it into
place (see atomic.py). A cancel requested while saving still leaves nothing behind."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..reporting import Reporter, check_cancelled
from .atomic import atomic_output_dir
from .facts import FolderFacts, inspect_folder


def write_model_folder(out_dir: Path, reporter: Reporter, write: Callable[[Path], None]) -> FolderFacts:
    with atomic_output_dir(Path(out_dir)) as partial:
        write(partial)
        check_cancelled(reporter)
        facts = inspect_folder(partial)
    return facts


def save_with_tokenizer(model, tokenizer) -> Callable[[Path], None]:
    """A `write` for write_model_folder: transformers' own format (safetensors weights, config,
    generation config) plus the tokenizer with its chat template."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write
