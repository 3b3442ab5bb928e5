"""WanJuan-style cleaning of a normalized dataset version (canonical JSONL in, canonical JSONL
out): normalize -> language -> quality -> dedup_exact -> dedup_near -> pii -> decontaminate.

    from workers.core.data.cleaning import CleaningSpec, run_cleaning
    report = run_cleaning(in_path, out_path, "chat", CleaningSpec(languages="en,zh"), reporter,
                          eval_paths=[gsm8k_path], eval_canonicals=["qa"])

The report: {"stages": [{"name", "enabled", "input_docs", "kept_docs", "dropped_docs",
"input_chars", "kept_chars", "drop_reasons", "examples", "seconds", ...stage extras}],
"input_docs", "output_docs", "output_chars", "seconds", "docs_per_second"}.

* drop_reasons are keyed by rule: "empty" (normalize); "language:<code>"; too_short, too_long,
  hash_ratio, ellipsis_ratio, digit_ratio, duplicate_lines, top_2gram, few_stop_words
  (quality.RULES); exact_duplicate; near_duplicate; "eval:<set name>".
* examples: the first 5 drops of a stage, {"line", "reason" (a sentence with the measured
  value), "text" (first 300 characters)}; the pii stage lists its first 5 masked records.
* A skipped stage has "enabled": False and "skipped": why, and passes everything through.
* Stage extras: normalize "modified_docs"; language "languages" {code: n}, "keep"; dedup_near
  "threshold", "num_perm", "shingle", "bands", "rows", "index_bytes"; pii "pii" {email, phone,
  id_card, credit_card, ip}, "modified_docs"; decontaminate "ngram", "eval_sets" {name: {items,
  ngrams, items_shorter_than_n, dropped_docs}}.

numpy and langid are imported when a stage first runs, so importing this package is cheap;
langid's model loads once per process (~3 s). PII tokens: [EMAIL] [PHONE] [ID] [CARD] [IP].
"""
from .pipeline import STAGES, run_cleaning
from .spec import CleaningSpec

__all__ = ["CleaningSpec", "STAGES", "near_duplicate_pairs", "run_cleaning"]


def __getattr__(name):  # numpy-backed helpers load on first use
    if name == "near_duplicate_pairs":
        from .dedup import near_duplicate_pairs

        return near_duplicate_pairs
    raise AttributeError(name)
