"""The cleaning job: read a normalized dataset version, run the stages, write the cleaned version.

One streaming pass. Records are read in chunks of 256 and each chunk goes through the stages in
order — normalize, language, quality, dedup_exact, dedup_near, pii, decontaminate — so a record
dropped by one stage never reaches the next, every stage counts exactly what the previous one
kept, and the batched stages (language identification, MinHash) work on whole chunks. Memory
holds one chunk of records plus the dedup indexes (hashes and signatures, never texts).

A record that no stage modified is written back byte for byte; a modified one (normalize, pii)
is re-serialized in canonical form with its text changed where it lives. The output is written
to a temporary sibling and renamed into place, so a cancelled or failed run leaves nothing at
`out_path`.

Reporting: the cancel flag is checked before every chunk; progress goes out after a chunk when
0.5 s have passed since the last one ("cleaning: 5120/20000 records, 4811 kept" — the stages run
together, so there is one counter for all of them); at the end each stage's kept count is a
metric `kept_after_stage` with step = the stage's position (the funnel), and one log line per
stage. While it runs, the progress message says what each stage has dropped so far and the
metric `records_kept` (step = records read) draws the live curve.
"""
from __future__ import annotations

import json
import os
import time
from array import array
from collections import Counter
from pathlib import Path

from ...modelstore.atomic import disk_full_is_clear
from ...reporting import check_cancelled
from ..schema import CANONICAL_FORMATS, record_text
from .spec import CleaningSpec
from .text import dedup_view, map_text_fields, words_of

STAGES = ("normalize", "language", "quality", "dedup_exact", "dedup_near", "pii", "decontaminate")
CHUNK = 256
PROGRESS_SECONDS = 0.5
MAX_EXAMPLES = 5
EXAMPLE_CHARS = 300


class Doc:
    __slots__ = ("line", "record", "raw", "text", "lang", "_words")

    def __init__(self, line: int, record: dict, raw: str, text: str) -> None:
        self.line, self.record, self.raw, self.text, self.lang = line, record, raw, text, ""
        self._words = None

    def modified(self, fmt: str) -> None:
        self.raw = None
        self.text = record_text(self.record, fmt)
        self._words = None

    @property
    def words(self) -> list[str]:
        """CJK-aware lower-cased tokens of the NFKC text (quality rules, decontamination)."""
        if self._words is None:
            self._words = words_of(self.text)
        return self._words

    def serialized(self) -> str:
        return self.raw if self.raw is not None else json.dumps(self.record, ensure_ascii=False)


class Stage:
    name = ""

    def __init__(self, enabled: bool, fmt: str, spec: CleaningSpec, skip_reason: str = "turned off in the spec"):
        self.enabled, self.fmt, self.spec = enabled, fmt, spec
        self.skip_reason = None if enabled else skip_reason
        self.input_docs = self.kept_docs = self.dropped_docs = 0
        self.input_chars = self.kept_chars = 0
        self.drop_reasons: Counter = Counter()
        self.examples: list[dict] = []
        self.seconds = 0.0

    def run(self, docs: list[Doc]) -> list[Doc]:
        self.input_docs += len(docs)
        self.input_chars += sum(len(d.text) for d in docs)
        if self.enabled and docs:
            started = time.perf_counter()
            docs = self.process(docs)
            self.seconds += time.perf_counter() - started
        self.kept_docs += len(docs)
        self.kept_chars += sum(len(d.text) for d in docs)
        return docs

    def process(self, docs: list[Doc]) -> list[Doc]:
        raise NotImplementedError

    def drop(self, doc: Doc, reason: str, detail: str) -> None:
        self.dropped_docs += 1
        self.drop_reasons[reason] += 1
        self.example(doc, detail)

    def example(self, doc: Doc, detail: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"line": doc.line, "reason": detail, "text": doc.text[:EXAMPLE_CHARS]})

    def extras(self) -> dict:
        return {}

    def report(self) -> dict:
        out = {
            "name": self.name, "enabled": self.enabled,
            "input_docs": self.input_docs, "kept_docs": self.kept_docs, "dropped_docs": self.dropped_docs,
            "input_chars": self.input_chars, "kept_chars": self.kept_chars,
            "drop_reasons": dict(self.drop_reasons.most_common()), "examples": self.examples,
            "seconds": round(self.seconds, 3),
        }
        if self.skip_reason:
            out["skipped"] = self.skip_reason
        out.update(self.extras())
        return out


