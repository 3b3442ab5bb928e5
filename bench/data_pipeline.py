"""How fast is the data pipeline? Run: .venv/bin/python bench/data_pipeline.py [--quick]

Documents: 20,000 (2,000 with --quick) made from the shared data beside the checkout:
TinyShakespeare lines taken two at a time and WikiText-2 (test + valid) paragraphs (headings
skipped), interleaved, written as a canonical "text" JSONL version.

1. Cleaning throughput: documents/s through the full cleaning pipeline,
   `workers.core.data.cleaning.run_cleaning(in_path, out_path, "text", CleaningSpec(), reporter)`,
   against a baseline in the same run: a plain pass that reads, parses, re-serializes and writes
   the same file (the floor any JSONL-to-JSONL step pays). The figure is cleaning time /
   baseline time (how many plain passes the cleaning costs). The cleaning time includes its
   one-time setup (a language-identification model, say), which weighs more with --quick.
2. Tokenize + pack cache: `tokenize_and_pack` of the same documents as "text" with the tiny
   byte-level BPE tokenizer of the tests (vocab 512), seq_len 512: cold (empty cache) vs a cache
   hit, printed as cold / hit.

The machine is shared and noisy: read the ratios, not the absolute times; the baseline is the
best of two runs. Nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.core.data.generators import write_jsonl  # noqa: E402 (no Django, no ML imports)
from workers.core.reporting import ConsoleReporter  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def make_documents(n: int) -> list[dict]:
    shakespeare_file = SHARED / "tinyshakespeare" / "input.txt"
    wiki_files = [SHARED / "wikitext2" / "test.txt", SHARED / "wikitext2" / "valid.txt"]
    if not shakespeare_file.exists() or not all(p.exists() for p in wiki_files):
        sys.exit(f"the shared data is missing: expected {shakespeare_file} and {wiki_files[0].parent}")
    lines = [line.strip() for line in shakespeare_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    shakespeare = [" ".join(lines[i:i + 2]) for i in range(0, len(lines) - 1, 2)]
    wiki = [line.strip() for path in wiki_files for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("=")]
    docs: list[str] = []
    ratio = len(shakespeare) / max(1, len(wiki))  # interleave in proportion
    w = s = 0
    while len(docs) < n and (w < len(wiki) or s < len(shakespeare)):
        if w < len(wiki) and (s >= len(shakespeare) or s >= ratio * (w + 1)):
            docs.append(wiki[w])
            w += 1
        else:
            docs.append(shakespeare[s])
            s += 1
    if len(docs) < n:
        print(f"note: only {len(docs)} distinct documents available (asked for {n})")
    return [{"text": text} for text in docs]


def baseline_pass(in_path: Path, out_path: Path) -> float:
    start = time.perf_counter()
    with open(in_path, encoding="utf-8") as src, open(out_path, "w", encoding="utf-8") as dst:
        for line in src:
            record = json.loads(line)
            dst.write(json.dumps(record, ensure_ascii=False) + "\n")
    return time.perf_counter() - start


def bench_cleaning(version: Path, work: Path, n_docs: int) -> None:
    print("\n1. cleaning throughput")
    base = min(baseline_pass(version, work / "baseline.jsonl") for _ in range(2))
    print(f"   baseline (read + parse + write):  {base:8.3f} s  {n_docs / base:12,.0f} docs/s")
    try:
        from workers.core.data.cleaning import CleaningSpec, run_cleaning
    except ImportError as exc:
        print(f"   cleaning: NOT MEASURED - workers.core.data.cleaning.run_cleaning/CleaningSpec is not "
              f"importable yet ({exc}).")
        return
    reporter = ConsoleReporter(stream=io.StringIO())
    out = work / "cleaned.jsonl"
    start = time.perf_counter()
    try:
        result = run_cleaning(version, out, "text", CleaningSpec(), reporter)
    except Exception as exc:  # report, don't hide: the other half of the bench still runs
        print(f"   cleaning: FAILED - {type(exc).__name__}: {exc}")
        return
    seconds = time.perf_counter() - start
    kept = sum(1 for _ in open(out, encoding="utf-8")) if out.exists() else None
    print(f"   full cleaning pipeline:           {seconds:8.3f} s  {n_docs / seconds:12,.0f} docs/s"
          + (f"  (kept {kept:,} of {n_docs:,})" if kept is not None else ""))
    print(f"   ratio cleaning / baseline: {seconds / base:.1f}x the time of a plain pass")
    stages = result.get("stages") if isinstance(result, dict) else None
    if isinstance(stages, list) and all(isinstance(st, dict) for st in stages):
        for st in stages:  # the per-stage report, compactly (keys as run_cleaning returns them)
            extra = f"  {st['seconds']:.2f} s" if isinstance(st.get("seconds"), (int, float)) else ""
            print(f"     {str(st.get('name')):12} kept {st.get('kept_docs', '?'):>7,} of {st.get('input_docs', '?'):>7,}"
                  f"{extra}  {json.dumps(st.get('drop_reasons', {}), default=str)[:120]}")
    elif isinstance(result, dict):
        print("   result: " + json.dumps(result, default=str)[:600])
    elif result is not None:
        print(f"   result: {str(result)[:600]}")


def bench_tokenize(version: Path, work: Path, seq_len: int) -> None:
    print(f"\n2. tokenize + pack (text, tiny BPE tokenizer, seq_len {seq_len})")
    from tests.fixtures.tiny_models import train_tokenizer
    from workers.core.data.packing import tokenize_and_pack

    tokenizer_dir = train_tokenizer(work / "tokenizer")
    cache = work / "cache"
    start = time.perf_counter()
    from transformers import AutoTokenizer  # noqa: F401  (imports torch; paid once per worker process)
    print(f"   (importing transformers' AutoTokenizer, excluded below: {time.perf_counter() - start:.1f} s)")

    start = time.perf_counter()
    _, cold = tokenize_and_pack(version, "text", tokenizer_dir, seq_len=seq_len, chat_template=None, cache_dir=cache)
    cold_s = time.perf_counter() - start
    hits = []
    for _ in range(3):
        start = time.perf_counter()
        _, hit = tokenize_and_pack(version, "text", tokenizer_dir, seq_len=seq_len, chat_template=None, cache_dir=cache)
        hits.append(time.perf_counter() - start)
        assert hit["cache_hit"], hit
    hit_s = min(hits)
    print(f"   cold: {cold_s:8.3f} s  ({cold['samples']:,} samples, {cold['tokens']:,} tokens -> {cold['packs']:,} packs, "
          f"fill {cold['fill']:.1%}; {cold['tokens'] / cold_s:,.0f} tokens/s)")
    print(f"   hit:  {hit_s:8.4f} s  (best of 3; hashing the version and tokenizer files + reading the manifest)")
    print(f"   ratio cold / hit: {cold_s / hit_s:,.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 documents instead of 20,000")
    parser.add_argument("--docs", type=int, default=None, help="number of documents (overrides --quick)")
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    n = args.docs or (2_000 if args.quick else 20_000)

    work = Path(tempfile.mkdtemp(prefix="puyu-bench-data-"))
    try:
        docs = make_documents(n)
        version = work / "version.jsonl"
        write_jsonl(docs, version)
        size = version.stat().st_size
        print(f"{len(docs):,} documents, {size / 1e6:.1f} MB ({sum(len(d['text']) for d in docs) / len(docs):.0f} "
              f"chars/doc), in {work}")
        bench_cleaning(version, work, len(docs))
        bench_tokenize(version, work, args.seq_len)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
