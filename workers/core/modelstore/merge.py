"""Merge a LoRA adapter into its base model, giving a plain full model (no peft at load)."""
from __future__ import annotations

from pathlib import Path

from ..reporting import Reporter, check_cancelled
from .errors import ModelFolderError
from .facts import FolderFacts
from .loading import load_causal_lm
from .saving import save_with_tokenizer, write_model_folder
from .validation import CONFIG, read_json


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, reporter: Reporter, *, dtype=None) -> FolderFacts:
    """Write base + adapter, merged, into `out_dir` (atomically), with the adapter's tokenizer
    if it has one, else the base's. `dtype` defaults to the base model's saved dtype."""
    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    if (base_dir / CONFIG).is_file() and "quantization_config" in read_json(base_dir, CONFIG):
        # Merging into quantized weights would re-round them: merge into the full-precision
        # model, then quantize the merged one.
        raise ModelFolderError(str(base_dir), "is quantized: merge into the unquantized base, then quantize")
    reporter.progress(0.0, "Loading base model and adapter")
    model, tokenizer = load_causal_lm(adapter_dir, base_folder=base_dir, dtype=dtype)
    check_cancelled(reporter)
    reporter.progress(0.5, "Merging the LoRA weights into the base weights")
    merged = model.merge_and_unload(safe_merge=True)  # safe_merge: refuses NaN/inf results
    check_cancelled(reporter)
    reporter.progress(0.7, "Saving the merged model")
    facts = write_model_folder(out_dir, reporter, save_with_tokenizer(merged, tokenizer))
    reporter.log(f"Merged {adapter_dir.name} into {base_dir.name}: {facts.parameter_count:,} parameters, {facts.dtype}")
    reporter.progress(1.0, "Merged")
    return facts