class NormalizeStage(Stage):
    name = "normalize"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.modified = 0

    def process(self, docs):
        from .normalize import normalize_code, normalize_text

        fn = normalize_code if self.fmt == "code" else normalize_text
        kept = []
        for d in docs:
            if map_text_fields(d.record, self.fmt, fn):
                d.modified(self.fmt)
                self.modified += 1
            if not d.text.strip():
                self.drop(d, "empty", "no text left after normalization")
            else:
                kept.append(d)
        return kept

    def extras(self):
        return {"modified_docs": self.modified}


class LanguageStage(Stage):
    """Always identifies (the report shows the mix); drops only with a keep list."""
    name = "language"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.keep = self.spec.language_codes()
        self.languages: Counter = Counter()

    def process(self, docs):
        from .language import identifier

        langs = identifier().classify([d.text for d in docs])
        kept = []
        for d, lang in zip(docs, langs):
            d.lang = lang
            self.languages[lang] += 1
            if self.keep and lang not in self.keep:
                self.drop(d, f"language:{lang}", f"identified as {lang!r}, not in the keep list "
                                                 f"({', '.join(sorted(self.keep))})")
            else:
                kept.append(d)
        return kept

    def extras(self):
        return {"languages": dict(self.languages.most_common()), "keep": sorted(self.keep)}


class QualityStage(Stage):
    name = "quality"

    def process(self, docs):
        from .quality import quality_issue

        kept = []
        for d in docs:
            issue = quality_issue(d.text, d.lang, self.fmt, self.spec, d.words)
            if issue:
                self.drop(d, *issue)
            else:
                kept.append(d)
        return kept


class ExactDedupStage(Stage):
    name = "dedup_exact"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.seen: dict[int, int] = {}  # 64-bit hash -> line of the kept record

    def process(self, docs):
        from .dedup import exact_key

        kept = []
        for d in docs:
            key = exact_key(d.text)
            first = self.seen.setdefault(key, d.line)
            if first != d.line:
                self.drop(d, "exact_duplicate", f"same text as line {first}")
            else:
                kept.append(d)
        return kept


class NearDedupStage(Stage):
    name = "dedup_near"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.index = None
        self.kept_lines = array("q")  # line of each kept document, by index id

    def process(self, docs):
        if self.index is None:
            from .dedup import NearDuplicateIndex

            self.index = NearDuplicateIndex(self.spec.near_threshold, self.spec.num_perm)
        kept = []
        for d, result in zip(docs, self.index.check([dedup_view(d.text) for d in docs])):
            if result is None:
                self.kept_lines.append(d.line)
                kept.append(d)
            else:
                other, jaccard = result
                self.drop(d, "near_duplicate", f"near-duplicate of line {self.kept_lines[other]} "
                                               f"(estimated Jaccard {jaccard:.2f} >= {self.spec.near_threshold})")
        return kept

    def extras(self):
        from .dedup import SHINGLE, bands

        n_bands, rows = bands(self.spec.near_threshold, self.spec.num_perm)
        return {"threshold": self.spec.near_threshold, "num_perm": self.spec.num_perm,
                "shingle": f"{SHINGLE} columns (CJK characters are 2)", "bands": n_bands, "rows": rows,
                "index_bytes": self.index.memory_bytes() if self.index else 0}


class PiiStage(Stage):
    name = "pii"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        from .pii import KINDS

        self.counts = dict.fromkeys(KINDS, 0)
        self.modified = 0

    def process(self, docs):
        from .pii import mask_pii

        for d in docs:
            found: dict[str, int] = {}
            if map_text_fields(d.record, self.fmt, lambda s: mask_pii(s, found), tool_arguments=True):
                d.modified(self.fmt)
                self.modified += 1
                for kind, n in found.items():
                    self.counts[kind] += n
                self.example(d, "masked " + ", ".join(f"{kind} x{n}" for kind, n in sorted(found.items())))
        return docs

    def extras(self):
        return {"pii": dict(self.counts), "modified_docs": self.modified}


class DecontaminateStage(Stage):
    name = "decontaminate"

    def __init__(self, *args, index=None) -> None:
        super().__init__(*args)
        self.index = index

    def process(self, docs):
        kept = []
        for d, found in zip(docs, self.index.match([d.words for d in docs])):
            if found:
                name, gram = found
                self.drop(d, f"eval:{name}", f"shares the {self.spec.decontam_ngram}-gram '{gram}' with "
                                             f"evaluation set {name}")
            else:
                kept.append(d)
        return kept

    def extras(self):
        index = self.index
        sets = {}
        if index is not None:
            sets = {name: {"items": index.items[name], "ngrams": index.ngrams[name],
                           "items_shorter_than_n": index.short_items[name],
                           "dropped_docs": self.drop_reasons.get(f"eval:{name}", 0)} for name in index.names}
        return {"ngram": self.spec.decontam_ngram, "eval_sets": sets}


