"""Stages 4 and 5 of cleaning: exact and near deduplication (first occurrence kept)."""
import io
import json
import random

import numpy as np
import pytest

from workers.core.data.cleaning import CleaningSpec, near_duplicate_pairs, run_cleaning
from workers.core.data.cleaning.dedup import BandTable, MinHasher, bands, shingle_jaccard, shingles
from workers.core.reporting import ConsoleReporter

ONLY = dict(normalize=False, quality=False, dedup_exact=False, dedup_near=False, pii=False, decontaminate=False)


def _clean(tmp_path, texts, **spec):
    src = tmp_path / "in.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts, 1):
            f.write(json.dumps({"text": text, "meta": {"line": i}}, ensure_ascii=False) + "\n")
    report = run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(**{**ONLY, **spec}),
                          ConsoleReporter(stream=io.StringIO()))
    lines = [json.loads(line)["meta"]["line"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    return report, lines


def test_exact_duplicates_differing_only_in_case_and_whitespace_are_dropped_and_the_first_is_kept(tmp_path):
    texts = ["The same sentence appears twice here.", "Something else entirely, not a copy.",
             "the same  sentence appears\ntwice here.", "The same sentence appears twice here!"]
    report, kept = _clean(tmp_path, texts, dedup_exact=True)
    assert kept == [1, 2, 4]
    stage = report["stages"][3]
    assert stage["drop_reasons"] == {"exact_duplicate": 1}
    assert stage["examples"][0]["reason"] == "same text as line 1"


# --- near duplicates: a synthetic corpus with planted copies --------------------------------

def _corpus(seed=1234, n_base=1000, n_planted=200, words=100, edit_rate=0.05):
    """n_base distinct documents of `words` words drawn (Zipf-like) from a random vocabulary of
    5,000 words, plus n_planted near-copies of random base documents with edit_rate of the words
    edited (substituted, inserted or deleted), each placed somewhere after its original.
    Returns [(text, index of the original or None)] in corpus order, and the base texts."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)})
    weights = [1 / (i + 1) ** 0.8 for i in range(len(vocab))]
    bases = [rng.choices(vocab, weights, k=words) for _ in range(n_base)]
    placed = [(float(i), " ".join(b), None) for i, b in enumerate(bases)]
    for _ in range(n_planted):
        src = rng.randrange(n_base)
        w = list(bases[src])
        for _ in range(max(1, round(edit_rate * len(w)))):
            op, i = rng.choice("sid"), rng.randrange(len(w))
            if op == "s":
                w[i] = rng.choice(vocab)
            elif op == "i":
                w.insert(i, rng.choice(vocab))
            else:
                del w[i]
        placed.append((src + rng.uniform(0.001, n_base - src), " ".join(w), src))
    placed.sort(key=lambda item: item[0])
    return [(text, src) for _, text, src in placed], [" ".join(b) for b in bases]


def _measure(docs, dropped):
    planted = [i for i, (_, src) in enumerate(docs) if src is not None]
    distinct = [i for i, (_, src) in enumerate(docs) if src is None]
    recall = sum(i in dropped for i in planted) / len(planted)
    false_positive = sum(i in dropped for i in distinct) / len(distinct)
    return recall, false_positive


def test_planted_near_duplicates_are_found_with_high_recall_and_few_false_positives(tmp_path, capsys):
    docs, bases = _corpus()
    jaccards = [shingle_jaccard(text, bases[src]) for text, src in docs if src is not None]
    report, kept_lines = _clean(tmp_path, [t for t, _ in docs], dedup_near=True)
    dropped = {i for i in range(len(docs))} - {line - 1 for line in kept_lines}
    recall, false_positive = _measure(docs, dropped)
    stage = report["stages"][4]
    with capsys.disabled():
        print(f"\nnear-dup (MinHash of 5-column character shingles, {stage['num_perm']} perms, "
              f"{stage['bands']}x{stage['rows']} bands, threshold {stage['threshold']}): "
              f"planted 200 with 5% word edits, exact Jaccard "
              f"{min(jaccards):.2f}-{max(jaccards):.2f} (mean {np.mean(jaccards):.2f}); "
              f"recall {recall:.3f}, false positives {false_positive:.3%}")
    assert recall >= 0.95
    assert false_positive <= 0.01
    assert stage["drop_reasons"] == {"near_duplicate": len(dropped)}
    assert stage["examples"][0]["reason"].startswith("near-duplicate of line ")


def test_rewrites_with_a_quarter_of_the_words_edited_are_not_near_duplicates():
    docs, bases = _corpus(seed=99, n_base=300, n_planted=100, edit_rate=0.25)
    jaccards = [shingle_jaccard(text, bases[src]) for text, src in docs if src is not None]
    assert max(jaccards) < 0.7
    assert near_duplicate_pairs([t for t, _ in docs]) == []


def test_near_duplicates_in_chinese_are_found_with_three_character_shingles():
    rng = random.Random(5)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 2500)]
    bases = ["".join(rng.choices(chars, k=200)) for _ in range(300)]
    copies = []
    for b in bases[:60]:
        s = list(b)
        for _ in range(4):  # 2% of the characters substituted: 3-gram Jaccard ~0.89
            s[rng.randrange(len(s))] = rng.choice(chars)
        copies.append("".join(s))
    pairs = near_duplicate_pairs(bases + copies)
    found = sorted((i, j) for i, j, _ in pairs)
    assert all(j == 300 + i for i, j in found)  # no distinct text dropped
    assert len(found) >= 57  # recall >= 0.95


def test_a_shingle_is_five_latin_or_three_chinese_characters_wide():
    assert shingles("abcdefg") == ["abcde", "bcdef", "cdefg"]
    assert shingles("中文字符串") == ["中文字", "文字符", "字符串"]
    assert shingles("a中b文c") == ["a中b文", "中b文"]
    assert shingles("ab") == ["ab"] and shingles("") == [""]
    texts = ["abcdefg", "中文字符串", "a中b文c", "ab", "", "mixed 中文 text 한국어 かな"]
    _, counts = MinHasher(16).shingle_hashes(texts)
    assert counts.tolist() == [len(shingles(t)) for t in texts]


def test_near_duplicate_pairs_estimate_the_jaccard_of_what_they_report():
    texts = ["the quick brown fox jumps over the lazy dog near the river bank today",
             "the quick brown fox jumps over the lazy dog near the river bank tonight",
             "completely unrelated words about cooking pasta with tomatoes and basil"]
    pairs = near_duplicate_pairs(texts, threshold=0.7)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert pairs[0][2] == pytest.approx(shingle_jaccard(texts[0], texts[1]), abs=0.12)


def test_the_permutations_are_datasketchs_own():
    from datasketch import MinHash

    for num_perm, seed in ((128, 1), (64, 7)):
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        hasher = MinHasher(num_perm=num_perm, seed=seed)
        assert hasher.a.tolist() == a.tolist() and hasher.b.tolist() == b.tolist()


def test_signatures_are_datasketch_minhashes_whose_estimate_tracks_the_exact_jaccard():
    hasher = MinHasher(num_perm=256)
    rng = random.Random(2)
    base = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"]) + str(rng.randint(0, 99))
                    for _ in range(80))
    variants = [base[: len(base) - k] + "x" * k for k in (0, 40, 120, 250)]
    sigs = hasher.signatures([base, *variants])
    for text, sig in zip(variants, sigs[1:]):
        estimate = hasher.minhash(sigs[0]).jaccard(hasher.minhash(sig))
        assert estimate == pytest.approx(shingle_jaccard(base, text), abs=0.1)
    assert hasher.signatures(["abc", ""]).shape == (2, 256)  # shorter than a shingle: one shingle


def test_bands_give_a_pair_at_the_threshold_at_least_a_95_percent_chance_to_be_a_candidate():
    assert bands(0.8, 128) == (18, 7)
    for threshold in (0.5, 0.7, 0.8, 0.9, 1.0):
        b, r = bands(threshold, 128)
        assert b * r <= 128 and 1 - (1 - threshold ** r) ** b >= 0.95


def test_the_band_table_keeps_the_first_value_for_a_key_and_grows_without_losing_any():
    table = BandTable(capacity=4)
    keys = (np.arange(1, 5001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(32)).astype(np.uint32)
    assert len(np.unique(keys)) == 5000 and keys.min() > 0
    table.insert(keys[:3000], np.arange(3000))
    table.insert(np.concatenate([keys[2000:], keys[2000:2001]]), np.arange(10_000, 13_001))
    assert len(table) == 5000
    found = table.lookup(np.concatenate([keys, np.array([7, 8], dtype=np.uint32)]))
    assert found[:3000].tolist() == list(range(3000))
    assert found[3000:5000].tolist() == list(range(11_000, 13_000))
    assert found[5000:].tolist() == [-1, -1]
