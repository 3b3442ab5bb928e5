"""Dataset jobs as the job system runs them: import (validate, normalize, measure), clean, and
generate. Paths in the specs are built by the server from ids (apps/datasets/services.py)."""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.core import paths
from workers.core.reporting import Reporter, check_cancelled
from workers.core.specs import SpecError, build_spec, require_range, short


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tokenizer(tokenizer_dir: str):
    if not tokenizer_dir:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, trust_remote_code=False)


def _stats(path: Path, canonical: str, tokenizer_dir: str, max_length: int, reporter: Reporter) -> dict:
    from workers.core.data.formats import dataset_stats

    reporter.progress(0.8, "measuring rows, tokens and languages")
    stats = dataset_stats(path, canonical, _tokenizer(tokenizer_dir), max_length=max_length or None)
    return {**stats, "max_length": max_length or None}


@dataclass
class DatasetImportSpec:
    path: str = ""
    filename: str = ""
    format: str = ""  # "" = detect
    column_map: dict = field(default_factory=dict)
    output_path: str = ""
    exclude_invalid: bool = False
    tokenizer_dir: str = ""
    max_length: int = 0
    hub_id: str = ""  # a dataset repository on a model hub: downloaded to `path` first
    hub_file: str = ""  # the file in that repository

    def validate(self) -> None:
        # `path` is the stored upload (or, for a hub import, where the download is written).
        paths.writable("path", self.path, paths.UPLOADS)
        paths.writable("output_path", self.output_path, paths.DATASETS)
        if self.tokenizer_dir:
            paths.readable("tokenizer_dir", self.tokenizer_dir, paths.MODELS, starter=True)
        require_range("max_length", self.max_length, 0, 1_000_000)
        if self.hub_id and ("/" not in self.hub_id or not self.hub_file):
            raise SpecError("hub_id", f"expected a dataset id like 'org/name' and a file in it, got {short(self.hub_id)} / {short(self.hub_file)}")


def download_from_hub(hub_id: str, hub_file: str, target: Path, reporter: Reporter) -> None:
    """Fetch one data file of a hub dataset repository (when this machine can reach a hub)."""
    import shutil

    from workers.core.data.formats import DataFileError

    reporter.log(f"downloading {hub_file} from the hub dataset {hub_id}")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        from workers.core import hub_limits

        hub_limits.check_listing(hub_id, repo_type="dataset", filename=hub_file)  # the size cap, before fetching
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            fetched = hf_hub_download(hub_id, hub_file, repo_type="dataset", local_dir=tmp, etag_timeout=10)
            hub_limits.check_downloaded(hub_id, Path(fetched))
            shutil.move(fetched, target)
    except LocalEntryNotFoundError:
        raise DataFileError(hub_file, f"cannot reach the hub to fetch {hub_id!r} (this machine is offline); "
                                            "upload the file instead") from None
    except ImportError:  # pragma: no cover - installed with transformers
        raise DataFileError(hub_file, "huggingface_hub is not installed on this worker") from None
    except Exception as exc:
        raise DataFileError(hub_file, f"could not fetch it from {hub_id!r}: {exc}") from None


def run_dataset_import(spec: DatasetImportSpec, reporter: Reporter) -> dict:
    """Validate every record; with errors and no permission to exclude them, stop there and
    return the report (no version). Otherwise write the normalized version and measure it."""
    from workers.core.data import formats

    if spec.hub_id and not Path(spec.path).exists():
        download_from_hub(spec.hub_id, spec.hub_file, Path(spec.path), reporter)
    reporter.progress(0.05, "validating every record")
    report = formats.validate(Path(spec.path), spec.filename, spec.format or None, spec.column_map or None)
    summary = asdict(report)
    reporter.log(f"{spec.filename}: {report.format} ({report.container}), {report.valid} of {report.total} records valid")
    for reason, count in sorted(report.error_counts.items(), key=lambda item: -item[1]):
        reporter.log(f"{count} × {reason}", "warning")
    if report.valid == 0:
        return {"report": summary, "created": False, "reason": "no valid record"}
    if report.valid < report.total and not spec.exclude_invalid:
        return {"report": summary, "created": False, "reason": "invalid records: fix the file, or exclude them"}
    check_cancelled(reporter)
    reporter.progress(0.4, "writing the normalized version")
    written = formats.write_normalized(Path(spec.path), spec.filename, report.format, Path(spec.output_path),
                                       spec.column_map or None, exclude_invalid=spec.exclude_invalid)
    check_cancelled(reporter)
    stats = _stats(Path(spec.output_path), report.canonical, spec.tokenizer_dir, spec.max_length, reporter)
    reporter.progress(1.0, f"{written.rows} rows")
    return {"report": summary, "created": True, "format": report.format, "canonical": report.canonical,
            "rows": written.rows, "sha256": written.sha256, "size_bytes": written.size_bytes,
            "excluded_lines": written.excluded_lines, "stats": stats}