def run_cleaning(in_path: Path, out_path: Path, canonical: str, spec: CleaningSpec, reporter, *,
                 eval_paths=(), eval_canonicals=(), eval_names=()) -> dict:
    """Clean the canonical JSONL `in_path` into `out_path`; returns the report (see the module
    docstring of the package). `eval_names` optionally names the evaluation sets in the report
    (default: their file names)."""
    if canonical not in CANONICAL_FORMATS:
        raise ValueError(f"unknown canonical format {canonical!r}")
    spec.validate()
    in_path, out_path = Path(in_path), Path(out_path)
    started = time.monotonic()
    total = _count_lines(in_path)
    check_cancelled(reporter)

    index = None
    if spec.decontaminate and eval_paths:
        from .decontaminate import load_eval_index

        reporter.progress(0.0, f"decontaminate: indexing {len(eval_paths)} evaluation set(s)")
        index = load_eval_index(eval_paths, eval_canonicals, spec.decontam_ngram, names=eval_names,
                                on_file=lambda done, n: check_cancelled(reporter))
    from .language import identifier

    reporter.progress(0.0, "language: loading the langid model")
    identifier()  # ~3 s the first time in a process; before the first chunk, not inside it
    check_cancelled(reporter)
    args = (canonical, spec)
    stages = [
        NormalizeStage(spec.normalize, *args),
        LanguageStage(True, *args),
        QualityStage(spec.quality, *args),
        ExactDedupStage(spec.dedup_exact, *args),
        NearDedupStage(spec.dedup_near, *args),
        PiiStage(spec.pii, *args),
        DecontaminateStage(True, *args, index=index) if index is not None
        else DecontaminateStage(False, *args, "no evaluation sets selected" if spec.decontaminate
                                else "turned off in the spec"),
    ]
    assert tuple(s.name for s in stages) == STAGES

    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    read = written = 0
    last_report = 0.0
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(in_path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for docs, read in _chunks(src, canonical, in_path.name):
                check_cancelled(reporter)
                for stage in stages:
                    docs = stage.run(docs)
                if docs:
                    dst.write("\n".join(d.serialized() for d in docs) + "\n")
                written += len(docs)
                now = time.monotonic()
                if now - last_report >= PROGRESS_SECONDS:
                    last_report = now
                    reporter.progress(read / max(total, 1), _live_message(read, total, written, stages))
                    reporter.metric("records_kept", step=read, value=written)
            dst.flush()
            os.fsync(dst.fileno())
        check_cancelled(reporter)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        with disk_full_is_clear("the cleaned dataset version"):  # ENOSPC → a clear DiskFull
            raise

    seconds = time.monotonic() - started
    reports = [stage.report() for stage in stages]
    # One series, the funnel: documents left after stage 0, 1, 2, … (one chart axis, not seven).
    for step, stage in enumerate(reports):
        reporter.metric("kept_after_stage", step=step, value=stage["kept_docs"])
    for stage in reports:
        if stage["enabled"]:
            reasons = ", ".join(f"{k} {v}" for k, v in stage["drop_reasons"].items()) or "none dropped"
            reporter.log(f"{stage['name']}: kept {stage['kept_docs']}/{stage['input_docs']} ({reasons})")
        else:
            reporter.log(f"{stage['name']}: skipped ({stage['skipped']})")
    reporter.progress(1.0, f"cleaning: {read}/{total} records, {written} kept")
    return {
        "stages": reports,
        "input_docs": stages[0].input_docs,
        "output_docs": written,
        "output_chars": stages[-1].kept_chars,
        "seconds": round(seconds, 3),
        "docs_per_second": round(stages[0].input_docs / seconds, 1) if seconds > 0 else None,
    }


def _live_message(read: int, total: int, written: int, stages) -> str:
    """Per-stage progress for the job page: what each stage has dropped so far."""
    dropped = ", ".join(f"{stage.name} −{stage.dropped_docs}" for stage in stages if stage.dropped_docs)
    return f"cleaning: {read}/{total} records, {written} kept" + (f" ({dropped})" if dropped else "")


def _count_lines(path: Path) -> int:
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _chunks(src, fmt: str, filename: str):
    """(docs, physical lines read so far) for every CHUNK records of the canonical JSONL `src`."""
    docs: list[Doc] = []
    number = 0
    for number, raw in enumerate(src, 1):
        raw = raw.rstrip("\r\n")
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            text = record_text(record, fmt)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{filename} line {number}: not a canonical {fmt} record ({exc})") from exc
        meta = record.get("meta")
        line = meta.get("line", number) if isinstance(meta, dict) else number
        docs.append(Doc(line, record, raw, text))
        if len(docs) == CHUNK:
            yield docs, number
            docs = []
    if docs or number == 0:
        yield docs, number