@dataclass
class DatasetCleanSpec:
    input_path: str = ""
    canonical: str = ""
    output_path: str = ""
    cleaning: dict = field(default_factory=dict)  # CleaningSpec fields
    eval_paths: list = field(default_factory=list)
    eval_canonicals: list = field(default_factory=list)
    eval_names: list = field(default_factory=list)  # shown in the report instead of file names

    def validate(self) -> None:
        paths.readable("input_path", self.input_path, paths.DATASETS)
        paths.writable("output_path", self.output_path, paths.DATASETS)
        paths.readable_list("eval_paths", self.eval_paths, paths.DATASETS)
        if len(self.eval_paths) != len(self.eval_canonicals):
            raise SpecError("eval_canonicals", "needs one canonical format per evaluation path")
        from workers.core.data.cleaning import CleaningSpec

        try:  # checked at submit time, so a typo in a threshold never reaches a worker
            build_spec(CleaningSpec, self.cleaning)
        except SpecError as exc:
            raise SpecError(f"cleaning.{exc.field}", exc.reason) from None


def run_dataset_clean(spec: DatasetCleanSpec, reporter: Reporter) -> dict:
    from workers.core.data.cleaning import CleaningSpec, run_cleaning

    cleaning = build_spec(CleaningSpec, spec.cleaning)
    report = run_cleaning(Path(spec.input_path), Path(spec.output_path), spec.canonical, cleaning, reporter,
                          eval_paths=[Path(p) for p in spec.eval_paths], eval_canonicals=list(spec.eval_canonicals),
                          eval_names=list(spec.eval_names))
    out = Path(spec.output_path)
    stats = _stats(out, spec.canonical, "", 0, reporter)
    return {"created": True, "format": spec.canonical, "canonical": spec.canonical, "rows": report["output_docs"],
            "sha256": sha256_file(out), "size_bytes": out.stat().st_size, "excluded_lines": [], "stats": stats,
            "cleaning_report": report, "cleaning": asdict(cleaning)}


# arithmetic: English GSM8K-style word problems; arithmetic_zh: the same in Chinese (qa both).
GENERATORS = ("arithmetic", "arithmetic_zh", "tool_use", "tool_use_sharegpt")


@dataclass
class DatasetGenerateSpec:
    generator: str = "arithmetic"
    n: int = 1000
    seed: int = 0
    output_path: str = ""

    def validate(self) -> None:
        if self.generator not in GENERATORS:
            raise SpecError("generator", f"must be one of {', '.join(GENERATORS)}, got {short(self.generator)}")
        require_range("n", self.n, 1, 1_000_000)
        paths.writable("output_path", self.output_path, paths.DATASETS)


def run_dataset_generate(spec: DatasetGenerateSpec, reporter: Reporter) -> dict:
    """Generated records go through the same importer as an upload, so they are validated and
    normalized exactly like user data (ShareGPT ones are converted on the way)."""
    from workers.core.data import generators

    if spec.generator == "arithmetic":
        records, fmt = generators.arithmetic_word_problems(spec.n, spec.seed), "qa"
    elif spec.generator == "arithmetic_zh":
        records, fmt = generators.arithmetic_word_problems_zh(spec.n, spec.seed), "qa"
    else:
        style = "sharegpt" if spec.generator == "tool_use_sharegpt" else "messages"
        records, fmt = generators.tool_use_dialogues(spec.n, spec.seed, style=style), style
    out = Path(spec.output_path)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / f"{spec.generator}.jsonl"
        generators.write_jsonl(records, raw)
        return run_dataset_import(DatasetImportSpec(path=str(raw), filename=raw.name, format=fmt, output_path=str(out)), reporter)
